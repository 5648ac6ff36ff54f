"""Texts cut to a length, for the values that error messages quote."""

from __future__ import annotations

__all__ = ["clipped"]


def clipped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when it was cut.

    Example:
        >>> from afnio_langchain.train._text import clipped
        >>> clipped("short", 10), clipped("a long prompt text", 10)
        ('short', 'a long ...')
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."
