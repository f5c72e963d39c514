"""Text from outside (file names, FTP arguments) made safe to put in a log line."""

from __future__ import annotations

import unicodedata

# Control characters (Cc), format characters such as the bidi overrides U+202E and
# U+2066-2069 (Cf), line and paragraph separators (Zl, Zp), unassigned and surrogates
# (Cn, Cs: names decoded with surrogateescape) and private use (Co).
_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cn", "Cs", "Co"}


def escaped(text: str) -> str:
    """``text`` with every character that could split a line, reorder it or hide
    itself written as a Python escape (``\\n``, ``\\x00``, ``\\u202e``); a backslash is
    doubled, so what is shown reads back unambiguously."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == " " or unicodedata.category(char) not in _HIDDEN:
            out.append(char)
        else:
            out.append(repr(char)[1:-1] if char.isascii() else _code(char))
    return "".join(out)


def _code(char: str) -> str:
    point = ord(char)
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"
