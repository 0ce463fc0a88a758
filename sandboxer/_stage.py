"""sandboxer's stage: PID 1 inside the new namespaces (started by stage.py, `python3 -I -S`).

It does what util-linux has no verb for, between the outer `unshare` and the payload:
mounts from the plan, hostname, lo up; then it reports ready, waits for the supervisor's go,
forks the payload into a nested user namespace (which locks every mount made here), hardens it
(no_new_privs, a seccomp filter against TIOCSTI, a fresh session keyring, only fds 0-2, its own
session or foreground job) and execs it; as init it forwards signals and reaps orphans.

Standard library and ctypes only: it runs with -I -S, outside any virtualenv, on every run.

File descriptors from the supervisor:
  3  the config (marshal), read to EOF
  4  status pipe to the supervisor: "R" ready, "E<msg>\\n" setup failed, "N<code> <msg>\\n"
     payload could not be executed, "X<wait status>\\n" payload finished
  5  control pipe from the supervisor: "G" go; EOF means the supervisor is gone
  6  the caller's stderr (fd 2 is a pipe to the supervisor until the stage starts, so that
     unshare's own complaints become one clean error line)
"""

# _signal, not signal: the wrapper imports enum, ~3 ms on every run
from __future__ import annotations

import _signal as signal
import ctypes
import marshal
import os
import select
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # never at run time: typing costs milliseconds on every sandbox start
    from typing import Any, NoReturn

    Abis = tuple[tuple[int, int, int], ...]
    MountRecipe = tuple[str, str, str, bool, int, str, bool]

CONFIG_FD, STATUS_FD, CONTROL_FD, STDERR_FD = 3, 4, 5, 6
GO_TIMEOUT = 60.0

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC = 4096, 16384
MNT_DETACH = 2
# where the stage briefly mounts a tmpfs to write resolv.conf and hosts (first that exists)
SCRATCH_DIRS = ("/tmp", "/run", "/mnt", "/var/tmp")
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added after the unified table)
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
KEYCTL_JOIN_SESSION_KEYRING = 1
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
TUNSETIFF, TUNSETPERSIST, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x400454CB, 0x0002, 0x1000
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
# sent to the stage when the supervisor dies and there is no PID namespace to do the killing
ORPHANED = signal.SIGPWR

# Per machine: keyctl's syscall number and, for each ABI the kernel accepts on it,
# (AUDIT_ARCH, ioctl's syscall number, the x32 bit to refuse or 0).
ARCHES = {
    "x86_64": (250, ((0xC000003E, 16, 0x40000000), (0x40000003, 54, 0))),
    "aarch64": (219, ((0xC00000B7, 29, 0), (0x40000028, 54, 0))),
    "riscv64": (219, ((0xC00000F3, 29, 0),)),
    "ppc64le": (271, ((0xC0000015, 54, 0),)),
    "s390x": (280, ((0x80000016, 54, 0),)),
}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
O_PATH = 0o10000000
AT_EMPTY_PATH = 0x1000
S_IFMT, S_IFDIR, S_IFLNK = 0o170000, 0o040000, 0o120000
PR_CAPBSET_DROP, CAP_SYS_CHROOT = 24, 18
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
EPERM = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class SetupError(Exception):
    pass


def status(message: str) -> None:
    try:
        os.write(STATUS_FD, message.encode("utf-8", "replace"))
    except OSError:
        pass


def die(message: str) -> NoReturn:
    status("E" + message.replace("\n", " ") + "\n")
    os._exit(125)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return text.encode() if text else None


# ---- mounts --------------------------------------------------------------------------------
def do_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None,
             what: str) -> None:
    _check(libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), what)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_readonly(target: str) -> None:
    # mount_setattr(2) changes only the flag we name, recursively: a MS_REMOUNT would have to
    # repeat every flag the kernel locked on the source mount (nosuid, nodev...) or fail EPERM.
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    result = libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), _b(target),
                          ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                          ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(0 if result == 0 else -1, f"cannot make {target} read-only")


def create_target(target: str, is_dir: bool) -> None:
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    if is_dir:
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))


def apply_mount(op: MountRecipe) -> None:
    kind, source, target, readonly, size, mode, create = op
    if kind in ("pin", "bind"):
        src = target if kind == "pin" else source
        try:
            is_dir = os.path.isdir(src)
            if not os.path.exists(src):
                raise SetupError(f"bind source {src} does not exist")
        except OSError as e:
            raise SetupError(f"bind source {src}: {e.strerror}") from None
        if create:
            create_target(target, is_dir)
        elif not os.path.lexists(target):
            raise SetupError(f"mount target {target} does not exist; create it, or mount it under a tmpfs")
        do_mount(src, target, None, MS_BIND | MS_REC, None, f"cannot bind {src} on {target}")
        if readonly:
            make_readonly(target)
        return
    if create:
        create_target(target, True)
    elif not os.path.isdir(target):
        raise SetupError(f"mount target {target} is not an existing directory")
    flags = MS_NOSUID | MS_NODEV
    if kind == "hide":
        flags |= MS_RDONLY | MS_NOEXEC
    do_mount("tmpfs", target, "tmpfs", flags, f"size={size},mode={mode}",
             f"cannot mount tmpfs on {target}")


def bind_target(path: str, in_rootfs: bool) -> str:
    """Where to bind a file over path: path itself, or what its symlink chain names.

    A missing target is made rather than giving up: behind a dangling symlink (the host's
    resolv.conf pointing at systemd-resolved's stub when it is not running) the target's own
    directory gets a private tmpfs in this mount namespace; a plain missing file is created
    only inside a rootfs (after the switch, so it lands in the tree).
    """
    real = os.path.realpath(path)
    if os.path.isfile(real):
        return real
    if os.path.lexists(real):
        raise SetupError(f"{path} is not a regular file; cannot mount the sandbox's own over it")
    parent = os.path.dirname(real)
    if os.path.islink(path) and os.path.isdir(parent) and parent not in ("/", "/etc"):
        do_mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755",
                 f"cannot mount a tmpfs on {parent} for the target of {path}")
    elif not (in_rootfs and not os.path.islink(path) and os.path.isdir(parent)):
        raise SetupError(f"{path} is missing or a dangling symlink to {real}; "
                         "cannot mount the sandbox's own over it")
    try:
        os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except OSError as e:
        raise SetupError(f"cannot create {real} to mount the sandbox's own over it: {e.strerror}") from None
    return real


# ---- another root filesystem ----------------------------------------------------------------
def walk(rootfd: int, rel: str, create: str) -> int:
    """An O_PATH fd of rel inside the tree at rootfd, one component at a time, never following a
    symlink; missing components are made (directories, or a file last if create == "file")."""
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        raise SetupError(f"rootfs: mount target /{rel} contains '..'")
    fd = os.dup(rootfd)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            shown = "/" + "/".join(parts[: i + 1])
            try:
                nfd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise SetupError(f"rootfs: mount target {shown} does not exist") from None
                if last and create == "file":
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=fd))
                else:
                    os.mkdir(name, 0o755, dir_fd=fd)
                nfd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            kind = os.fstat(nfd).st_mode & S_IFMT
            if kind == S_IFLNK:
                os.close(nfd)
                raise SetupError(f"rootfs: {shown} is a symlink; refusing to mount over it")
            if not last and kind != S_IFDIR:
                os.close(nfd)
                raise SetupError(f"rootfs: {shown} is not a directory")
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def mount_in(rootfd: int, rel: str, create: str, source: str | None, fstype: str | None, flags: int,
             data: str | None) -> None:
    fd = walk(rootfd, rel, create)
    try:
        do_mount(source, f"/proc/self/fd/{fd}", fstype, flags, data,
                 f"cannot mount {source or fstype} on {rel} in the rootfs")
    finally:
        os.close(fd)


def setattr_fd(fd: int, flags: int, what: str) -> None:
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    result = libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                          ctypes.c_uint(AT_EMPTY_PATH | flags), ctypes.byref(attr),
                          ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(0 if result == 0 else -1, what)


def minimal_dev(rootfd: int, rel: str) -> None:
    mount_in(rootfd, rel, "dir", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=1m")
    dev = walk(rootfd, rel, "")
    try:
        for name in DEV_NODES:
            mount_in(dev, name, "file", "/dev/" + name, None, MS_BIND, None)
        mount_in(dev, "pts", "dir", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
                 "newinstance,ptmxmode=0666,mode=620")
        mount_in(dev, "shm", "dir", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)


def setup_rootfs(rc: dict[str, Any], pivot_nr: int) -> int:
    """Mount the new root and everything in it; pivot_root into it, or return its fd (chroot)."""
    top = rc["dir"]
    try:
        st = os.stat(top)
    except OSError as e:
        raise SetupError(f"rootfs {top}: {e.strerror}; check rootfs.path (--rootfs)") from None
    if st.st_mode & S_IFMT != S_IFDIR:
        raise SetupError(f"rootfs {top} is not a directory; check rootfs.path (--rootfs)")
    if rc["writes"] == "overlay":
        scratch = next((d for d in SCRATCH_DIRS if os.path.isdir(d) and not os.path.islink(d)), None)
        if scratch is None:
            raise SetupError("no scratch directory (/tmp, /run, /mnt) for the overlay's upper dir")
        # the tree may live under the scratch directory: name it by an fd opened before
        lower = os.open(top, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        do_mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700",
                 f"cannot mount a tmpfs on {scratch}")
        try:
            os.mkdir(scratch + "/upper", 0o755)
            os.mkdir(scratch + "/work", 0o700)
            work = os.open(scratch, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                do_mount("overlay", f"/proc/self/fd/{lower}", "overlay", 0,
                         f"lowerdir=/proc/self/fd/{lower},upperdir=/proc/self/fd/{work}/upper,"
                         f"workdir=/proc/self/fd/{work}/work,userxattr",
                         f"cannot mount an overlay on {top}")
            finally:
                os.close(work)
        finally:
            libc.umount2(_b(scratch), MNT_DETACH)
            os.close(lower)
    else:
        do_mount(top, top, None, MS_BIND | MS_REC, None, f"cannot bind the rootfs {top} onto itself")
    rootfd = os.open(top, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for kind, source, target, readonly, size, mode, _create in rc["mounts"]:
        if kind == "proc":
            mount_in(rootfd, target, "dir", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        elif kind == "procbind":
            mount_in(rootfd, target, "dir", "/proc", None, MS_BIND | MS_REC, None)
        elif kind == "dev":
            minimal_dev(rootfd, target)
        elif kind == "tmpfs":
            mount_in(rootfd, target, "dir", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV,
                     f"size={size},mode={mode}")
        else:
            try:
                is_dir = os.path.isdir(source)
                if not os.path.exists(source):
                    raise SetupError(f"bind source {source} does not exist")
            except OSError as e:
                raise SetupError(f"bind source {source}: {e.strerror}") from None
            fd = walk(rootfd, target, "dir" if is_dir else "file")
            try:
                do_mount(source, f"/proc/self/fd/{fd}", None, MS_BIND | MS_REC, None,
                         f"cannot bind {source} on {target} in the rootfs")
                if readonly:
                    fd2 = walk(rootfd, target, "")
                    try:
                        setattr_fd(fd2, AT_RECURSIVE, f"cannot make {target} read-only")
                    finally:
                        os.close(fd2)
            finally:
                os.close(fd)
    if rc["writes"] == "read-only":
        setattr_fd(rootfd, 0, f"cannot make the rootfs {top} read-only")
    if rc["switch"] == "pivot_root":
        os.fchdir(rootfd)
        os.close(rootfd)
        dot = ctypes.c_char_p(b".")
        _check(0 if libc.syscall(ctypes.c_long(pivot_nr), dot, dot) == 0 else -1,
               f"cannot pivot_root into {top}")
        _check(libc.umount2(b".", MNT_DETACH), "cannot detach the old root")
        os.chdir("/")
        return -1
    return rootfd


def enter_chroot(rootfd: int) -> None:
    os.fchdir(rootfd)
    os.chroot(".")
    os.chdir("/")
    os.close(rootfd)


def network_files(resolv: str, hosts: str, in_rootfs: bool = False) -> None:
    """Mount a resolv.conf naming slirp4netns's DNS and an /etc/hosts naming the hostname.

    The files live in a small tmpfs mounted for a moment on a scratch directory, bound over
    /etc's files (read-only), then the tmpfs is detached: the binds keep the files alive.
    """
    scratch = next((d for d in SCRATCH_DIRS if os.path.isdir(d) and not os.path.islink(d)), None)
    if scratch is None:
        raise SetupError("no scratch directory (/tmp, /run, /mnt) to write resolv.conf in")
    do_mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755",
             f"cannot mount a tmpfs on {scratch}")
    try:
        for name, text in (("resolv.conf", resolv), ("hosts", hosts)):
            path = os.path.join(scratch, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            target = bind_target("/etc/" + name, in_rootfs)
            do_mount(path, target, None, MS_BIND, None, f"cannot bind the sandbox's {name} on {target}")
            make_readonly(target)
    finally:
        libc.umount2(_b(scratch), MNT_DETACH)
    # a payload mapped to itself can listen on port 80 inside
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
            f.write("0")
    except OSError as e:
        raise SetupError(f"cannot set net.ipv4.ip_unprivileged_port_start: {e.strerror}") from None


def chrooted_network_files(rootfd: int, resolv: str, hosts: str) -> None:
    """network_files for a chroot switch, where the stage itself stays in the host's root.

    The tree's /etc/resolv.conf may be a symlink (absolute, or with '..'); resolved from the
    host's root it could name a host file. A child that chroots into the tree first resolves it
    the way the payload will, inside the tree; the mounts it makes stay, since the mount
    namespace is shared.
    """
    child = os.fork()
    if child == 0:
        try:
            enter_chroot(rootfd)
            network_files(resolv, hosts, in_rootfs=True)
        except SetupError as e:
            die(str(e))
        except OSError as e:
            die(f"setup failed: {e}")
        os._exit(0)
    _, wstatus = os.waitpid(child, 0)
    if wstatus != 0:
        os._exit(125)  # the child has reported why


def persistent_tap(name: str) -> None:
    """Create slirp4netns's tap device ahead of it, persistent.

    slirp4netns would create a non-persistent tap; closing the last fd of one unregisters the
    device synchronously, waiting for RCU grace periods (15-25 ms here), and every run would
    wait for that while slirp4netns exits. A persistent tap0 that slirp4netns merely attaches
    to goes away with the network namespace instead, torn down by the kernel in the background.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"cannot open /dev/net/tun: {e.strerror} (slirp4netns needs it readable and "
                         "writable by you: mode 0666)") from None
    try:
        ifreq = ctypes.create_string_buffer(name.encode(), 40)
        ctypes.memmove(ctypes.addressof(ifreq) + 16, (IFF_TAP | IFF_NO_PI).to_bytes(2, sys.byteorder), 2)
        _check(libc.ioctl(fd, ctypes.c_ulong(TUNSETIFF), ifreq), f"cannot create {name}")
        _check(libc.ioctl(fd, ctypes.c_ulong(TUNSETPERSIST), ctypes.c_ulong(1)),
               f"cannot make {name} persistent")
    finally:
        os.close(fd)


def loopback_up() -> None:
    # A new network namespace starts with lo down; SIOCSIFFLAGS on any socket of it brings it up.
    sock = libc.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM
    _check(0 if sock >= 0 else -1, "cannot open a socket to configure lo")
    ifreq = ctypes.create_string_buffer(b"lo", 40)
    try:
        _check(libc.ioctl(sock, SIOCGIFFLAGS, ifreq), "cannot read lo's flags")
        flags = int.from_bytes(ifreq.raw[16:18], sys.byteorder) | IFF_UP
        ctypes.memmove(ctypes.addressof(ifreq) + 16, flags.to_bytes(2, sys.byteorder), 2)
        _check(libc.ioctl(sock, SIOCSIFFLAGS, ifreq), "cannot bring lo up")
    finally:
        os.close(sock)


# ---- the payload's hardening ---------------------------------------------------------------
class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def tiocsti_filter(abis: Abis) -> list[tuple[int, int, int, int]]:
    """A classic-BPF seccomp program: ioctl(fd, TIOCSTI or TIOCLINUX, ...) fails with EPERM.

    TIOCSTI pushes bytes into a terminal's input queue: a payload sharing the caller's terminal
    could type commands into the caller's shell after the sandbox exits.
    """
    LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    ALLOW, DENY, KILL = 0x7FFF0000, 0x00050000 | EPERM, 0x80000000
    # seccomp_data: nr at 0, arch at 4, args[] at 16; ioctl's request is args[1], an unsigned
    # int for the kernel: compare its low 32 bits.
    low = 24 if sys.byteorder == "little" else 28
    code: list[tuple[Any, ...]] = [("ld", 4)]
    for i, (arch, _nr, _x32) in enumerate(abis):
        code.append(("jeq", arch, f"abi{i}", None))
    code.append(("ret", KILL))
    for i, (_arch, nr, x32) in enumerate(abis):
        code.append(("label", f"abi{i}"))
        code.append(("ld", 0))
        if x32:
            code.append(("jge", x32, "deny", None))
        code.append(("jeq", nr, "check", "allow"))
    code += [("label", "check"), ("ld", low), ("jeq", TIOCSTI, "deny", None),
             ("jeq", TIOCLINUX, "deny", None), ("label", "allow"), ("ret", ALLOW),
             ("label", "deny"), ("ret", DENY)]
    labels: dict[str, int] = {}
    pos = 0
    for item in code:
        if item[0] == "label":
            labels[item[1]] = pos
        else:
            pos += 1
    out: list[tuple[int, int, int, int]] = []
    pos = 0
    for item in code:
        if item[0] == "label":
            continue
        pos += 1
        if item[0] == "ld":
            out.append((LD, 0, 0, item[1]))
        elif item[0] == "ret":
            out.append((RET, 0, 0, item[1]))
        else:
            jt = labels[item[2]] - pos if item[2] else 0
            jf = labels[item[3]] - pos if item[3] else 0
            out.append((JEQ if item[0] == "jeq" else JGE, jt, jf, item[1]))
    return out


def install_seccomp(abis: Abis) -> None:
    program = tiocsti_filter(abis)
    filters = (SockFilter * len(program))(*[SockFilter(*ins) for ins in program])
    prog = SockFprog(len(program), filters)
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
           "cannot install the seccomp filter")


def enter_user_namespace(inside_uid: int, inside_gid: int) -> None:
    """The payload's own user namespace, mapping inside ids to ours (the outer root = the caller).

    What `unshare --user --map-user=U --map-group=G` does, done here so that a failure is
    reported as sandboxer's (exit 125) rather than as the command's exit status 1. Mounts
    made before it belong to a more privileged mount namespace owner: the payload, even as root
    in its namespace, cannot unmount or remount them.
    """
    _check(libc.unshare(CLONE_NEWUSER), "cannot create the payload's user namespace")
    for name, text in (("uid_map", f"{inside_uid} 0 1\n"), ("setgroups", "deny"),
                       ("gid_map", f"{inside_gid} 0 1\n")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def exec_payload(argv: list[str], env: dict[str, str]) -> NoReturn:
    """execvp() with the payload's PATH, telling 'not found' (127) from 'not executable' (126)."""
    name = argv[0]
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in env.get("PATH", "").split(":")]
    denied = None
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as e:
            if e.errno in (2, 20):  # ENOENT, ENOTDIR
                continue
            denied = denied or f"{path}: {e.strerror}"
    if denied:
        status(f"N126 cannot execute {denied}\n")
        os._exit(126)
    where = "" if "/" in name else " in the sandbox's PATH"
    status(f"N127 command not found{where}: {name}\n")
    os._exit(127)


def payload_child(cfg: dict[str, Any], keyctl_nr: int, abis: Abis, rootfd: int = -1) -> NoReturn:
    for sig in (*FORWARDED, ORPHANED, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        if cfg["tty"]:
            # Own foreground job on the caller's terminal: Ctrl-C and job control reach it and
            # not the sandbox's init; TIOCSTI is refused by the filter below.
            os.setpgid(0, 0)
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(0, os.getpid())
            except OSError:
                pass
            signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        else:
            # Own session: no controlling terminal, so TIOCSTI has nothing to inject into.
            os.setsid()
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        _check(0 if libc.syscall(ctypes.c_long(keyctl_nr), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING),
                                 None) >= 0 else -1, "cannot create a fresh session keyring")
        enter_user_namespace(*cfg["inner"])
        if rootfd >= 0:
            enter_chroot(rootfd)
        if cfg["rootfs"]:
            # a chrooted process cannot create a user namespace (EPERM), so it cannot get the
            # capability back: without it, no double-chroot escape
            _check(libc.prctl(PR_CAPBSET_DROP, CAP_SYS_CHROOT, 0, 0, 0),
                   "cannot drop CAP_SYS_CHROOT")
        try:
            os.chdir(cfg["cwd"])
        except OSError as e:
            raise SetupError(f"cannot change to the working directory {cfg['cwd']}: {e.strerror}") from None
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "cannot set no_new_privs")
        install_seccomp(abis)
        # Only fds 0-2 reach the payload; the status pipe is close-on-exec and stays for errors.
        os.closerange(3, STATUS_FD)
        os.closerange(STATUS_FD + 1, 65536)
        os.set_inheritable(STATUS_FD, False)
    except (SetupError, OSError) as e:
        die(str(e))
    exec_payload(cfg["argv"], cfg["env"])


# ---- init ----------------------------------------------------------------------------------
def descendants() -> list[int]:
    """Every descendant of this process, from /proc/<pid>/task/<tid>/children."""
    found: list[int] = []
    todo = [os.getpid()]
    while todo and len(found) < 100000:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def kill_descendants() -> None:
    # Without a PID namespace nothing kills what the payload left running; as a subreaper the
    # stage has inherited all of it. Kill until none is left (bounded).
    for _ in range(50):
        pids = descendants()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def main() -> None:
    os.dup2(STDERR_FD, 2)
    os.close(STDERR_FD)
    chunks = []
    while True:
        chunk = os.read(CONFIG_FD, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(CONFIG_FD)
    cfg = marshal.loads(b"".join(chunks))
    # The payload must not read this process's memory or fds through /proc.
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if not cfg["pid"]:
        # No PID namespace: become the subreaper of everything the payload starts, and learn
        # of the supervisor's death (unshare exec'd us, so our parent is the supervisor).
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        def orphaned(_sig: int, _frame: object) -> None:
            kill_descendants()
            os._exit(125)

        signal.signal(ORPHANED, orphaned)
        libc.prctl(PR_SET_PDEATHSIG, int(ORPHANED), 0, 0, 0)
        if os.getppid() != cfg["ppid"]:
            os._exit(125)
    arch = ARCHES.get(os.uname().machine)
    if arch is None:
        die(f"no TIOCSTI filter for this architecture ({os.uname().machine}); refusing to run")
    keyctl_nr, abis = arch
    rootfd = -1
    try:
        for op in cfg["mounts"]:
            apply_mount(op)
        if cfg["netfiles"]:
            persistent_tap("tap0")  # before a rootfs switch: the tree's /dev has no net/tun
        if cfg["rootfs"]:
            rootfd = setup_rootfs(cfg["rootfs"], PIVOT_ROOT.get(os.uname().machine, -1))
        if cfg["netfiles"] and rootfd >= 0:
            chrooted_network_files(rootfd, *cfg["netfiles"])
        elif cfg["netfiles"]:
            resolv, hosts = cfg["netfiles"]
            network_files(resolv, hosts, in_rootfs=bool(cfg["rootfs"]))
        if cfg["lo"]:
            loopback_up()
        if cfg["hostname"]:
            name = cfg["hostname"].encode()
            _check(libc.sethostname(name, len(name)), "cannot set the hostname")
    except SetupError as e:
        die(str(e))
    except OSError as e:
        die(f"setup failed: {e}")
    status("R")
    ready, _, _ = select.select([CONTROL_FD], [], [], GO_TIMEOUT)
    if not ready or os.read(CONTROL_FD, 1) != b"G":
        os._exit(125)  # the supervisor is gone or gave up: never run the payload

    mask = (*FORWARDED, signal.SIGCHLD)
    signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    payload = os.fork()
    if payload == 0:
        payload_child(cfg, keyctl_nr, abis, rootfd)
        os._exit(125)
    os.close(CONTROL_FD)

    def forward(sig: int, _frame: object) -> None:
        # The payload leads its own process group (setsid or setpgid): signal the whole job.
        try:
            os.kill(-payload, sig)
        except OSError:
            try:
                os.kill(payload, sig)
            except OSError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    if cfg["tty"]:
        try:
            os.setpgid(payload, payload)  # the child does it too: whichever runs first wins
        except OSError:
            pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)
    while True:
        try:
            pid, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            wstatus = 125 << 8
            break
        if pid == payload:
            break
    status(f"X{wstatus}\n")
    if not cfg["pid"]:
        kill_descendants()
    if os.WIFSIGNALED(wstatus):
        os._exit(128 + os.WTERMSIG(wstatus))
    os._exit(os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else 125)


if __name__ == "__main__":
    main()
