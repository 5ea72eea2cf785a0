"""Parsers for untrusted text. `str.isdigit()` is not enough: it accepts "²" (which int()
then rejects) and "٣" (which int() reads as 3)."""

from __future__ import annotations


def parse_count(text: str | None, *, max_digits: int = 18) -> int | None:
    """A non-negative integer written in ASCII digits (at most `max_digits`), else None."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)
