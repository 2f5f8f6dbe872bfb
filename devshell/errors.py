"""The one error type users see: a message and a fix, printed as one line, exit 2."""

from __future__ import annotations


class DevshellError(Exception):
    """A problem the user can fix. Never carries a traceback to the terminal."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; fix: {self.fix}" if self.fix else self.message


class VerifyFailed(DevshellError):
    """The container does not hold the promised state; it is left for inspection."""

    exit_code = 3
