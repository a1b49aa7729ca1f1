"""Files: peer-supplied names made safe, chunks reassembled.

A file travels as FileChunk payloads (``protocol/payload.py``: the sender's
``Session.send_file`` cuts it). The receiver keeps each chunk in client.db's
``file_chunks`` table until the last one arrives, then checks the whole
file's size and SHA-512 before showing it.
"""

from __future__ import annotations

from securechan.client.db import ClientDB
from securechan.filenames import sanitize_filename  # moved; kept importable here
from securechan.primitives import sha512
from securechan.protocol.payload import FileChunk

__all__ = ["file_intact", "file_summary", "sanitize_filename", "take_file"]


def take_file(db: ClientDB, conversation: bytes, chunk: FileChunk) -> tuple[int, bytes | None]:
    """Store one received chunk (inside the caller's transaction); return
    how many chunks of its file are held, and when it completes its file,
    take every chunk out and return the joined bytes too (not yet checked:
    :func:`file_intact`); None while chunks are missing."""
    held = db.add_chunk(conversation, chunk.file_id, chunk.index, chunk.data)
    if held != chunk.count:
        return held, None
    return held, b"".join(db.take_chunks(conversation, chunk.file_id))


def file_intact(chunk: FileChunk, data: bytes) -> bool:
    """Whether the joined file has the size and SHA-512 its chunks name."""
    return len(data) == chunk.size and sha512(data) == chunk.sha512


def file_summary(chunk: FileChunk) -> str | None:
    """How the record shows a file: once, at its last chunk."""
    if chunk.index != chunk.count - 1:
        return None
    return f"[file {chunk.name}, {chunk.size} bytes]"
