"""Reading a text argument from a file or standard input (standard library
only: the fast path through the agent uses it too)."""

from __future__ import annotations

import os

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

__all__ = ["MAX_TEXT", "read_text"]

MAX_TEXT = 1024 * 1024


def read_text(source: Path | BinaryIO, what: str) -> str:
    """Read at most 1 MiB of UTF-8 text from a path or a binary file."""
    if isinstance(source, os.PathLike):
        with open(source, "rb") as f:
            raw = f.read(MAX_TEXT + 1)
    else:
        raw = source.read(MAX_TEXT + 1)
    if len(raw) > MAX_TEXT:
        from securechan.errors import MalformedInput

        raise MalformedInput(f"{what} is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        from securechan.errors import MalformedInput

        raise MalformedInput(f"{what} is not UTF-8 text") from None
