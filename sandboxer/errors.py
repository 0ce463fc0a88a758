"""The one error type of sandboxer, and the exit codes it maps to."""

from __future__ import annotations

# Exit codes, as env(1), timeout(1) and podman use them.
EXIT_FAILURE = 125  # sandboxer itself failed (bad profile, setup error, ...)
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
EXIT_CHECK_INVALID = 1  # `sandboxer check` found an invalid profile


class SandboxerError(Exception):
    """A failure the user can act on: one line of what/where, plus an optional hint."""

    def __init__(self, message: str, hint: str = "", code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def line(self) -> str:
        text = f"sandboxer: error: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return printable(text)


class ProfileKeyError(SandboxerError):
    """A problem with one profile key that only compiling finds; build.py names its file:line
    (or the option that set it)."""

    def __init__(self, loc: tuple[str | int, ...], message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.loc = loc


def printable(text: str) -> str:
    """text on one line: control characters (a newline in a path, say) shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
