"""Text from a network peer made safe to show: one place for every log line, status and page.

A HES, a configuration server or a TLS library quoting peer bytes can put anything into a
message: NUL, ESC sequences that drive a terminal, CR/LF that forge log lines, megabytes.
``printable`` escapes everything but printable ASCII (``\\x1b``, ``\\r``, ``\\u2028``, ``\\\\``)
and bounds the length, so the result is one line of printable ASCII at most ``limit + 3``
characters long. Apply it where peer text enters a message, not where the message is shown.
"""

from __future__ import annotations

__all__ = ["printable", "PRINTABLE_MAX"]

PRINTABLE_MAX = 200


def printable(text: str | bytes, limit: int = PRINTABLE_MAX) -> str:
    """``text`` with non-printable and non-ASCII characters escaped, cut to ``limit`` (``...`` then)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")  # every byte shown exactly, as \xNN when not printable ASCII
    shown: list[str] = []
    size = 0
    for ch in text:
        piece = ch if " " <= ch <= "~" and ch != "\\" else ch.encode("unicode_escape").decode("ascii")
        size += len(piece)
        if size > limit:
            shown.append("...")
            break
        shown.append(piece)
    return "".join(shown)
