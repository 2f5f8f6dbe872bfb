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


_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029}
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def for_terminal(text: str, *, backslash: bool = True) -> str:
    """text safe for a terminal: C0, DEL and C1 controls (so every ANSI escape), bidi overrides
    and line separators become escapes, and so do bytes that were not UTF-8 (surrogateescape).
    Messages name host paths the agent chose (a skill's name, a link's target). backslash=False
    leaves '\\' as it is, so text escaped once already is not escaped again."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\" and not backslash:
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or 0x7F <= o <= 0x9F:
            out.append(f"\\x{o:02x}")
        elif o in _BIDI or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)
