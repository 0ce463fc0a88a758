"""pasta (passt's namespace mode) as sandboxer's network helper.

It runs in the foreground as our child (so it dies with us), joins the stage's network and user
namespaces, attaches to the tap the stage made and configures it with the host's addresses and
routes. Ready: it writes its pid to --pid once set up, and that "file" is our pipe. Forwards are
on its command line (the pasta of Debian 12 has no API to add them later); one it cannot bind
makes it exit before it is ready. Stopped with SIGTERM.
"""

from __future__ import annotations

from .errors import SandboxerError
from .helper import Helper

# "0.0472: ERROR:   Failed to bind any port for '-t 127.0.0.1/8080:80', exiting" (patterns for
# re, imported only when a line is read: ~3 ms that no successful run needs)
_STAMP = r"^\d+\.\d+:\s+(?:\w+:\s+)?"
_BIND = r"Failed to bind any port for '-([tu]) ([^']*)'"


class Pasta(Helper):
    def clean(self, line: str) -> str:
        if line.startswith("Failed to send"):  # no syslog: pasta says so between lines
            return ""
        import re

        return re.sub(_STAMP, "", line.strip())

    def hint(self, said: str) -> str:
        if "/dev/net/tun" in said:
            return "pasta needs /dev/net/tun readable and writable by you (mode 0666)"
        if "routable interface" in said or "interface not usable" in said:
            return "pasta copies the host's default route: the host needs one"
        return "rerun with --debug"

    def not_ready(self, text: str) -> SandboxerError:
        import re

        m = re.search(_BIND, self.said())
        if m:
            proto = "tcp" if m.group(1) == "t" else "udp"
            addr, _, ports = m.group(2).rpartition("/")
            host_port, _, guest_port = ports.partition(":")
            shown = f"[{addr}]" if ":" in addr else addr
            return SandboxerError(
                f"network helper cannot forward {shown}:{host_port} -> {guest_port}/{proto}: "
                "pasta cannot bind the host port",
                "is the host port already in use? pick another one",
            )
        return super().not_ready(text)
