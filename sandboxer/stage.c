/* sandboxer-stage: PID 1 inside the new namespaces, exec'd by the plan's outer `unshare`.
 *
 * It does what util-linux has no verb for, between the outer unshare and the payload: the
 * plan's mounts (or another root filesystem and pivot_root/chroot into it), tap0, the
 * sandbox's resolv.conf and hosts, lo up, the hostname. Then it reports ready, waits for the
 * supervisor's go, forks the payload into a nested user namespace (which locks every mount made
 * here), hardens it (no_new_privs, a seccomp filter against TIOCSTI, a fresh session keyring,
 * only fds 0-2, its own session or foreground job) and execs it; as init it forwards signals
 * and reaps orphans.
 *
 * It is C rather than Python because it runs on every sandbox start: a second interpreter
 * costs ~9 ms here (start-up plus ctypes), this binary well under one.
 *
 * File descriptors from the supervisor (their numbers, the config's records and the messages
 * are defined once, in sandboxer/wire.py, which generates wire.h):
 *   3  the config, read to EOF: tagged records, see wire.py and read_config()
 *   4  status pipe to the supervisor: "T" the tap exists (the network helper may start),
 *      "R" ready, "E<msg>\n" setup failed, "N<code> <msg>\n"
 *      the payload could not be executed, "S<signal> <pid>\n" the payload (pid as seen here)
 *      was stopped on the terminal, "X<wait status>\n" the payload finished
 *   5  control pipe from the supervisor: "G" go; EOF means the supervisor is gone
 *   6  the caller's stderr (fd 2 is a pipe to the supervisor until the stage starts, so that
 *      unshare's own complaints become one clean error line)
 *
 * `sandboxer-stage --print-config` reads a config on stdin and prints what it understood, as
 * JSON, without making any namespace: the encoder and this decoder are tested against each
 * other, and what the stage receives for each shipped profile is a golden file.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/if_tun.h>
#include <linux/nsfs.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "wire.h"

#define GO_TIMEOUT_MS 60000
#define CONFIG_MAX (16 << 20)

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442 /* the same on every architecture (after the unified table) */
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_restrict_self 446
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#define SBX_OPEN_TREE_CLONE 1
#define SBX_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define SBX_MOUNT_ATTR_RDONLY 0x1
/* Landlock (linux/landlock.h; Debian 12's headers predate ABI 6) */
#define LL_CREATE_RULESET_VERSION 1U
#define LL_ACCESS_FS_MAKE_BLOCK (1ULL << 11)
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define LL_SCOPE_SIGNAL (1ULL << 1)
#define LL_SCOPES_ABI 6
/* the bits of the config's landlock field: scopes that must be applied or the run fails */
enum { NEED_ABSTRACT = 1, NEED_SIGNAL = 2 };
#define KEYCTL_JOIN_SESSION_KEYRING 1
#define CAP_SYS_CHROOT 18
#define TIOCLINUX_REQ 0x541C
/* sent to the stage when the supervisor dies and there is no PID namespace to do the killing */
#define ORPHANED SIGPWR

struct sbx_mount_attr {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};

struct ll_ruleset_attr {
	uint64_t handled_access_fs, handled_access_net, scoped;
};

/* For each ABI the kernel accepts on this machine: its audit arch, ioctl's syscall number
 * there, and the x32 bit to refuse (0 if none). */
struct abi {
	uint32_t arch, ioctl_nr, x32;
};
static const struct abi ABIS[] = {
#if defined(__x86_64__)
	{AUDIT_ARCH_X86_64, 16, 0x40000000}, {AUDIT_ARCH_I386, 54, 0},
#elif defined(__aarch64__)
	{AUDIT_ARCH_AARCH64, 29, 0}, {AUDIT_ARCH_ARM, 54, 0},
#elif defined(__riscv) && __riscv_xlen == 64
	{AUDIT_ARCH_RISCV64, 29, 0},
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	{AUDIT_ARCH_PPC64LE, 54, 0},
#elif defined(__s390x__)
	{AUDIT_ARCH_S390X, 54, 0},
#endif
	{0, 0, 0},
};

/* where the stage briefly mounts a tmpfs to write files in (the first that exists) */
static const char *const SCRATCH_DIRS[] = {"/tmp", "/run", "/mnt", "/var/tmp", NULL};

/* ---- the config --------------------------------------------------------------------------- */
struct mount_op {
	enum mount_kind kind;
	const char *source, *target, *mode;
	long size;
	int readonly, create;
	long owner_uid, owner_gid; /* a tmpfs's owner in the outer namespace; -1: ours */
	char *resolved; /* a mask: what its symlinks name on the host, before any mount */
	int tree; /* a bind: its source, cloned (open_tree) before anything covered it; else -1 */
};

struct config {
	int pid, tty, lo, landlock, apidir;
	const char *uid_map, *gid_map; /* the payload's user namespace, as /proc takes them */
	int maps_by_stage; /* several ids: the stage writes the maps; else the payload, one id */
	long runas_uid, runas_gid; /* -1: keep the ids the map gives */
	int announce; /* report the payload's pid once it has exec'd (a named sandbox) */
	long join[4]; /* --join: the stage's pid and start time, the payload's */
	int join_chroot; /* --join: the sandbox has another root (the payload's root is entered) */
	struct {
		int resource;
		long value;
	} limits[8];
	size_t nlimits;
	const char *keep; /* NULL: the overlay's upper layer lives on a tmpfs */
	long ppid;
	const char *hostname, *cwd, *resolv, *hosts; /* resolv == NULL: no network files */
	const char *tap; /* NULL: no tap device to make */
	struct mount_op *mounts;
	size_t nmounts;
	const char *rootfs_dir, *rootfs_switch, *rootfs_writes; /* rootfs_dir == NULL: no rootfs */
	struct mount_op *rootfs_mounts;
	size_t nrootfs_mounts;
	char **argv, **envp;
};

static struct config cfg;
static volatile pid_t payload_pid;
static int printing; /* --print-config */
static int joining; /* --join: sandboxer exec, into a running sandbox */
static int execd_fd = -1; /* the payload's end of the pipe that closes when it execs */

/* ---- reporting ---------------------------------------------------------------------------- */
static void status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void status(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (joining) {
		/* sandboxer exec: no supervisor listens; what went wrong goes to its stderr */
		const char *text = buf + 1;
		if (buf[0] == STATUS_EXEC)
			text = strchr(buf, ' ') ? strchr(buf, ' ') + 1 : text;
		if (buf[0] == STATUS_EXEC || buf[0] == STATUS_ERROR)
			dprintf(2, "sandboxer: error: %s%s", buf[0] == STATUS_ERROR ? "cannot join the sandbox: " : "",
				text);
		return;
	}
	size_t len = (size_t)n;
	if (len >= sizeof buf) {
		len = sizeof buf - 1;
		buf[len - 1] = '\n'; /* truncated: keep the line ending the supervisor waits for */
	}
	ssize_t ignored = write(STATUS_FD, buf, len);
	(void)ignored;
}

/* Report a setup failure (one line) and exit 125: nothing of the payload has run. */
static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	char msg[3000], shown[3000];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	/* one line: control characters (a newline in a path) as escapes, as Python's repr shows them */
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)msg; *p && n + 5 < sizeof shown; p++) {
		if (*p == '\n' || *p == '\t' || *p == '\r') {
			shown[n++] = '\\';
			shown[n++] = *p == '\n' ? 'n' : *p == '\t' ? 't' : 'r';
		} else if (*p < 0x20 || *p == 0x7f) {
			n += (size_t)snprintf(shown + n, sizeof shown - n, "\\x%02x", *p);
		} else {
			shown[n++] = (char)*p;
		}
	}
	shown[n] = '\0';
	if (printing) {
		/* --print-config: no supervisor listens; the error goes to stderr */
		dprintf(2, "sandboxer-stage: error: %s\n", shown);
		_exit(125);
	}
	status("%c%s\n", STATUS_ERROR, shown);
	_exit(125);
}

#define CHECK(expr, ...)                                                       \
	do {                                                                       \
		if ((expr) < 0) {                                                      \
			int e_ = errno;                                                    \
			char what_[2048];                                                  \
			snprintf(what_, sizeof what_, __VA_ARGS__);                        \
			die("%s: %s", what_, strerror(e_));                               \
		}                                                                      \
	} while (0)

static char *xstrdup(const char *s)
{
	char *r = strdup(s);
	if (!r)
		die("out of memory");
	return r;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
	char *r;
	va_list ap;
	va_start(ap, f);
	int n = vasprintf(&r, f, ap);
	va_end(ap);
	if (n < 0)
		die("out of memory");
	return r;
}

/* ---- reading the config ------------------------------------------------------------------- */
static char *config_buf;
static size_t config_len, config_pos;

static const char *field(const char *what)
{
	if (config_pos >= config_len)
		die("the stage's config is truncated in %s (sandboxer bug)", what);
	char *start = config_buf + config_pos;
	char *end = memchr(start, '\0', config_len - config_pos);
	if (!end)
		die("the stage's config is truncated in %s (sandboxer bug)", what);
	config_pos = (size_t)(end - config_buf) + 1;
	return start;
}

static long number(const char *what)
{
	const char *s = field(what);
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end)
		die("the stage's config has a bad number '%s' in %s (sandboxer bug)", s, what);
	return v;
}

static int boolean(const char *what)
{
	long v = number(what);
	if (v != 0 && v != 1)
		die("the stage's config has %ld for the boolean %s (sandboxer bug)", v, what);
	return (int)v;
}

static enum mount_kind mount_kind(const char *what)
{
	const char *name = field(what);
	for (int k = 0; k < NMOUNT_KINDS; k++)
		if (!strcmp(name, MOUNT_KIND_NAMES[k]))
			return (enum mount_kind)k;
	die("the stage's config has an unknown mount kind '%s' in %s (sandboxer bug: reinstall sandboxer)",
	    name, what);
}

static const char *one_of(const char *const *allowed, const char *what)
{
	const char *value = field(what);
	for (const char *const *a = allowed; *a; a++)
		if (!strcmp(value, *a))
			return value;
	die("the stage's config has an unknown %s '%s' (sandboxer bug: reinstall sandboxer)", what, value);
}

/* Append to a growable array of n items of size bytes; returns the new item, zeroed. */
static void *append(void *array, size_t *n, size_t size)
{
	char *grown = realloc(array, (*n + 2) * size);
	if (!grown)
		die("out of memory");
	memset(grown + *n * size, 0, 2 * size); /* the new item, and a terminating zeroed one */
	(*n)++;
	return grown;
}

static void mount_record(struct mount_op **ops, size_t *n, const char *what)
{
	*ops = append(*ops, n, sizeof **ops);
	struct mount_op *op = &(*ops)[*n - 1];
	op->kind = mount_kind(what);
	op->source = field(what);
	op->target = field(what);
	op->readonly = boolean(what);
	op->size = number(what);
	op->mode = field(what);
	op->create = boolean(what);
	op->owner_uid = number(what);
	op->owner_gid = number(what);
	op->tree = -1;
}

/* A tmpfs's options. uid= and gid= are ids of the mounter's user namespace (the outer one):
 * a HOME that belongs to the id the payload switches to. */
static char *tmpfs_options(const struct mount_op *op)
{
	if (op->owner_uid >= 0)
		return fmt("size=%ld,mode=%s,uid=%ld,gid=%ld", op->size, op->mode, op->owner_uid, op->owner_gid);
	return fmt("size=%ld,mode=%s", op->size, op->mode);
}

/* Read the config (wire.py: magic, version, tagged records, end) from fd into cfg. Anything
 * the stage does not know, or a record with the wrong number of values, is an error. */
static void read_config(int fd)
{
	cfg.runas_uid = cfg.runas_gid = -1;
	size_t cap = 65536;
	config_buf = malloc(cap);
	for (;;) {
		if (!config_buf)
			die("out of memory");
		ssize_t n = read(fd, config_buf + config_len, cap - config_len);
		if (n < 0 && errno == EINTR)
			continue;
		CHECK(n, "cannot read the stage's config");
		if (n == 0)
			break;
		config_len += (size_t)n;
		if (config_len == cap) {
			if (cap >= CONFIG_MAX)
				die("the stage's config is too large");
			cap *= 2;
			config_buf = realloc(config_buf, cap);
		}
	}
	close(fd);
	if (strcmp(field("the magic"), WIRE_MAGIC) != 0)
		die("the stage's config is not for this stage (sandboxer bug: reinstall sandboxer)");
	long version = number("the version");
	if (version != WIRE_VERSION)
		die("the stage's config is version %ld, this stage reads version %d (reinstall sandboxer)",
		    version, WIRE_VERSION);
	size_t nargs = 0, nenv = 0;
	int seen[NTAGS] = {0};
	for (;;) {
		const char *name = field("a record's tag");
		int tag = -1;
		for (int t = 0; t < NTAGS; t++)
			if (!strcmp(name, WIRE_TAGS[t].name))
				tag = t;
		if (tag < 0)
			die("the stage's config has an unknown record '%s' (sandboxer bug: reinstall sandboxer)", name);
		const struct wire_tag_info *info = &WIRE_TAGS[tag];
		if (seen[tag] && !info->repeat)
			die("the stage's config repeats the record '%s' (sandboxer bug)", name);
		seen[tag]++;
		long count = number(name);
		if (count != (long)strlen(info->types))
			die("the stage's config has %ld values for '%s', expected %zu (sandboxer bug)", count, name,
			    strlen(info->types));
		switch ((enum wire_tag)tag) {
		case TAG_PID: cfg.pid = boolean(name); break;
		case TAG_PPID: cfg.ppid = number(name); break;
		case TAG_TTY: cfg.tty = boolean(name); break;
		case TAG_LANDLOCK:
			cfg.landlock = (int)number(name);
			if (cfg.landlock & ~(LANDLOCK_ABSTRACT_SOCKETS | LANDLOCK_SIGNALS))
				die("the stage's config has unknown Landlock bits %d (sandboxer bug)", cfg.landlock);
			break;
		case TAG_APIDIR: cfg.apidir = boolean(name); break;
		case TAG_HOSTNAME: cfg.hostname = field(name); break;
		case TAG_LO: cfg.lo = boolean(name); break;
		case TAG_TAP: cfg.tap = field(name); break;
		case TAG_NETFILES:
			cfg.resolv = field(name);
			cfg.hosts = field(name);
			break;
		case TAG_USERNS:
			cfg.uid_map = field(name);
			cfg.gid_map = field(name);
			cfg.maps_by_stage = boolean(name);
			break;
		case TAG_RUNAS:
			cfg.runas_uid = number(name);
			cfg.runas_gid = number(name);
			if (cfg.runas_uid < 0 || cfg.runas_gid < 0)
				die("the stage's config has negative ids to run as (sandboxer bug)");
			break;
		case TAG_CWD: cfg.cwd = field(name); break;
		case TAG_LIMIT: {
			const char *what = field(name);
			long value = number(name);
			int found = -1;
			for (int r = 0; RLIMITS[r].name; r++)
				if (!strcmp(what, RLIMITS[r].name))
					found = r;
			if (found < 0 || value < 0 || cfg.nlimits >= sizeof cfg.limits / sizeof cfg.limits[0])
				die("the stage's config has an unknown or bad limit '%s' (sandboxer bug)", what);
			cfg.limits[cfg.nlimits].resource = RLIMITS[found].resource;
			cfg.limits[cfg.nlimits++].value = value;
			break;
		}
		case TAG_KEEP: cfg.keep = field(name); break;
		case TAG_ANNOUNCE: cfg.announce = boolean(name); break;
		case TAG_JOIN:
			for (int k = 0; k < 4; k++)
				cfg.join[k] = number(name);
			cfg.join_chroot = boolean(name);
			break;
		case TAG_MOUNT: mount_record(&cfg.mounts, &cfg.nmounts, name); break;
		case TAG_ROOTFS:
			cfg.rootfs_dir = field(name);
			cfg.rootfs_switch = one_of(ROOT_SWITCHES, "root switch");
			cfg.rootfs_writes = one_of(ROOT_WRITES, "rootfs writes");
			break;
		case TAG_ROOTMOUNT: mount_record(&cfg.rootfs_mounts, &cfg.nrootfs_mounts, name); break;
		case TAG_ARG:
			cfg.argv = append(cfg.argv, &nargs, sizeof *cfg.argv);
			cfg.argv[nargs - 1] = (char *)field(name);
			break;
		case TAG_ENV:
			cfg.envp = append(cfg.envp, &nenv, sizeof *cfg.envp);
			cfg.envp[nenv - 1] = (char *)field(name);
			break;
		case TAG_END:
			if (config_pos != config_len)
				die("the stage's config goes on after its end (sandboxer bug)");
			for (int t = 0; t < NTAGS; t++)
				if (WIRE_TAGS[t].required && !seen[t] && !(seen[TAG_JOIN] && t != TAG_ARG && t != TAG_CWD))
					die("the stage's config has no '%s' record (sandboxer bug)", WIRE_TAGS[t].name);
			if (cfg.nrootfs_mounts && !cfg.rootfs_dir)
				die("the stage's config has rootfs mounts but no rootfs (sandboxer bug)");
			if (!cfg.envp && !(cfg.envp = calloc(1, sizeof *cfg.envp)))
				die("out of memory");
			return;
		case NTAGS:
			break;
		}
	}
}

/* ---- --print-config ----------------------------------------------------------------------- */
static void json_string(const char *s)
{
	if (!s) {
		fputs("null", stdout);
		return;
	}
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			printf("\\u%04x", *p);
		else
			putchar(*p); /* bytes >= 0x80 as they are: UTF-8 stays UTF-8 */
	}
	putchar('"');
}

static void json_mounts(const struct mount_op *ops, size_t n)
{
	putchar('[');
	for (size_t i = 0; i < n; i++) {
		const struct mount_op *op = &ops[i];
		printf("%s{\"kind\": ", i ? ", " : "");
		json_string(MOUNT_KIND_NAMES[op->kind]);
		fputs(", \"source\": ", stdout);
		json_string(op->source);
		fputs(", \"target\": ", stdout);
		json_string(op->target);
		printf(", \"readonly\": %s, \"size\": %ld, \"mode\": ", op->readonly ? "true" : "false", op->size);
		json_string(op->mode);
		printf(", \"create\": %s, \"owner\": [%ld, %ld]}", op->create ? "true" : "false", op->owner_uid,
		       op->owner_gid);
	}
	putchar(']');
}

static void json_strings(char **v)
{
	putchar('[');
	for (size_t i = 0; v && v[i]; i++) {
		if (i)
			fputs(", ", stdout);
		json_string(v[i]);
	}
	putchar(']');
}

/* What the stage understood of a config, as one JSON object. */
static void print_config(void)
{
	printf("{\"version\": %d, \"pid\": %s, \"ppid\": %ld, \"tty\": %s, \"landlock\": %d, "
	       "\"apidir\": %s, \"hostname\": ", WIRE_VERSION, cfg.pid ? "true" : "false", cfg.ppid,
	       cfg.tty ? "true" : "false", cfg.landlock, cfg.apidir ? "true" : "false");
	json_string(cfg.hostname);
	printf(", \"lo\": %s, \"tap\": ", cfg.lo ? "true" : "false");
	json_string(cfg.tap);
	fputs(", \"netfiles\": ", stdout);
	if (cfg.resolv) {
		fputs("[", stdout);
		json_string(cfg.resolv);
		fputs(", ", stdout);
		json_string(cfg.hosts);
		fputs("]", stdout);
	} else {
		fputs("null", stdout);
	}
	fputs(", \"userns\": {\"uid_map\": ", stdout);
	json_string(cfg.uid_map);
	fputs(", \"gid_map\": ", stdout);
	json_string(cfg.gid_map);
	printf(", \"by_stage\": %s}, \"runas\": ", cfg.maps_by_stage ? "true" : "false");
	if (cfg.runas_uid >= 0)
		printf("[%ld, %ld]", cfg.runas_uid, cfg.runas_gid);
	else
		fputs("null", stdout);
	fputs(", \"limits\": [", stdout);
	for (size_t i = 0; i < cfg.nlimits; i++) {
		const char *name = "?";
		for (int r = 0; RLIMITS[r].name; r++)
			if (RLIMITS[r].resource == cfg.limits[i].resource)
				name = RLIMITS[r].name;
		printf("%s[\"%s\", %ld]", i ? ", " : "", name, cfg.limits[i].value);
	}
	fputs("], \"keep\": ", stdout);
	json_string(cfg.keep);
	fputs(", \"cwd\": ", stdout);
	json_string(cfg.cwd);
	fputs(", \"mounts\": ", stdout);
	json_mounts(cfg.mounts, cfg.nmounts);
	fputs(", \"rootfs\": ", stdout);
	if (cfg.rootfs_dir) {
		fputs("{\"path\": ", stdout);
		json_string(cfg.rootfs_dir);
		fputs(", \"switch\": ", stdout);
		json_string(cfg.rootfs_switch);
		fputs(", \"writes\": ", stdout);
		json_string(cfg.rootfs_writes);
		fputs(", \"mounts\": ", stdout);
		json_mounts(cfg.rootfs_mounts, cfg.nrootfs_mounts);
		putchar('}');
	} else {
		fputs("null", stdout);
	}
	fputs(", \"argv\": ", stdout);
	json_strings(cfg.argv);
	fputs(", \"env\": ", stdout);
	json_strings(cfg.envp);
	puts("}");
}

/* ---- small file helpers ------------------------------------------------------------------- */
static int is_dir(const char *path) /* follows symlinks, like os.path.isdir */
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_link(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0 && S_ISLNK(st.st_mode);
}

static int lexists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static char *dirname_of(const char *path)
{
	char *d = xstrdup(path);
	char *slash = strrchr(d, '/');
	if (!slash)
		return xstrdup(".");
	if (slash == d)
		slash[1] = '\0';
	else
		*slash = '\0';
	return d;
}

static void mkdir_p(const char *path)
{
	char *p = xstrdup(path);
	for (char *s = p + 1;; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, 0777) < 0 && errno != EEXIST)
				CHECK(-1, "cannot create %s", p);
			if (c == '\0')
				break;
			*s = c;
		}
	}
	if (!is_dir(path))
		die("cannot create %s: not a directory", path);
	free(p);
}

static void create_file(const char *path, int dirfd, const char *what)
{
	int fd = openat(dirfd, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	CHECK(fd, "%s", what);
	close(fd);
}

/* The path with every symlink resolved, as far as the path exists (os.path.realpath without
 * strict): a dangling symlink resolves to the path it names. */
static char *resolve(const char *path)
{
	char out[PATH_MAX + 1] = "";
	char *rest = fmt("%s", path);
	int links = 0;
	char *p = rest;
	while (*p) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char name[NAME_MAX + 1];
		if (len > NAME_MAX)
			die("path too long: %s", path);
		memcpy(name, p, len);
		name[len] = '\0';
		p += len;
		if (!strcmp(name, "."))
			continue;
		if (!strcmp(name, "..")) {
			char *slash = strrchr(out, '/');
			if (slash)
				*slash = '\0';
			continue;
		}
		char candidate[PATH_MAX + 1];
		if ((size_t)snprintf(candidate, sizeof candidate, "%s/%s", out, name) >= sizeof candidate)
			die("path too long: %s", path);
		struct stat st;
		if (lstat(candidate, &st) < 0 || !S_ISLNK(st.st_mode) || ++links > 40) {
			strcpy(out, candidate);
			continue;
		}
		char target[PATH_MAX + 1];
		ssize_t n = readlink(candidate, target, PATH_MAX);
		if (n < 0) {
			strcpy(out, candidate);
			continue;
		}
		target[n] = '\0';
		char *next = fmt("%s/%s", target, p);
		free(rest);
		rest = p = next;
		if (target[0] == '/')
			out[0] = '\0';
	}
	free(rest);
	return fmt("%s", out[0] ? out : "/");
}

/* ---- mounts ------------------------------------------------------------------------------- */
static void set_readonly(int dirfd, const char *path, unsigned int flags, const char *what)
{
	/* mount_setattr(2) changes only the flag we name: a MS_REMOUNT would have to repeat every
	 * flag the kernel locked on the source mount (nosuid, nodev...) or fail with EPERM. */
	struct sbx_mount_attr attr = {SBX_MOUNT_ATTR_RDONLY, 0, 0, 0};
	CHECK(syscall(SYS_mount_setattr, dirfd, path, flags, &attr, sizeof attr), "%s", what);
}

static void make_readonly(const char *target)
{
	char *what = fmt("cannot make %s read-only", target);
	set_readonly(AT_FDCWD, target, AT_RECURSIVE, what);
	free(what);
}

static void create_target(const char *target, int dir)
{
	char *parent = dirname_of(target);
	mkdir_p(parent);
	free(parent);
	if (dir)
		mkdir_p(target);
	else if (!lexists(target))
		create_file(target, AT_FDCWD, target);
}

static int source_is_dir(const char *source)
{
	struct stat st;
	if (stat(source, &st) == 0)
		return S_ISDIR(st.st_mode);
	if (errno == ENOENT || errno == ENOTDIR)
		die("bind source %s does not exist", source);
	die("bind source %s: %s", source, strerror(errno));
}

/* Mount a bind's source, cloned earlier (clone_sources), on its target. */
static void move_tree(const struct mount_op *op)
{
	struct stat st;
	CHECK(fstat(op->tree, &st), "bind source %s", op->source);
	if (op->create)
		create_target(op->target, S_ISDIR(st.st_mode));
	else if (!lexists(op->target))
		die("mount target %s does not exist; create it, or mount it under a tmpfs", op->target);
	CHECK(syscall(SYS_move_mount, op->tree, "", AT_FDCWD, op->target, SBX_MOVE_MOUNT_F_EMPTY_PATH),
	      "cannot bind %s on %s", op->source, op->target);
	close(op->tree);
	if (op->readonly)
		make_readonly(op->target);
}

static const char *scratch_dir(void)
{
	for (const char *const *d = SCRATCH_DIRS; *d; d++)
		if (is_dir(*d) && !is_link(*d))
			return *d;
	return NULL;
}

static int keep_tree = -1; /* --keep's directory, cloned before the host's tree was made read-only */
static int upper_fd = -1, lower_fd = -1; /* the work tree overlay's layers, for its changes */

/* Clone the source of every bind after ops[from] (open_tree: a detached copy of the mount tree
 * at the source, submounts included), while the host's tree is still as the user sees it:
 * later mounts (a tmpfs HOME over ~/project, a private /tmp) cover paths, not these copies.
 * The copies keep their own flags: a writable source stays writable after the whole tree is
 * made read-only, and mounts made by the guards before (hides, read-only binds of sandboxer's
 * install) come along, so a bind of an ancestor cannot expose what they cover. */
static void clone_sources(struct mount_op *ops, size_t n, size_t from)
{
	for (size_t i = from; i < n; i++) {
		if (ops[i].kind == MK_OVERLAY && cfg.keep && keep_tree < 0) {
			keep_tree = (int)syscall(SYS_open_tree, AT_FDCWD, cfg.keep, SBX_OPEN_TREE_CLONE | O_CLOEXEC);
			CHECK(keep_tree, "cannot take --keep's directory %s", cfg.keep);
		}
		if (ops[i].kind != MK_BIND && ops[i].kind != MK_OVERLAY)
			continue;
		source_is_dir(ops[i].source); /* the usual error for a missing source */
		ops[i].tree = (int)syscall(SYS_open_tree, AT_FDCWD, ops[i].source,
					   SBX_OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC);
		CHECK(ops[i].tree, "cannot take the bind source %s", ops[i].source);
	}
}

/* Everything mounted so far read-only, recursively, but /proc: the stage writes the payload's
 * uid_map there, and proc's files check their own permissions. Mounts the host has read-only
 * were copied locked read-only into this namespace; the ones made read-only here cannot be made
 * writable again by the payload, whose user namespace owns no mount namespace. */
static void readonly_host(void)
{
	set_readonly(AT_FDCWD, "/", AT_RECURSIVE, "cannot make the host's tree read-only");
	struct sbx_mount_attr attr = {0, SBX_MOUNT_ATTR_RDONLY, 0, 0};
	CHECK(syscall(SYS_mount_setattr, AT_FDCWD, "/proc", 0, &attr, sizeof attr),
	      "cannot keep /proc writable");
}

/* Hide what is at path, where something is: a directory behind an empty read-only tmpfs,
 * anything else (a file, a socket, a device) behind /dev/null. mount(2) follows symlinks: what
 * a symlink names is hidden. */
/* stat(2) of a path that may be missing: 0 if it is (nothing to do there), 1 if it is there;
 * any other failure ends the setup (a path we cannot see could not be hidden either). */
static int present(const char *path, struct stat *st, const char *doing)
{
	if (stat(path, st) == 0)
		return 1;
	if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
		return 0;
	die("cannot tell whether %s exists, so cannot %s it: %s", path, doing, strerror(errno));
}

static void mask_path(const char *path, const struct mount_op *op)
{
	struct stat st;
	if (!present(path, &st, "hide"))
		return;
	if (S_ISDIR(st.st_mode)) {
		char *data = fmt("size=%ld,mode=%s", op->size, op->mode);
		CHECK(mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, data),
		      "cannot hide %s", path);
		free(data);
		return;
	}
	CHECK(mount("/dev/null", path, NULL, MS_BIND, NULL), "cannot hide %s", path);
	make_readonly(path);
}

/* A path of the work tree read-only, where it exists: what would run on the host later (git's
 * hooks and config, direnv's .envrc) stays as it was. */
static void seal_path(const char *path)
{
	struct stat st;
	if (!present(path, &st, "seal"))
		return;
	CHECK(mount(path, path, NULL, MS_BIND | MS_REC, NULL), "cannot bind %s onto itself", path);
	make_readonly(path);
}

/* The work tree as an overlay: the tree (cloned before anything covered it) below, and above a
 * tmpfs, or --keep's directory, that takes every write. The upper layer is prepared on a scratch
 * directory that is detached again: the overlay keeps its own reference, and the stage an fd to
 * list the changes after the payload. */
static void overlay_tree(struct mount_op *op)
{
	move_tree(op);
	lower_fd = open(op->target, O_PATH | O_DIRECTORY | O_CLOEXEC);
	CHECK(lower_fd, "the work tree %s", op->target);
	const char *scratch = scratch_dir();
	if (!scratch)
		die("no scratch directory (/tmp, /run, /mnt) for the overlay's upper layer");
	if (keep_tree >= 0) {
		CHECK(syscall(SYS_move_mount, keep_tree, "", AT_FDCWD, scratch, SBX_MOVE_MOUNT_F_EMPTY_PATH),
		      "cannot mount --keep's directory %s", cfg.keep);
		close(keep_tree);
	} else {
		char *data = fmt("size=%ld,mode=0700", op->size);
		CHECK(mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, data), "cannot mount a tmpfs on %s",
		      scratch);
		free(data);
	}
	int top = open(scratch, O_PATH | O_DIRECTORY | O_CLOEXEC);
	CHECK(top, "cannot open %s", scratch);
	char *upper = fmt("/proc/self/fd/%d/upper", top), *work = fmt("/proc/self/fd/%d/work", top);
	CHECK(mkdir(upper, 0755), "cannot create the overlay's upper layer%s%s", cfg.keep ? " in " : "",
	      cfg.keep ? cfg.keep : "");
	CHECK(mkdir(work, 0700), "cannot create the overlay's work directory");
	char *target = fmt("/proc/self/fd/%d", lower_fd);
	char *data = fmt("lowerdir=%s,upperdir=%s,workdir=%s,userxattr", target, upper, work);
	if (mount("overlay", target, "overlay", 0, data) < 0)
		die("cannot mount an overlay on the work tree %s: %s%s", op->target, strerror(errno),
		    errno == EINVAL && cfg.keep ? " (does --keep's filesystem support user.* xattrs?)" : "");
	upper_fd = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK(upper_fd, "cannot open the overlay's upper layer");
	/* the layers are the overlay's now: the scratch mount goes from every path */
	CHECK(umount2(scratch, MNT_DETACH), "cannot detach %s", scratch);
	close(top);
	free(upper), free(work), free(target), free(data);
}

static void apply_mount(struct mount_op *ops, size_t n, size_t i)
{
	struct mount_op *op = &ops[i];
	if (op->kind == MK_BIND && op->tree >= 0) {
		move_tree(op);
		return;
	}
	if (op->kind == MK_OVERLAY) {
		overlay_tree(op);
		return;
	}
	if (op->kind == MK_MASK) {
		mask_path(op->target, op);
		if (op->resolved && strcmp(op->resolved, op->target))
			mask_path(op->resolved, op);
		return;
	}
	if (op->kind == MK_SEAL) {
		seal_path(op->target);
		return;
	}
	if (op->kind == MK_PIN || op->kind == MK_PROTECT || op->kind == MK_BIND) {
		const char *src = op->kind == MK_BIND ? op->source : op->target;
		int dir = source_is_dir(src);
		if (op->create)
			create_target(op->target, dir);
		else if (!lexists(op->target))
			die("mount target %s does not exist; create it, or mount it under a tmpfs", op->target);
		CHECK(mount(src, op->target, NULL, MS_BIND | MS_REC, NULL), "cannot bind %s on %s", src,
		      op->target);
		if (op->readonly)
			make_readonly(op->target);
		return;
	}
	if (op->kind == MK_READONLY_ROOT) {
		clone_sources(ops, n, i + 1);
		readonly_host();
		return;
	}
	if (op->kind == MK_SYSFS) {
		/* A sysfs mounted in this network namespace lists only its own interfaces. */
		CHECK(mount("sysfs", op->target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL),
		      "cannot mount a sysfs on %s", op->target);
		return;
	}
	if (op->kind != MK_TMPFS && op->kind != MK_HIDE)
		die("mount kind %s cannot be applied here (sandboxer bug: reinstall sandboxer)", MOUNT_KIND_NAMES[op->kind]);
	if (op->create)
		create_target(op->target, 1);
	else if (!is_dir(op->target))
		die("mount target %s is not an existing directory", op->target);
	unsigned long flags = MS_NOSUID | MS_NODEV;
	if (op->kind == MK_HIDE)
		flags |= MS_RDONLY | MS_NOEXEC;
	char *data = tmpfs_options(op);
	CHECK(mount("tmpfs", op->target, "tmpfs", flags, data), "cannot mount tmpfs on %s", op->target);
	free(data);
}

/* Where to bind a file over path: path itself, or what its symlink chain names.
 *
 * A missing target is made rather than giving up: behind a dangling symlink (the host's
 * resolv.conf pointing at systemd-resolved's stub when it is not running) the target's own
 * directory gets a private tmpfs in this mount namespace; a plain missing file is created
 * only inside a rootfs (after the switch, so it lands in the tree). */
static char *bind_target(const char *path, int in_rootfs)
{
	char *real = resolve(path);
	struct stat st;
	if (stat(real, &st) == 0 && S_ISREG(st.st_mode))
		return real;
	if (lexists(real))
		die("%s is not a regular file; cannot mount the sandbox's own over it", path);
	char *parent = dirname_of(real);
	if (is_link(path) && is_dir(parent) && strcmp(parent, "/") && strcmp(parent, "/etc"))
		CHECK(mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755"),
		      "cannot mount a tmpfs on %s for the target of %s", parent, path);
	else if (!(in_rootfs && !is_link(path) && is_dir(parent)))
		die("%s is missing or a dangling symlink to %s; cannot mount the sandbox's own over it", path,
		    real);
	free(parent);
	char *what = fmt("cannot create %s to mount the sandbox's own over it", real);
	create_file(real, AT_FDCWD, what);
	free(what);
	return real;
}

/* Mount a resolv.conf naming slirp4netns's DNS and an /etc/hosts naming the hostname.
 *
 * The files live in a small tmpfs mounted for a moment on a scratch directory, bound over
 * /etc's files (read-only), then the tmpfs is detached: the binds keep the files alive. */
static void network_files(int in_rootfs)
{
	const char *scratch = scratch_dir();
	if (!scratch)
		die("no scratch directory (/tmp, /run, /mnt) to write resolv.conf in");
	CHECK(mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755"),
	      "cannot mount a tmpfs on %s", scratch);
	const char *names[] = {"resolv.conf", "hosts"}, *texts[] = {cfg.resolv, cfg.hosts};
	for (int i = 0; i < 2; i++) {
		char *path = fmt("%s/%s", scratch, names[i]);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		CHECK(fd, "cannot create %s", path);
		size_t len = strlen(texts[i]);
		if (write(fd, texts[i], len) != (ssize_t)len)
			die("cannot write %s", path);
		close(fd);
		char *etc = fmt("/etc/%s", names[i]);
		char *target = bind_target(etc, in_rootfs);
		CHECK(mount(path, target, NULL, MS_BIND, NULL), "cannot bind the sandbox's %s on %s", names[i],
		      target);
		make_readonly(target);
		free(etc);
		free(target);
		free(path);
	}
	umount2(scratch, MNT_DETACH);
	/* a payload mapped to itself can listen on port 80 inside */
	int fd = open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "0", 1) != 1)
		die("cannot set net.ipv4.ip_unprivileged_port_start: %s", strerror(errno));
	close(fd);
}

/* Create the network helper's tap device ahead of it, persistent.
 *
 * slirp4netns (or pasta) would create a non-persistent tap; closing the last fd of one
 * unregisters the device synchronously, waiting for RCU grace periods (15-25 ms here), and every
 * run would wait for that while the helper exits. A persistent tap0 that the helper merely
 * attaches to goes away with the network namespace instead, torn down by the kernel in the
 * background. */
static void persistent_tap(const char *name)
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("cannot open /dev/net/tun: %s (user-mode networking needs it readable and writable by "
		    "you: mode 0666)", strerror(errno));
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	CHECK(ioctl(fd, TUNSETIFF, &ifr), "cannot create %s", name);
	CHECK(ioctl(fd, TUNSETPERSIST, 1UL), "cannot make %s persistent", name);
	close(fd);
}

/* A private directory for the network helper's API socket, reachable by no payload.
 *
 * A tmpfs mounted for a moment, made the stage's working directory, then detached: it has no
 * path any more, in any mount namespace. The supervisor (and the helper it starts) reach it as
 * /proc/<stage>/cwd, which needs ptrace rights over the stage: they hold them (they own its user
 * namespace); a payload, in a nested user namespace and a Landlock domain, does not, nor does
 * any other sandbox. It vanishes with the stage, whatever way the sandbox ends. */
static void private_api_dir(void)
{
	const char *scratch = scratch_dir();
	if (!scratch)
		die("no scratch directory (/tmp, /run, /mnt) for the network helper's API socket");
	CHECK(mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0700"),
	      "cannot mount a tmpfs on %s", scratch);
	CHECK(chdir(scratch), "cannot change into %s", scratch);
	CHECK(umount2(scratch, MNT_DETACH), "cannot detach the tmpfs on %s", scratch);
}

static void loopback_up(void)
{
	/* A new network namespace starts with lo down; SIOCSIFFLAGS on any socket of it brings it up. */
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(sock, "cannot open a socket to configure lo");
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	CHECK(ioctl(sock, SIOCGIFFLAGS, &ifr), "cannot read lo's flags");
	ifr.ifr_flags |= IFF_UP;
	CHECK(ioctl(sock, SIOCSIFFLAGS, &ifr), "cannot bring lo up");
	close(sock);
}

/* ---- another root filesystem -------------------------------------------------------------- */
/* An O_PATH fd of rel inside the tree at rootfd, one component at a time, never following a
 * symlink; missing components are made (directories, or a file last if create == 'f'). With
 * create == 'q', -1 where a component is missing or a symlink (nothing there to mask). */
static int walk(int rootfd, const char *rel, char create)
{
	char *copy = xstrdup(rel), *save = NULL;
	char shown[PATH_MAX + 1] = "";
	for (char *s = strtok_r(copy, "/", &save); s; s = strtok_r(NULL, "/", &save))
		if (!strcmp(s, ".."))
			die("rootfs: mount target /%s contains '..'", rel);
	free(copy);
	copy = xstrdup(rel);
	int fd = dup(rootfd);
	CHECK(fd, "cannot duplicate an fd");
	char *name = strtok_r(copy, "/", &save);
	while (name) {
		char *next = strtok_r(NULL, "/", &save);
		if (!strcmp(name, ".")) {
			name = next;
			continue;
		}
		size_t used = strlen(shown);
		snprintf(shown + used, sizeof shown - used, "/%s", name);
		int nfd = openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0 && (errno == ENOENT || errno == ENOTDIR) && create == 'q') {
			close(fd);
			free(copy);
			return -1;
		}
		if (nfd < 0 && errno == ENOENT) {
			if (!create)
				die("rootfs: mount target %s does not exist", shown);
			if (!next && create == 'f')
				create_file(name, fd, shown);
			else
				CHECK(mkdirat(fd, name, 0755), "rootfs: cannot create %s", shown);
			nfd = openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		}
		CHECK(nfd, "rootfs: cannot open %s", shown);
		struct stat st;
		CHECK(fstat(nfd, &st), "rootfs: cannot stat %s", shown);
		if (create == 'q' && (S_ISLNK(st.st_mode) || (next && !S_ISDIR(st.st_mode)))) {
			close(nfd);
			close(fd);
			free(copy);
			return -1;
		}
		if (S_ISLNK(st.st_mode))
			die("rootfs: %s is a symlink; refusing to mount over it", shown);
		if (next && !S_ISDIR(st.st_mode))
			die("rootfs: %s is not a directory", shown);
		close(fd);
		fd = nfd;
		name = next;
	}
	free(copy);
	return fd;
}

static void mount_in(int rootfd, const char *rel, char create, const char *source, const char *fstype,
		     unsigned long flags, const char *data)
{
	int fd = walk(rootfd, rel, create);
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	CHECK(mount(source, path, fstype, flags, data), "cannot mount %s on %s in the rootfs",
	      source ? source : fstype, rel);
	close(fd);
}

static void minimal_dev(int rootfd, const char *rel)
{
	mount_in(rootfd, rel, 'd', "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=1m");
	int dev = walk(rootfd, rel, 0);
	for (const char *const *n = DEV_NODES; *n; n++) {
		char *src = fmt("/dev/%s", *n);
		mount_in(dev, *n, 'f', src, NULL, MS_BIND, NULL);
		free(src);
	}
	mount_in(dev, "pts", 'd', "devpts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620");
	mount_in(dev, "shm", 'd', "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m");
	for (size_t i = 0; DEV_LINKS[i][0]; i++)
		CHECK(symlinkat(DEV_LINKS[i][1], dev, DEV_LINKS[i][0]), "cannot create /dev/%s", DEV_LINKS[i][0]);
	close(dev);
}

static void overlay_root(const char *top)
{
	const char *scratch = scratch_dir();
	if (!scratch)
		die("no scratch directory (/tmp, /run, /mnt) for the overlay's upper dir");
	/* the tree may live under the scratch directory: name it by an fd opened before */
	int lower = open(top, O_PATH | O_DIRECTORY | O_CLOEXEC);
	CHECK(lower, "rootfs %s", top);
	CHECK(mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700"), "cannot mount a tmpfs on %s",
	      scratch);
	char *upper = fmt("%s/upper", scratch), *workdir = fmt("%s/work", scratch);
	CHECK(mkdir(upper, 0755), "cannot create %s", upper);
	CHECK(mkdir(workdir, 0700), "cannot create %s", workdir);
	int work = open(scratch, O_PATH | O_DIRECTORY | O_CLOEXEC);
	CHECK(work, "cannot open %s", scratch);
	char *target = fmt("/proc/self/fd/%d", lower);
	char *data = fmt("lowerdir=/proc/self/fd/%d,upperdir=/proc/self/fd/%d/upper,"
			 "workdir=/proc/self/fd/%d/work,userxattr", lower, work, work);
	CHECK(mount("overlay", target, "overlay", 0, data), "cannot mount an overlay on %s", top);
	close(work);
	umount2(scratch, MNT_DETACH);
	close(lower);
	free(upper), free(workdir), free(target), free(data);
}

static int below(const char *path, const char *top) /* both absolute and normalised */
{
	size_t n = strlen(top);
	return !strncmp(path, top, n) && path[n] == '/';
}

/* rootfs.writes = "read-only": the tree and every mount already inside it (the bind of DIR is
 * recursive) read-only, before sandboxer's own mounts go on top of it, so that those (/tmp,
 * HOME, /dev, your binds) stay as asked. Their mount points are made first, while the tree can
 * still be written; a target below another of them is made later, inside that mount. */
static void readonly_root(int rootfd, const char *top)
{
	for (size_t i = 0; i < cfg.nrootfs_mounts; i++) {
		const struct mount_op *op = &cfg.rootfs_mounts[i];
		int nested = 0;
		for (size_t j = 0; j < i && !nested; j++)
			nested = below(op->target, cfg.rootfs_mounts[j].target);
		if (nested)
			continue;
		char create = op->kind == MK_BIND && !source_is_dir(op->source) ? 'f' : 'd';
		close(walk(rootfd, op->target, create));
	}
	set_readonly(rootfd, "", AT_EMPTY_PATH | AT_RECURSIVE, fmt("cannot make the rootfs %s read-only", top));
}

/* Mount the new root and everything in it; pivot_root into it, or return its fd (chroot). */
static int setup_rootfs(void)
{
	const char *top = cfg.rootfs_dir;
	struct stat st;
	if (stat(top, &st) < 0)
		die("rootfs %s: %s; check rootfs.path (--rootfs)", top, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		die("rootfs %s is not a directory; check rootfs.path (--rootfs)", top);
	if (!strcmp(cfg.rootfs_writes, "overlay"))
		overlay_root(top);
	else
		CHECK(mount(top, top, NULL, MS_BIND | MS_REC, NULL), "cannot bind the rootfs %s onto itself", top);
	int rootfd = open(top, O_PATH | O_DIRECTORY | O_CLOEXEC);
	CHECK(rootfd, "rootfs %s", top);
	if (!strcmp(cfg.rootfs_writes, "read-only"))
		readonly_root(rootfd, top);
	for (size_t i = 0; i < cfg.nrootfs_mounts; i++) {
		const struct mount_op *op = &cfg.rootfs_mounts[i];
		if (op->kind == MK_PROC) {
			mount_in(rootfd, op->target, 'd', "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
		} else if (op->kind == MK_PROCBIND) {
			mount_in(rootfd, op->target, 'd', "/proc", NULL, MS_BIND | MS_REC, NULL);
		} else if (op->kind == MK_DEV) {
			minimal_dev(rootfd, op->target);
		} else if (op->kind == MK_TMPFS) {
			char *data = tmpfs_options(op);
			mount_in(rootfd, op->target, 'd', "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, data);
			free(data);
		} else if (op->kind == MK_BIND) {
			mount_in(rootfd, op->target, source_is_dir(op->source) ? 'd' : 'f', op->source, NULL,
				 MS_BIND | MS_REC, NULL);
			if (op->readonly) {
				/* a fresh fd: walk()'s names the directory under the new mount */
				int fd = walk(rootfd, op->target, 0);
				set_readonly(fd, "", AT_EMPTY_PATH | AT_RECURSIVE,
					     fmt("cannot make %s read-only", op->target));
				close(fd);
			}
		} else if (op->kind == MK_MASK || op->kind == MK_SEAL) {
			/* inside the tree a symlink names a path of the tree: only what is there is masked */
			int fd = walk(rootfd, op->target, 'q');
			if (fd < 0)
				continue;
			char *path = fmt("/proc/self/fd/%d", fd);
			if (op->kind == MK_SEAL)
				seal_path(path);
			else
				mask_path(path, op);
			free(path);
			close(fd);
		} else {
			die("mount kind %s cannot be applied in a rootfs (sandboxer bug: reinstall sandboxer)", MOUNT_KIND_NAMES[op->kind]);
		}
	}
	if (strcmp(cfg.rootfs_switch, "pivot_root"))
		return rootfd;
	CHECK(fchdir(rootfd), "cannot change into %s", top);
	close(rootfd);
	CHECK(syscall(SYS_pivot_root, ".", "."), "cannot pivot_root into %s", top);
	CHECK(umount2(".", MNT_DETACH), "cannot detach the old root");
	CHECK(chdir("/"), "cannot change to /");
	return -1;
}

static void enter_chroot(int rootfd)
{
	CHECK(fchdir(rootfd), "cannot change into the rootfs");
	CHECK(chroot("."), "cannot chroot into the rootfs");
	CHECK(chdir("/"), "cannot change to /");
	close(rootfd);
}

/* network_files for a chroot switch, where the stage itself stays in the host's root.
 *
 * The tree's /etc/resolv.conf may be a symlink (absolute, or with '..'); resolved from the host's
 * root it could name a host file. A child that chroots into the tree first resolves it the way
 * the payload will, inside the tree; the mounts it makes stay, as the mount namespace is shared. */
static void chrooted_network_files(int rootfd)
{
	pid_t child = fork();
	CHECK(child, "cannot fork");
	if (child == 0) {
		enter_chroot(rootfd);
		network_files(1);
		_exit(0);
	}
	int wstatus;
	while (waitpid(child, &wstatus, 0) < 0)
		if (errno != EINTR)
			_exit(125);
	if (wstatus != 0)
		_exit(125); /* the child has reported why */
}

/* ---- the payload's hardening -------------------------------------------------------------- */
/* A classic-BPF seccomp program: ioctl(fd, TIOCSTI or TIOCLINUX, ...) fails with EPERM.
 *
 * TIOCSTI pushes bytes into a terminal's input queue: a payload sharing the caller's terminal
 * could type commands into the caller's shell after the sandbox exits. */
static void install_seccomp(void)
{
	struct sock_filter code[64];
	size_t n = 0, nabis = 0;
	while (ABIS[nabis].arch)
		nabis++;
	/* seccomp_data: nr at 0, arch at 4, args[] at 16; ioctl's request is args[1], an unsigned int
	 * for the kernel: compare its low 32 bits. */
	const uint32_t low = offsetof(struct seccomp_data, args[1]) +
			     (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? 0 : 4);
	/* layout: [0] ld arch; [1..nabis] jeq arch -> its block; [nabis+1] kill;
	 * each block: ld nr; (jge x32 -> deny); jeq ioctl -> check, else -> allow;
	 * check: ld request; jeq TIOCSTI -> deny; jeq TIOCLINUX -> deny; allow: ret allow; deny: ret errno */
	size_t block_len[8], block_start[8];
	size_t pos = 1 + nabis + 1;
	for (size_t i = 0; i < nabis; i++) {
		block_len[i] = ABIS[i].x32 ? 3 : 2;
		block_start[i] = pos;
		pos += block_len[i];
	}
	size_t check = pos, allow = check + 3, deny = allow + 1;
	code[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
	for (size_t i = 0; i < nabis; i++, n++)
		code[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ABIS[i].arch,
						       (uint8_t)(block_start[i] - n - 1), 0);
	code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	for (size_t i = 0; i < nabis; i++) {
		code[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
		if (ABIS[i].x32) {
			code[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, ABIS[i].x32,
							       (uint8_t)(deny - n - 1), 0);
			n++;
		}
		code[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ABIS[i].ioctl_nr,
						       (uint8_t)(check - n - 1), (uint8_t)(allow - n - 1));
		n++;
	}
	code[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, low);
	code[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, (uint8_t)(deny - n - 1), 0);
	n++;
	code[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX_REQ, (uint8_t)(deny - n - 1), 0);
	n++;
	code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
	struct sock_fprog prog = {(unsigned short)n, code};
	CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0), "cannot install the seccomp filter");
}

/* Why a required Landlock scope is missing, and what to do about it; exit 125. */
static void no_scope(long abi, int err) __attribute__((noreturn));
static void no_scope(long abi, int err)
{
	char kernel[128] = "this kernel";
	struct utsname u;
	if (uname(&u) == 0)
		snprintf(kernel, sizeof kernel, "this kernel (Linux %.64s)", u.release);
	const char *what = cfg.landlock & NEED_ABSTRACT
		? "abstract unix sockets outside the sandbox (the host network is shared)"
		: "signals and ptrace to your processes outside the sandbox (no PID namespace)";
	const char *fix = cfg.landlock & NEED_ABSTRACT
		? "give the sandbox its own network (--net none or slirp4netns), or accept the exposure "
		  "with --accept-exposure abstract-sockets"
		: "use a PID namespace (--pid), or accept the exposure with --accept-exposure signals";
	if (abi < 1)
		die("%s has no Landlock (%s), so it cannot keep the payload from %s; use Linux 6.12 or newer "
		    "with Landlock enabled (lsm=...,landlock), %s", kernel, strerror(err), what, fix);
	die("%s has Landlock ABI %ld, so it cannot keep the payload from %s (that needs ABI %d: "
	    "Linux 6.12 or newer); upgrade the kernel, %s", kernel, abi, what, LL_SCOPES_ABI, fix);
}

/* A Landlock domain for the payload. Any domain keeps it from ptrace-ing processes outside it
 * (same-uid processes of the caller included: their memory, their environment); ABI 6 scopes
 * also refuse it abstract unix sockets and signals of processes outside the domain. Abstract
 * sockets belong to a network namespace and signals reach what the PID namespace shows, so the
 * plan marks a scope as required (NEED_*) only where no namespace does that already. */
static void enter_landlock(void)
{
	long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
	int err = errno;
	if (abi < LL_SCOPES_ABI && cfg.landlock)
		no_scope(abi, err);
	if (abi < 1)
		return;
	/* Some access right must be handled; block devices can never be made in a user namespace
	 * anyway, so handling (denying) that one takes nothing from the payload. */
	struct ll_ruleset_attr attr = {LL_ACCESS_FS_MAKE_BLOCK, 0, 0};
	if (abi >= LL_SCOPES_ABI)
		attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
	/* an exec'd command is in a domain of its own: with a PID namespace it may signal the
	 * payload (it sees nothing else), so only the scopes the plan requires apply */
	if (joining && abi >= LL_SCOPES_ABI)
		attr.scoped = (cfg.landlock & NEED_ABSTRACT ? LL_SCOPE_ABSTRACT_UNIX_SOCKET : 0) |
			      (cfg.landlock & NEED_SIGNAL ? LL_SCOPE_SIGNAL : 0);
	int fd = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
	CHECK(fd, "cannot create a Landlock ruleset");
	CHECK(syscall(SYS_landlock_restrict_self, fd, 0), "cannot enter a Landlock domain");
	close(fd);
}

static void write_proc_self(const char *name, const char *text)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/%s", name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	CHECK(fd, "cannot open %s", path);
	size_t len = strlen(text);
	if (write(fd, text, len) != (ssize_t)len)
		die("cannot write %s: %s", path, strerror(errno));
	close(fd);
}

/* The payload's own user namespace, nested in the outer one: every mount made before it
 * belongs to a more privileged mount namespace owner, so the payload, even as root in its
 * namespace, cannot unmount or remount them.
 *
 * One id (map 'self' or 'root'): the payload writes its own map, as `unshare --user
 * --map-user=U` would (here so that a failure is sandboxer's, exit 125, not the command's 1).
 * An unprivileged writer may map only its own id, and only with setgroups denied.
 *
 * Several ids ('auto', 'keep-id'): a map of more than one id needs CAP_SETUID over the parent
 * namespace in a process of that namespace (user_namespaces(7)), which the payload, once in its
 * own, no longer is. The stage is (root of the outer namespace, which holds the subordinate
 * range), so the payload asks it over a pipe and waits; setgroups stays allowed (su, apt's
 * drop to _apt, initgroups). */
static void enter_user_namespace(int ask, int answer)
{
	CHECK(unshare(CLONE_NEWUSER), "cannot create the payload's user namespace");
	if (cfg.maps_by_stage) {
		char byte = 'U';
		if (write(ask, &byte, 1) != 1 || read(answer, &byte, 1) != 1 || byte != 'U')
			_exit(125); /* the stage said why */
		close(ask);
		close(answer);
		return;
	}
	write_proc_self("uid_map", cfg.uid_map);
	write_proc_self("setgroups", "deny");
	write_proc_self("gid_map", cfg.gid_map);
}

/* The stage's side of enter_user_namespace(): once the payload has its namespace, write its
 * maps through /proc/PID (the payload is our unreaped child: the PID cannot be reused). */
static void map_payload(pid_t payload, int asked, int answer)
{
	char byte = 0;
	ssize_t n;
	while ((n = read(asked, &byte, 1)) < 0 && errno == EINTR)
		;
	close(asked);
	if (n != 1)
		return; /* the payload failed before it asked, and said why */
	const char *names[] = {"uid_map", "gid_map"};
	const char *maps[] = {cfg.uid_map, cfg.gid_map};
	for (int i = 0; i < 2; i++) {
		char path[64];
		snprintf(path, sizeof path, "/proc/%d/%s", (int)payload, names[i]);
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		size_t len = strlen(maps[i]);
		if (fd < 0 || write(fd, maps[i], len) != (ssize_t)len) {
			status("%ccannot map the payload's ids (%s): %s\n", STATUS_ERROR, names[i], strerror(errno));
			if (fd >= 0)
				close(fd);
			close(answer);
			return;
		}
		close(fd);
	}
	byte = 'U';
	if (write(answer, &byte, 1) != 1)
		kill(payload, SIGKILL); /* cannot happen: the payload holds the other end */
	close(answer);
}

/* The ids the payload runs as, with that gid as its only group (the caller's supplementary
 * groups would show as the overflow id 65534 inside). Capabilities go with a non-zero uid. */
static void switch_ids(void)
{
	if (cfg.runas_uid < 0)
		return;
	gid_t gid = (gid_t)cfg.runas_gid;
	CHECK(setgroups(1, &gid), "cannot set the payload's groups to %ld", cfg.runas_gid);
	CHECK(setresgid(gid, gid, gid), "cannot switch to gid %ld", cfg.runas_gid);
	CHECK(setresuid((uid_t)cfg.runas_uid, (uid_t)cfg.runas_uid, (uid_t)cfg.runas_uid),
	      "cannot switch to uid %ld", cfg.runas_uid);
}

/* execvp() with the payload's PATH, telling 'not found' (127) from 'not executable' (126). */
static void exec_payload(void) __attribute__((noreturn));
static void exec_payload(void)
{
	const char *name = cfg.argv[0];
	char denied[2048] = "";
	if (!name[0]) {
		status("%c127 command not found: the command name is empty\n", STATUS_EXEC);
		_exit(127);
	}
	if (strchr(name, '/')) {
		execve(name, cfg.argv, cfg.envp);
		if (errno != ENOENT && errno != ENOTDIR)
			snprintf(denied, sizeof denied, "%s: %s", name, strerror(errno));
	} else {
		const char *path = "";
		size_t plen = strlen("PATH=");
		for (char **e = cfg.envp; *e; e++)
			if (!strncmp(*e, "PATH=", plen))
				path = *e + plen;
		char *dirs = xstrdup(path), *p = dirs;
		for (;;) {
			char *colon = strchr(p, ':');
			if (colon)
				*colon = '\0';
			char *candidate = fmt("%s/%s", *p ? p : ".", name);
			execve(candidate, cfg.argv, cfg.envp);
			if (errno != ENOENT && errno != ENOTDIR && !denied[0])
				snprintf(denied, sizeof denied, "%s: %s", candidate, strerror(errno));
			free(candidate);
			if (!colon)
				break;
			p = colon + 1;
		}
	}
	if (denied[0]) {
		status("%c126 cannot execute %s\n", STATUS_EXEC, denied);
		_exit(126);
	}
	status("%c127 command not found%s: %s\n", STATUS_EXEC, strchr(name, '/') ? "" : " in the sandbox's PATH", name);
	_exit(127);
}

/* ---- the work tree's changes ----------------------------------------------------------------- */
static void deleted_below(int upper, int lower, const char *rel);

static void send_change(char code, const char *rel)
{
	size_t n = strlen(rel);
	char *out = malloc(2 * n + 1), *p = out;
	if (!out)
		die("out of memory");
	for (const char *c = rel; *c; c++) {
		if (*c == '\\' || *c == '\n') {
			*p++ = '\\';
			*p++ = *c == '\n' ? 'n' : '\\';
		} else {
			*p++ = *c;
		}
	}
	*p = '\0';
	status("%c%c%s\n", STATUS_CHANGE, code, out);
	free(out);
}

/* What the payload did to the work tree, from the overlay's upper layer: a whiteout (a 0/0
 * character device) is a deletion; an entry the lower layer has is a change, one it lacks an
 * addition (a new directory's contents too); an opaque directory (user.overlay.opaque) replaced
 * the lower one, whose entries it does not show are deletions. What cannot be walked (a tree
 * nested deeper than the stage has fds for) is said to be unlisted ('?'), never skipped: the
 * payload must not be able to hide a change from --diff that way. */
static void report_changes(int upper, int lower, const char *rel, int added)
{
	int dirfd = openat(upper, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = dirfd < 0 ? NULL : fdopendir(dirfd);
	if (!d) {
		if (dirfd >= 0)
			close(dirfd);
		send_change('?', rel[0] ? rel : ".");
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char *path = rel[0] ? fmt("%s/%s", rel, e->d_name) : fmt("%s", e->d_name);
		struct stat st, lst;
		if (fstatat(upper, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			send_change('?', path);
			free(path);
			continue;
		}
		if (S_ISCHR(st.st_mode) && st.st_rdev == 0) {
			send_change('D', path);
			free(path);
			continue;
		}
		int below = !added && lower >= 0 && fstatat(lower, e->d_name, &lst, AT_SYMLINK_NOFOLLOW) == 0;
		if (!S_ISDIR(st.st_mode)) {
			send_change(below ? 'M' : 'A', path);
			free(path);
			continue;
		}
		int sub = openat(upper, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0) {
			send_change('?', path);
			free(path);
			continue;
		}
		char opaque[2] = "";
		int is_opaque = fgetxattr(sub, "user.overlay.opaque", opaque, sizeof opaque) == 1 && opaque[0] == 'y';
		if (!below || !S_ISDIR(lst.st_mode)) {
			send_change(below ? 'M' : 'A', path);
			report_changes(sub, -1, path, 1);
		} else {
			int lsub = openat(lower, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (is_opaque && lsub >= 0)
				deleted_below(sub, lsub, path);
			report_changes(sub, lsub, path, 0);
			if (lsub >= 0)
				close(lsub);
		}
		close(sub);
		free(path);
	}
	closedir(d);
}

/* An opaque directory: the lower directory's entries it does not have are gone. */
static void deleted_below(int upper, int lower, const char *rel)
{
	int dirfd = openat(lower, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = dirfd < 0 ? NULL : fdopendir(dirfd);
	if (!d) {
		if (dirfd >= 0)
			close(dirfd);
		return;
	}
	struct dirent *e;
	struct stat st;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    fstatat(upper, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			char *path = fmt("%s/%s", rel, e->d_name);
			send_change('D', path);
			free(path);
		}
	closedir(d);
}

/* The command's own job: the signals the stage (or the joiner) handles back at their defaults,
 * none blocked, a job of its own, and a fresh session keyring (not the caller's keys). */
static void own_job(void)
{
	const int reset[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, ORPHANED, SIGCHLD, SIGPIPE, SIGXFSZ};
	for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++)
		signal(reset[i], SIG_DFL);
	if (cfg.tty) {
		/* Own foreground job on the caller's terminal: Ctrl-C and job control reach it and not
		 * the sandbox's init; TIOCSTI is refused by the filter below. */
		setpgid(0, 0);
		signal(SIGTTOU, SIG_IGN);
		tcsetpgrp(0, getpid());
		signal(SIGTTOU, SIG_DFL);
	} else {
		/* Own session: no controlling terminal, so TIOCSTI has nothing to inject into. */
		setsid();
	}
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	CHECK(syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL), "cannot create a fresh session keyring");
}

static void payload_child(int rootfd, int ask, int answer) __attribute__((noreturn));
static void payload_child(int rootfd, int ask, int answer)
{
	own_job();
	/* Before the user namespace: it takes the RLIMIT_NPROC of its creator as its own, and counts
	 * the processes of each uid in it apart from the same uid's elsewhere, so N holds for the
	 * sandbox while the user's other processes are not counted (and can still start). Soft =
	 * hard: the payload cannot raise them. CPU: SIGXCPU at N seconds, SIGKILL one later. */
	for (size_t i = 0; i < cfg.nlimits; i++) {
		/* above the hard limit we have, the lower one already holds (and raising it needs
		 * privilege over the host) */
		struct rlimit now;
		CHECK(getrlimit(cfg.limits[i].resource, &now), "cannot read a resource limit");
		rlim_t v = (rlim_t)cfg.limits[i].value;
		if (now.rlim_max != RLIM_INFINITY && v > now.rlim_max)
			v = now.rlim_max;
		rlim_t hard = cfg.limits[i].resource == RLIMIT_CPU ? v + 1 : v;
		if (now.rlim_max != RLIM_INFINITY && hard > now.rlim_max)
			hard = now.rlim_max;
		struct rlimit rl = {v, hard};
		CHECK(setrlimit(cfg.limits[i].resource, &rl), "cannot set the payload's resource limit %d to %ld",
		      cfg.limits[i].resource, cfg.limits[i].value);
	}
	enter_user_namespace(ask, answer);
	if (rootfd >= 0)
		enter_chroot(rootfd);
	if (cfg.rootfs_dir)
		/* a chrooted process cannot create a user namespace (EPERM), so it cannot get the
		 * capability back: without it, no double-chroot escape */
		CHECK(prctl(PR_CAPBSET_DROP, CAP_SYS_CHROOT, 0, 0, 0), "cannot drop CAP_SYS_CHROOT");
	switch_ids(); /* before chdir: the working directory is entered as the payload's ids */
	CHECK(chdir(cfg.cwd), "cannot change to the working directory %s", cfg.cwd);
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "cannot set no_new_privs");
	enter_landlock(); /* unprivileged: needs no_new_privs */
	install_seccomp();
	/* Only fds 0-2 reach the payload; the status pipe is close-on-exec and stays for errors, and
	 * so does the pipe whose end tells the stage the payload has exec'd (a named sandbox). */
	close(CONFIG_FD);
	int first = STATUS_FD + 1;
	if (execd_fd >= 0) {
		if (execd_fd != first)
			CHECK(dup3(execd_fd, first, O_CLOEXEC), "cannot keep a pipe");
		first++;
	}
	if (syscall(SYS_close_range, first, ~0U, 0) < 0)
		for (int fd = first; fd < 65536; fd++)
			close(fd);
	CHECK(fcntl(STATUS_FD, F_SETFD, FD_CLOEXEC), "cannot set close-on-exec");
	exec_payload();
}

/* ---- init --------------------------------------------------------------------------------- */
/* What follows runs in a signal handler too (orphaned): only async-signal-safe calls. */
static char *put_int(char *p, long v)
{
	char tmp[24];
	int n = 0;
	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) > 0);
	while (n)
		*p++ = tmp[--n];
	return p;
}

/* Whether the user namespace open at fd lies strictly below this process's own: walked up with
 * NS_GET_PARENT, which fails once the next step would leave what we can see (init's namespace,
 * another sandbox's). Nesting is at most 32 deep. */
static int below_own_userns(int fd, const struct stat *own)
{
	int cur = fd, below = 0;
	for (int depth = 0; depth < 40; depth++) {
		int parent = ioctl(cur, NS_GET_PARENT);
		if (cur != fd)
			close(cur);
		if (parent < 0)
			return 0;
		struct stat st;
		below = fstat(parent, &st) == 0 && st.st_dev == own->st_dev && st.st_ino == own->st_ino;
		cur = parent;
		if (below)
			break;
	}
	close(cur);
	return below;
}

/* Whether /proc/<pid>/stat says the process is dead already (a zombie, or exiting). */
static int dead(const char *path)
{
	char text[512] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t len = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
	if (fd >= 0)
		close(fd);
	const char *paren = len > 0 ? strrchr(text, ')') : NULL;
	char state = paren && paren + 2 < text + len ? paren[2] : '?'; /* "(comm) S ..." */
	return state == 'Z' || state == 'X';
}

/* SIGKILL pid if it is a live process in a user namespace below ours. The pidfd is taken first:
 * a process that ends meanwhile and whose pid goes to another (one of the host's, without a PID
 * namespace) is never signalled, whatever the other's namespace. 1 if the signal was sent. */
static int kill_if_below(long pid, const struct stat *own)
{
	int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (pidfd < 0)
		return 0;
	char path[48], *p = path;
	memcpy(p, "/proc/", 6);
	p = put_int(p + 6, pid);
	memcpy(p, "/ns/user", 9);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int below = fd >= 0 && below_own_userns(fd, own);
	if (fd >= 0)
		close(fd);
	memcpy(p, "/stat", 6);
	int sent = below && !dead(path) && syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) == 0;
	close(pidfd);
	return sent;
}

/* Every descendant of this process, from /proc/<pid>/task/<pid>/children (bounded), its own
 * children first (*direct of them). A child forked by another thread of a process hangs off that
 * thread's list; kill_descendants() kills the process, and the child, reparented to this
 * subreaper, is found in the next round. */
static size_t descendants(pid_t *found, size_t max, size_t *direct)
{
	size_t nfound = 0, next = 0;
	int first = 1;
	pid_t self = getpid();
	const pid_t *todo = &self;
	size_t ntodo = 1;
	for (;;) {
		for (size_t t = 0; t < ntodo; t++) {
			char path[80], *p = path;
			memcpy(p, "/proc/", 6);
			p = put_int(p + 6, todo[t]);
			memcpy(p, "/task/", 6);
			p = put_int(p + 6, todo[t]);
			memcpy(p, "/children", 10);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			char buf[4096];
			long cur = -1;
			ssize_t n;
			while ((n = read(fd, buf, sizeof buf)) > 0)
				for (ssize_t k = 0; k < n; k++) {
					if (buf[k] >= '0' && buf[k] <= '9') {
						cur = (cur < 0 ? 0 : cur * 10) + (buf[k] - '0');
					} else if (cur >= 0) {
						if (nfound < max)
							found[nfound++] = (pid_t)cur;
						cur = -1;
					}
				}
			if (cur >= 0 && nfound < max)
				found[nfound++] = (pid_t)cur;
			close(fd);
		}
		if (first)
			*direct = nfound;
		first = 0;
		if (next >= nfound)
			return nfound;
		todo = &found[next];
		ntodo = nfound - next;
		next = nfound;
	}
}

/* Without a PID namespace nothing kills what the payload left running; as a subreaper the stage
 * has inherited all of it. Kill until none is left (bounded). Our own children by pid (unreaped,
 * theirs cannot be reused); theirs, which their parents may reap at any moment, only through
 * kill_if_below(): every one of them was forked inside the payload's user namespace. */
static void kill_descendants(void)
{
	static pid_t pids[4096];
	struct stat own;
	if (stat("/proc/self/ns/user", &own) < 0)
		return;
	for (int round = 0; round < 50; round++) {
		size_t direct = 0, n = descendants(pids, sizeof pids / sizeof pids[0], &direct);
		if (!n)
			return;
		for (size_t i = 0; i < n; i++)
			if (i < direct)
				kill(pids[i], SIGKILL);
			else
				kill_if_below(pids[i], &own);
		/* our own children among them die of it: wait for one, then reap what else is dead */
		waitpid(-1, NULL, 0);
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
}

/* Without a PID namespace, what `sandboxer exec` started is no descendant of ours: a killed
 * joiner leaves it to the host's init. It is known by its user namespace instead: the payload's
 * or one nested in it, below ours, which no process can leave (setns(2) to an ancestor needs
 * capabilities there). Kill every such process, bounded; not ourselves, nor the network helper
 * or a joiner, which are in ours. Async-signal-safe (the orphaned handler runs it): no stdio,
 * no malloc. */
static void kill_below_own_userns(void)
{
	static char buf[16384];
	struct stat own;
	if (stat("/proc/self/ns/user", &own) < 0)
		return;
	for (int round = 0; round < 50; round++) {
		int proc = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (proc < 0)
			return;
		int found = 0;
		long n;
		while ((n = syscall(SYS_getdents64, proc, buf, sizeof buf)) > 0) {
			for (long off = 0; off < n;) {
				struct dirent64 *e = (struct dirent64 *)(void *)(buf + off);
				off += e->d_reclen;
				long pid = 0;
				const char *c = e->d_name;
				for (; *c >= '0' && *c <= '9'; c++)
					pid = pid * 10 + (*c - '0');
				if (*c || !pid || pid == getpid())
					continue;
				if (kill_if_below(pid, &own))
					found = 1;
			}
		}
		close(proc);
		if (!found)
			return;
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		struct timespec pause = {0, 2000000}; /* dying takes a moment: look again */
		nanosleep(&pause, NULL);
	}
}

static void orphaned(int sig)
{
	(void)sig;
	kill_descendants();
	kill_below_own_userns();
	_exit(125);
}

static void forward(int sig);

/* From now on the forwarded signals go to child's job (which leads its own process group on a
 * terminal: the child does setpgid too, whichever runs first wins); then the mask blocked
 * around the fork is lifted. */
static void forward_to(pid_t child, const sigset_t *old)
{
	payload_pid = child;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = forward;
	sa.sa_flags = SA_RESTART;
	sigfillset(&sa.sa_mask);
	for (size_t i = 0; i < NFORWARDED; i++)
		sigaction(FORWARDED[i], &sa, NULL);
	if (cfg.tty)
		setpgid(child, child);
	sigprocmask(SIG_SETMASK, old, NULL);
}

static void forward(int sig)
{
	/* The payload leads its own process group (setsid or setpgid): signal the whole job. */
	int saved = errno;
	if (kill(-payload_pid, sig) < 0)
		kill(payload_pid, sig);
	errno = saved;
}

/* ---- --join: sandboxer exec -------------------------------------------------------------- */
/* A pidfd of pid, if it is still the process that started at start (a recycled pid is not). */
static int verified_pidfd(long pid, long start, const char *what)
{
	int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (fd < 0)
		die("the sandbox's %s (pid %ld) is gone", what, pid);
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	FILE *f = fopen(path, "re");
	char buf[1024] = "";
	size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	unsigned long long started = 0;
	/* after the command's name: state, then 18 fields, then starttime (field 22) */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
			 &started) != 1 || (long)started != start)
		die("the sandbox's %s (pid %ld) is gone (the pid is another process now)", what, pid);
	return fd;
}

static int same_ns(long pid, const char *ns)
{
	char a[64], b[64];
	struct stat sa, sb;
	snprintf(a, sizeof a, "/proc/self/ns/%s", ns);
	snprintf(b, sizeof b, "/proc/%ld/ns/%s", pid, ns);
	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev;
}

/* Wait until the command ends (1) or the sandbox's stage does (0), whichever is first. */
static int sandbox_outlived(int stagefd, pid_t child)
{
	int childfd = (int)syscall(SYS_pidfd_open, child, 0);
	if (childfd < 0) {
		int err = errno;
		kill(child, SIGKILL);
		die("cannot watch the command: %s", strerror(err));
	}
	struct pollfd p[2] = {{stagefd, POLLIN, 0}, {childfd, POLLIN, 0}};
	while (poll(p, 2, -1) < 0)
		if (errno != EINTR)
			return 0; /* cannot tell: end it, never leave it behind */
	close(childfd);
	return !p[0].revents || p[1].revents;
}

/* Into a running sandbox with exactly what its payload has: the stage's namespaces, then the
 * payload's own user namespace (so the mounts stay locked), the payload's root, its ids, cwd,
 * environment policy and hardening. This process stays outside the PID namespace (setns(2) of
 * one moves only children) and waits for the command, forwarding signals; the command is in
 * the sandbox's PID namespace and dies with it. A sandbox without a PID namespace has no init
 * to take its processes down with it: then this process does what the stage does there, as a
 * subreaper of the command's descendants: it kills them all when the command exits, and the
 * command with them when the sandbox ends first (exit 137, as in a PID namespace). Any step that
 * fails ends it before the command runs (exit 125). */
static int join_main(void)
{
	joining = 1;
	read_config(CONFIG_FD);
	close(CONFIG_FD);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	long stage = cfg.join[0], payload = cfg.join[2];
	int stagefd = verified_pidfd(stage, cfg.join[1], "init");
	int payloadfd = verified_pidfd(payload, cfg.join[3], "command");
	int flags = 0;
	const char *names[] = {"mnt", "pid", "net", "uts", "ipc", "cgroup"};
	const int kinds[] = {CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWCGROUP};
	for (int i = 0; i < 6; i++)
		if (!same_ns(stage, names[i]))
			flags |= kinds[i];
	/* the outer user namespace first: its owner (us) gets every capability in it and in the
	 * payload's, which are needed to open the payload's root and to join the rest */
	CHECK(setns(stagefd, CLONE_NEWUSER), "cannot join the sandbox's user namespace");
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/root", payload);
	int rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	CHECK(rootfd, "cannot open the payload's root");
	if (flags)
		CHECK(setns(stagefd, flags), "cannot join the sandbox's namespaces");
	int own_init = !!(flags & CLONE_NEWPID);
	if (own_init)
		close(stagefd); /* else: watched, the sandbox's end is the command's */
	else
		CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "cannot become a subreaper");

	sigset_t mask, old;
	sigemptyset(&mask);
	for (size_t i = 0; i < NFORWARDED; i++)
		sigaddset(&mask, FORWARDED[i]);
	sigprocmask(SIG_BLOCK, &mask, &old);
	pid_t child = fork();
	CHECK(child, "cannot fork");
	if (child == 0) {
		/* Only the command enters the payload's user namespace: this process stays in the
		 * stage's, like the network helper, out of what the stage kills at the end of a
		 * sandbox without a PID namespace (kill_below_own_userns) */
		CHECK(setns(payloadfd, CLONE_NEWUSER), "cannot join the payload's user namespace");
		CHECK(fchdir(rootfd), "cannot enter the payload's root");
		CHECK(chroot("."), "cannot enter the payload's root");
		own_job();
		if (cfg.join_chroot)
			CHECK(prctl(PR_CAPBSET_DROP, CAP_SYS_CHROOT, 0, 0, 0), "cannot drop CAP_SYS_CHROOT");
		switch_ids();
		CHECK(chdir(cfg.cwd), "cannot change to the working directory %s", cfg.cwd);
		CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "cannot set no_new_privs");
		enter_landlock();
		install_seccomp();
		if (syscall(SYS_close_range, 3, ~0U, 0) < 0)
			for (int fd = 3; fd < 65536; fd++)
				close(fd);
		exec_payload();
	}
	close(payloadfd);
	close(rootfd);
	forward_to(child, &old);
	int st = 0;
	if (!own_init && !sandbox_outlived(stagefd, child)) {
		kill_descendants(); /* the command first among them */
		st = SIGKILL;
	} else {
		while (waitpid(child, &st, 0) < 0)
			if (errno != EINTR)
				return 125;
		if (!own_init)
			kill_descendants(); /* what the command left running */
	}
	if (cfg.tty) {
		signal(SIGTTOU, SIG_IGN);
		tcsetpgrp(0, getpgrp());
	}
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 125;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--join"))
		return join_main();
	if (argc == 2 && !strcmp(argv[1], "--print-config")) {
		printing = 1;
		read_config(0);
		print_config();
		return fflush(stdout) == 0 ? 0 : 125;
	}
	if (argc != 1) {
		dprintf(2, "usage: sandboxer-stage (run by sandboxer) | sandboxer-stage --print-config < CONFIG | "
			   "sandboxer-stage --join (sandboxer exec)\n");
		return 125;
	}
	if (dup2(STDERR_FD, 2) < 0)
		_exit(125);
	close(STDERR_FD);
	/* a supervisor gone mid-write must not kill us before we have killed what is left */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);
	read_config(CONFIG_FD);
	/* The payload must not read this process's memory or fds through /proc. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	if (!cfg.pid) {
		/* No PID namespace: become the subreaper of everything the payload starts, and learn of
		 * the supervisor's death (unshare exec'd us, so our parent is the supervisor). */
		prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
		signal(ORPHANED, orphaned);
		prctl(PR_SET_PDEATHSIG, ORPHANED, 0, 0, 0);
		if (getppid() != cfg.ppid)
			_exit(125);
	}
	if (!ABIS[0].arch)
		die("no TIOCSTI filter for this architecture; refusing to run");
	if (cfg.tap) {
		persistent_tap(cfg.tap); /* first: the host's /dev, before any mount or a rootfs switch */
		/* The network helper may start now: it joins only the user and network namespaces,
		 * which exist, and pasta's ~20 ms start then overlaps the mounts below. A helper with
		 * an API socket (slirp4netns) waits for its private directory, made last. */
		if (!cfg.apidir)
			status("%c", STATUS_TAP);
	}
	for (size_t i = 0; i < cfg.nmounts; i++)
		if (cfg.mounts[i].kind == MK_MASK) /* a symlink's target as the host has it, before mounts */
			cfg.mounts[i].resolved = resolve(cfg.mounts[i].target);
	for (size_t i = 0; i < cfg.nmounts; i++)
		apply_mount(cfg.mounts, cfg.nmounts, i);
	int rootfd = cfg.rootfs_dir ? setup_rootfs() : -1;
	if (cfg.resolv && rootfd >= 0)
		chrooted_network_files(rootfd);
	else if (cfg.resolv)
		network_files(cfg.rootfs_dir != NULL);
	if (cfg.lo)
		loopback_up();
	if (cfg.hostname[0])
		CHECK(sethostname(cfg.hostname, strlen(cfg.hostname)), "cannot set the hostname");
	if (cfg.apidir)
		private_api_dir();
	status("%c", STATUS_READY);

	struct pollfd pfd = {CONTROL_FD, POLLIN, 0};
	char go = 0;
	int ready;
	while ((ready = poll(&pfd, 1, GO_TIMEOUT_MS)) < 0 && errno == EINTR)
		;
	if (ready != 1 || read(CONTROL_FD, &go, 1) != 1 || go != GO)
		_exit(125); /* the supervisor is gone or gave up: never run the payload */

	sigset_t mask, old;
	sigemptyset(&mask);
	for (size_t i = 0; i < NFORWARDED; i++)
		sigaddset(&mask, FORWARDED[i]);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, &old);
	int asks[2] = {-1, -1}, answers[2] = {-1, -1}, execd[2] = {-1, -1};
	if (cfg.announce)
		CHECK(pipe2(execd, O_CLOEXEC), "cannot make a pipe");
	if (cfg.maps_by_stage) {
		CHECK(pipe2(asks, O_CLOEXEC), "cannot make a pipe");
		CHECK(pipe2(answers, O_CLOEXEC), "cannot make a pipe");
	}
	pid_t payload = fork();
	CHECK(payload, "cannot fork the payload");
	if (payload == 0) {
		if (cfg.maps_by_stage) {
			close(asks[0]);
			close(answers[1]);
		}
		if (execd[0] >= 0) {
			close(execd[0]); /* execd[1] closes as the payload execs (or dies) */
			execd_fd = execd[1];
		}
		payload_child(rootfd, asks[1], answers[0]);
	}
	if (cfg.maps_by_stage) {
		close(asks[1]);
		close(answers[0]);
		map_payload(payload, asks[0], answers[1]);
	}
	if (execd[0] >= 0) {
		/* named: say the payload has started (exec'd), for ps, exec and run --detach */
		close(execd[1]);
		char byte;
		while (read(execd[0], &byte, 1) < 0 && errno == EINTR)
			;
		close(execd[0]);
		status("%c%d\n", STATUS_STARTED, (int)payload);
	}
	close(CONTROL_FD);
	forward_to(payload, &old);

	int wstatus = 125 << 8;
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, cfg.tty ? WUNTRACED : 0);
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pid == payload && WIFSTOPPED(st)) {
			/* Ctrl-Z (or a read from the terminal in the background) stopped the payload, the
			 * terminal's foreground job: the supervisor stops itself so that the caller's shell
			 * gets the terminal back, and resumes the payload on `fg` */
			status("%c%d %d\n", STATUS_STOPPED, WSTOPSIG(st), payload);
			continue;
		}
		if (pid == payload) {
			wstatus = st;
			break;
		}
	}
	if (!cfg.pid) {
		kill_descendants();
		kill_below_own_userns();
	}
	if (upper_fd >= 0) {
		/* the walk holds a few fds per level of nesting: as many as we may have */
		struct rlimit fds;
		if (getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur < fds.rlim_max) {
			fds.rlim_cur = fds.rlim_max;
			setrlimit(RLIMIT_NOFILE, &fds);
		}
		report_changes(upper_fd, lower_fd, "", 0);
	}
	status("%c%d\n", STATUS_EXIT, wstatus);
	if (WIFSIGNALED(wstatus))
		_exit(128 + WTERMSIG(wstatus));
	_exit(WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 125);
}
