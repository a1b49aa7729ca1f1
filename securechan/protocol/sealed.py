"""Protocol state at rest: encrypted, bound to what it is, and rollback-checked.

Session state, prekey stores and replay guards hold secrets (ratchet keys,
prekey seeds). They are stored only as a ``SealedState`` record
(``docs/PROTOCOL.md`` §16)::

    header = (kind, object id, generation)
    sealed = XChaCha20-Poly1305(storage_key, random nonce, state, aad = header)

The storage key is derived from the identity's secret (see
:meth:`securechan.identity.Identity.storage_key`), so it is as safe as the key
file. The header is authenticated: a sealed session cannot be passed off as
another session, as a prekey store, or as another generation.

**Rollback.** Every change of a session increments its generation. The
caller keeps the highest generation it has used *somewhere the state file
does not live* (``state.gen``, in the client: ``client/generations.py``) and
compares: an older copy is rolled back (:class:`RolledBack`). An attacker who
rolls back the state *and* that record together is not caught locally; the
peer catches it instead, because a rolled-back sender reuses ratchet
positions, which the peer's client reports (``PeerRolledBack``).
Whatever is detected, a rolled-back sender never reuses an AEAD key and
nonce (the ratchet's reuse guard, ``docs/PROTOCOL.md`` §13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from securechan import wire
from securechan.errors import MalformedInput, RolledBack, VerificationFailed
from securechan.primitives import aead_decrypt, aead_encrypt

__all__ = ["open_state", "seal_state"]

# "handshake": a session's transcript and initiator signature, kept for statements.
KINDS = frozenset({"session", "prekeys", "replay-guard", "registration", "handshake"})


@wire.record(0x0090, "SealedStateHeader")
@dataclass(frozen=True, slots=True, kw_only=True)
class _StateHeader(wire.Record):
    # Bound as associated data: a blob opens only as its own object's state.
    kind: Annotated[str, wire.text(1, max_len=32)]
    object_id: Annotated[bytes, wire.bytes_(2, max_len=64)]
    generation: Annotated[int, wire.uint(3)]


@wire.record(0x0091, "SealedState")
@dataclass(frozen=True, slots=True, kw_only=True)
class _Sealed(wire.Record):
    # The header stays as its exact bytes: they are the associated data.
    header: Annotated[bytes, wire.nested(1, max_len=256, of=_StateHeader)]
    sealed: Annotated[bytes, wire.bytes_(2, max_len=64 << 20)]


_HEADER = wire.schema_of(_StateHeader)
_SEALED = wire.schema_of(_Sealed)


def seal_state(
    storage_key: bytes, data: bytes, *, kind: str, object_id: bytes, generation: int
) -> bytes:
    """Encrypt ``data`` (a state's ``to_bytes()``) for storage."""
    if kind not in KINDS:
        raise ValueError(f"unknown state kind {kind!r}")
    header = _StateHeader(kind=kind, object_id=object_id, generation=generation).to_bytes()
    return _Sealed(header=header, sealed=aead_encrypt(storage_key, data, header)).to_bytes()


def open_state(
    storage_key: bytes, blob: bytes, *, kind: str, object_id: bytes, min_generation: int = 0
) -> tuple[int, bytes]:
    """Decrypt a sealed state; return ``(generation, data)``.

    Raises :class:`MalformedInput` for a blob that does not parse,
    :class:`VerificationFailed` if it was altered, sealed under another key,
    or is another object's state, and :class:`RolledBack` if its generation is
    below ``min_generation``. Authentication comes before anything is parsed.
    """
    rec = _Sealed.from_bytes(blob)
    header = _StateHeader.from_bytes(rec.header)
    try:
        data = aead_decrypt(storage_key, rec.sealed, rec.header)
    except VerificationFailed:
        raise VerificationFailed("the stored state was altered or is not ours") from None
    if header.kind != kind or header.object_id != object_id:
        raise VerificationFailed("the stored state belongs to another object")
    if header.generation < min_generation:
        raise RolledBack(
            f"stored {kind} state is generation {header.generation}, "
            f"but generation {min_generation} was already used (a rollback)"
        )
    if not isinstance(data, bytes):
        raise MalformedInput("bad state")  # unreachable
    return header.generation, data
