"""Wake-ups between relay processes that share one database: the payload.

When several relay processes share one PostgreSQL database, a send taken by
one process must wake the receivers whose WebSockets are held by another.
The sending transaction commits ``NOTIFY securechan_envelope, '<tag> <seq>
<origin>'`` (:mod:`securechan.relay.pg_pool`); each process listens, and
its push delivery (:mod:`securechan.relay.push`) fetches the envelope
``seq`` of the queue whose tag is ``tag`` and pushes it.

The payload names the queue only by :func:`queue_tag`, a hash of its
receive id under a context string, never the id or any content: whoever
can read the database's notifications learns when some queue got a send,
as the database's own statistics would tell. ``origin`` is a random id of
the sending storage instance, so an instance can ignore its own sends (it
has pushed them already). No psycopg, no aiohttp: both sides import it.
"""

from __future__ import annotations

from typing import Final

from securechan.primitives import sha256

__all__ = ["WAKE_CHANNEL", "format_wake", "parse_wake", "queue_tag"]

WAKE_CHANNEL: Final = "securechan_envelope"
_TAG_CONTEXT: Final = b"securechan/v1/relay-wake-tag"


def queue_tag(rid: bytes) -> str:
    """The name of queue ``rid`` in wake-ups: 16 bytes of a hash, in hex."""
    return sha256(_TAG_CONTEXT + rid)[:16].hex()


def format_wake(rid: bytes, seq: int, origin: str) -> str:
    """The payload announcing envelope ``seq`` of queue ``rid``, sent by ``origin``."""
    return f"{queue_tag(rid)} {seq} {origin}"


def parse_wake(payload: str) -> tuple[str, int, str] | None:
    """``(tag, seq, origin)`` of a wake-up payload; ``None`` if malformed."""
    parts = payload.split(" ")
    if len(parts) != 3 or len(parts[0]) != 32 or not parts[1].isdigit() or len(parts[1]) > 19:
        return None
    return parts[0], int(parts[1]), parts[2]
