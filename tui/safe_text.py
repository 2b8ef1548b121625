"""Text that came from a person or a device, made safe to draw on the console.

Names, notes, reasons, descriptions, device replies and error messages can hold anything: ``[`` and ``]``
(Textual and Rich read them as markup: ``[/bold]`` with nothing open is an error, ``[red]`` a colour), or
control characters (ESC starts a terminal escape sequence: a colour, a cleared screen, a window title). Every
such string is drawn through :func:`plain`: a Rich :class:`~rich.text.Text`, which Textual never parses as
markup, with every control character shown as an escape (``\\x1b``, ``\\n``, ``\\x9b``), so what is drawn is
exactly the characters stored and nothing reaches the terminal as a command. Toasts take a ``str``: they get
:func:`escape_controls` and ``markup=False``.

Escaped are the C0 controls (U+0000 to U+001F), DEL (U+007F), the C1 controls (U+0080 to U+009F), the line and
paragraph separators (U+2028, U+2029) and the bidirectional embeddings, overrides and isolates (U+202A to
U+202E, U+2066 to U+2069), which reorder what is drawn after them. A backslash is left as it is, so escaping
twice gives the same text as escaping once.
"""

from __future__ import annotations

from typing import Final

from rich.text import Text

#: Named escapes for the common controls; the others are written ``\\xNN`` or ``\\uNNNN``.
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_EXTRA: Final = frozenset(
    [0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)],
)


def _escape(code: int) -> str:
    char = chr(code)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


#: str.translate table: every escaped code point to its escape.
_TABLE: Final = {code: _escape(code) for code in [*range(0x20), *range(0x7F, 0xA0), *_EXTRA]}
_TABLE_KEEP_NEWLINES: Final = {code: text for code, text in _TABLE.items() if code != 0x0A}


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\x1b``); with ``keep_newlines`` a line
    feed stays a line break (notes that span lines)."""
    return text.translate(_TABLE_KEEP_NEWLINES if keep_newlines else _TABLE)


def plain(value: object, style: str = "", *, keep_newlines: bool = False) -> Text:
    """``value`` (``str()`` of it) as text to draw: never read as markup, control characters escaped (see
    :func:`escape_controls`), in ``style`` (a Rich style such as ``"bold"``; "" for none)."""
    return Text(escape_controls(str(value), keep_newlines=keep_newlines), style=style, end="")


__all__ = ["escape_controls", "plain"]
