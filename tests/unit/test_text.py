"""``text.printable``: the one place peer text is made safe for logs, status fields and pages."""

from __future__ import annotations

import pytest

from wmbus_stream.text import PRINTABLE_MAX, printable


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text 123 ~!", "plain text 123 ~!"),
    ("\x00\x01\x1b[2J\r\n\t\x7f", "\\x00\\x01\\x1b[2J\\r\\n\\t\\x7f"),
    ("caf\u00e9 \u2028 \U0001f600", "caf\\xe9 \\u2028 \\U0001f600"),
    ("back\\slash", "back\\\\slash"),  # escaped too, so an escape in the output is never ambiguous
    (b"\xff\x00ok", "\\xff\\x00ok"),  # bytes are shown byte by byte
])
def test_printable_escapes_everything_but_printable_ascii(raw, shown) -> None:
    assert printable(raw) == shown


def test_printable_is_bounded_and_never_cuts_an_escape() -> None:
    assert printable("x" * 5000) == "x" * PRINTABLE_MAX + "..."
    cut = printable("\x1b" * 100, 10)
    assert cut == "\\x1b\\x1b..." and len(cut) <= 10 + 3
