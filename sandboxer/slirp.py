"""slirp4netns as sandboxer's network helper: ready on --ready-fd, stopped by closing
--exit-fd, forwards added with add_hostfwd over its API socket once it is ready.

The API socket is /proc/STAGE/cwd/api.sock: the stage's working directory is a private tmpfs it
detached (stage.c, private_api_dir), which only the supervisor and its children reach.
"""

from __future__ import annotations

from .errors import SandboxerError
from .helper import Helper

API_TIMEOUT = 5.0  # per API request


class Slirp4netns(Helper):
    exit_fd = True

    def clean(self, line: str) -> str:
        return "" if line.startswith(("WARNING", "* ")) else line.strip()

    def hint(self, said: str) -> str:
        if "/dev/net/tun" in said:
            return "slirp4netns needs /dev/net/tun readable and writable by you (mode 0666)"
        return "check 'slirp4netns --version' (1.x needed); rerun with --debug"

    def forward(self) -> None:
        try:
            for request, shown in zip(self.spec.requests, self.spec.shown, strict=True):
                self._forward(request, shown)
        finally:
            if not self.keep_api:
                try:  # not needed any more (and nothing but us could reach it anyway)
                    import os

                    os.unlink(self.api_path)
                except OSError:
                    pass

    @property
    def api_path(self) -> str:
        return f"/proc/{self.stage_pid}/cwd/api.sock"

    def call(self, request: str) -> bytes:
        """One request over the API socket, and its reply (raw JSON)."""
        # _socket, not socket: socket.py imports enum and selectors, ~3 ms on every networked run
        import _socket

        reply = b""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(API_TIMEOUT)
            sock.connect(self.api_path)
            sock.sendall(request.encode())
            sock.shutdown(_socket.SHUT_WR)
            while chunk := sock.recv(65536):
                reply += chunk
                if len(reply) > 1 << 20:
                    break
        finally:
            sock.close()
        return reply

    def _forward(self, request: str, shown: str) -> None:
        try:
            reply = self.call(request)
        except OSError as e:
            raise self.failed(f"cannot add the forward {shown}: API socket: {e.strerror or e}") from None
        if reply.startswith(b'{"return"') or reply.startswith(b'{ "return"'):
            return  # (json, ~1 ms to import, only for the replies that need reading)
        self.answer(reply, f"forward {shown}")

    def answer(self, reply: bytes, what: str) -> dict[str, object]:
        """The "return" of a reply; a SandboxerError for an error or a reply of another shape."""
        import json

        try:
            answer = json.loads(reply.decode("utf-8", "replace"))
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self.failed(f"cannot {what}: unexpected reply {reply[:200]!r}")
        if "error" in answer:
            error = answer["error"]
            desc = error.get("desc", error) if isinstance(error, dict) else error
            raise SandboxerError(
                f"network helper cannot {what}: {desc}",
                "is the host port already in use? pick another one" if "forward" in what else "",
            )
        result = answer.get("return", answer)  # list_hostfwd answers {"entries": [...]} unwrapped
        return result if isinstance(result, dict) else {}
