"""The supervisor's side of a named sandbox: its registry entry (names.py), the info that ps and
exec read, and the control socket that stop and port talk to.

The control socket lives in the entry's directory (0700, in the user's private registry, hidden
from every payload); a peer of another uid is refused all the same (SO_PEERCRED). Requests and
answers are one line of JSON each. `stop` is answered when the sandbox has ended, with the
command's exit status; `port-add`, `port-ls` and `port-rm` go to slirp4netns's API socket, which
a named sandbox keeps.

Imported only by named runs.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

from . import names
from .errors import SandboxerError, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .helper import Helper
    from .spec import RunSpec
    from .supervise import Supervisor

REQUEST_TIMEOUT = 2.0  # for a client to send its request
MAX_REQUEST = 65536


class Named:
    """A running named sandbox, from its supervisor's side."""

    def __init__(self, spec: RunSpec, argv: list[str], profile: str, *, detached: bool = False,
                 started_fd: int = -1) -> None:
        self.spec = spec
        self.argv = argv
        self.profile = profile
        self.detached = detached
        self.started_fd = started_fd  # run --detach: "K NAME" once started, or "E CODE MESSAGE"
        self.reg = names.Registration(spec.name or None, names.root(create=True))
        self.name = self.reg.name
        self.info: dict[str, object] | None = None  # written once the command has started
        self.stoppers: list[socket.socket] = []
        # the profile's forwards: slirp4netns numbers forwards from 1, in the order added
        self.forwards: list[dict[str, object]] = [{"id": n, "shown": shown} for n, shown in
                                                  enumerate(spec.network.shown if spec.network else (), 1)]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(self.reg.path("ctl.sock"))
            self.sock.listen(16)
        except OSError as e:
            self.close()
            raise SandboxerError(f"cannot make the control socket of {self.name}: {e.strerror}") from None
        self.listener = self.sock.fileno()

    def log_path(self) -> str:
        return self.reg.path("log")

    # ---- the run's milestones ----------------------------------------------------------------
    def started(self, sup: Supervisor, payload: int) -> None:
        """The payload has exec'd: write the info ps and exec read, and tell run --detach."""
        spec = self.spec
        network = spec.network.backend if spec.network else ("none" if "--net" in spec.outer else "host")
        info = {
            "name": self.name, "profile": self.profile, "command": self.argv, "started": time.time(),
            "supervisor": [os.getpid(), names.start_time(os.getpid())],
            "stage": [sup.stage, names.start_time(sup.stage)],
            "payload": [payload, names.start_time(payload)],
            "network": network, "forwards": [f["shown"] for f in self.forwards], "detached": self.detached,
            "exec": {"cwd": spec.cwd, "env": spec.env.data(), "run_as": list(spec.users.run_as),
                     "landlock": spec.landlock, "chroot": spec.rootfs is not None},
        }
        self.info = info
        self.reg.write_info(info)
        self._tell(f"K {self.name}\n")

    def failed(self, error: SandboxerError) -> None:
        self._tell(f"E {error.code} {printable(error.line())}\n")

    def ended(self, code: int, wstatus: int | None) -> None:
        if wstatus is None:
            said = f"exit status {code}"
        elif os.WIFSIGNALED(wstatus):
            said = f"killed by signal {os.WTERMSIG(wstatus)}"
        else:
            said = f"exit status {os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else code}"
        self._tell(f"E 125 sandboxer: error: the command ended before it had started ({said})\n")
        for conn in self.stoppers:
            self.reply(conn, {"code": code, "said": said})
        self.stoppers = []

    def _tell(self, line: str) -> None:
        if self.started_fd < 0:
            return
        try:
            os.write(self.started_fd, line.encode())
        except OSError:
            pass
        os.close(self.started_fd)
        self.started_fd = -1

    def close(self) -> None:
        for conn in self.stoppers:
            self.reply(conn, {"error": "the sandbox's supervisor ended"})
        self.stoppers = []
        if self.started_fd >= 0:
            os.close(self.started_fd)
            self.started_fd = -1
        try:
            self.sock.close()
        except OSError:
            pass
        self.reg.close()

    # ---- requests ------------------------------------------------------------------------------
    def accept(self) -> tuple[socket.socket, dict[str, object]] | None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return None
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.getuid():
                conn.close()
                return None
            conn.settimeout(REQUEST_TIMEOUT)
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            message = json.loads(data)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            conn.close()
            return None
        return conn, message

    @staticmethod
    def reply(conn: socket.socket, answer: dict[str, object]) -> None:
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    def port(self, op: object, message: dict[str, object], net: Helper | None) -> dict[str, object]:
        """port-add, port-ls, port-rm: through slirp4netns's API socket."""
        if op not in ("port-add", "port-ls", "port-rm"):
            return {"error": f"unknown request {op!r}"}
        if net is None:
            return {"error": f"the sandbox {self.name!r} has no network helper (its network is "
                             f"{self.info['network'] if self.info else 'none'})",
                    "hint": "start it with --net slirp4netns to add forwards later"}
        from .slirp import Slirp4netns

        if not isinstance(net, Slirp4netns):
            return {"error": f"the sandbox {self.name!r} uses {net.spec.backend}, whose forwards are fixed when it "
                             "starts (the pasta of Debian 12 has no API to change them)",
                    "hint": "start it with --net slirp4netns to add forwards later, or with --forward"}
        try:
            if op == "port-ls":
                result = net.answer(net.call(json.dumps({"execute": "list_hostfwd"})), "list the forwards")
                return {"forwards": result.get("entries", [])}
            if op == "port-rm":
                ident = message.get("id")
                if not isinstance(ident, int) or isinstance(ident, bool):
                    return {"error": "port rm needs a forward's ID (see sandboxer port ls)"}
                net.answer(net.call(json.dumps({"execute": "remove_hostfwd", "arguments": {"id": ident}})),
                           f"remove the forward {ident}")
                self.forwards = [f for f in self.forwards if f["id"] != ident]
                self._update_forwards()
                return {"removed": ident}
            args = message.get("forward")
            if not isinstance(args, dict) or set(args) != {"proto", "host_addr", "host_port", "guest_port"}:
                return {"error": "port add: a forward of another shape"}
            shown = str(message.get("shown", ""))
            result = net.answer(net.call(json.dumps({"execute": "add_hostfwd", "arguments": args})),
                                f"forward {shown}")
            ident = result.get("id")
            self.forwards.append({"id": ident, "shown": shown})
            self._update_forwards()
            return {"id": ident, "shown": shown}
        except SandboxerError as e:
            return {"error": e.message, "hint": e.hint}
        except OSError as e:
            return {"error": f"cannot reach slirp4netns's API socket: {e.strerror or e}"}

    def _update_forwards(self) -> None:
        if self.info is not None:
            self.info["forwards"] = [f["shown"] for f in self.forwards]
            try:
                self.reg.write_info(self.info)
            except OSError as e:
                print(f"sandboxer: warning: cannot update {self.name}'s info: {e.strerror}", file=sys.stderr)
