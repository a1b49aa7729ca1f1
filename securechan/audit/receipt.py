"""Relay receipts: proof that the relay's transparency log holds an envelope.

``docs/AUDIT.md`` ("Relay transparency log") is the normative text.

**Leaf.** The relay logs every envelope it accepts as one leaf of its RFC 6962
/ RFC 9162 tree, with leaf data::

    "securechan/v1/envelope" || SHA-256(envelope)          (22 + 32 bytes)

and so leaf hash ``SHA-256(0x00 || leaf data)``. Both parts have a fixed
length, so no separator is needed. The sender computes the leaf from the
envelope bytes it posted, without the relay's help, and a receipt reveals
nothing of the envelope beyond its hash; the context string keeps an envelope
leaf from ever being read as any other kind of leaf or hash.

**Receipt.** The answer to a send carries ``leaf_index``, a ``checkpoint`` (a
C2SP signed note by the relay's log key, possibly with witness cosignatures)
whose tree includes the leaf, and the RFC 9162 ``inclusion_proof`` of the leaf
in that tree, hashes leaf side first. In JSON the hashes are standard padded
base64 (RFC 4648 §4), the encoding of C2SP checkpoints and tlog-witness.

:func:`verify_receipt` checks one, in this order: the log's signature on the
checkpoint (and that its origin is the log key's name), then the leaf index
against the tree size, then the inclusion proof from the envelope's own leaf
to the checkpoint's root. Parsing raises
:class:`~securechan.errors.MalformedInput`; verification raises
:class:`~securechan.errors.BadSignature`,
:class:`~securechan.errors.ProofFailed` or
:class:`~securechan.errors.VerificationFailed`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from securechan import strict_json
from securechan.audit.checkpoint import Checkpoint, open_checkpoint
from securechan.audit.merkle import HASH_SIZE, MAX_PROOF_HASHES, MAX_TREE_SIZE, verify_inclusion
from securechan.audit.merkle import leaf_hash as _leaf_hash
from securechan.audit.note import MAX_NOTE_BYTES, VerifierKey
from securechan.errors import MalformedInput, ProofFailed
from securechan.primitives import sha256

__all__ = [
    "ENVELOPE_LEAF_CONTEXT",
    "Receipt",
    "decode_hashes",
    "encode_hashes",
    "envelope_leaf",
    "envelope_leaf_hash",
    "verify_receipt",
]

ENVELOPE_LEAF_CONTEXT = b"securechan/v1/envelope"


def envelope_leaf(envelope: bytes) -> bytes:
    """The leaf data of one envelope: the context string, then SHA-256 of it."""
    if not isinstance(envelope, bytes):
        raise TypeError("an envelope is bytes")
    return ENVELOPE_LEAF_CONTEXT + sha256(envelope)


def envelope_leaf_hash(envelope: bytes) -> bytes:
    """The RFC 6962 leaf hash of one envelope's leaf: what the tree stores."""
    return _leaf_hash(envelope_leaf(envelope))


def encode_hashes(hashes: Sequence[bytes]) -> list[str]:
    """Proof hashes as standard padded base64 strings (RFC 4648 §4)."""
    return [base64.b64encode(h).decode("ascii") for h in hashes]


def decode_hashes(items: Any) -> tuple[bytes, ...]:
    """A JSON list of base64 hashes back to bytes, strictly; ``MalformedInput``.

    Each item must be the canonical padded base64 of exactly 32 bytes, and a
    list longer than any proof can be is refused before it is decoded.
    """
    if not isinstance(items, list) or len(items) > MAX_PROOF_HASHES:
        raise MalformedInput("proof hashes are a list of at most 65 base64 strings")
    out: list[bytes] = []
    for item in items:
        if not isinstance(item, str) or len(item) != 44:
            raise MalformedInput("a proof hash is 32 bytes in base64")
        try:
            raw = binascii.a2b_base64(item.encode("ascii"), strict_mode=True)
        except (UnicodeEncodeError, binascii.Error):
            raise MalformedInput("a proof hash is 32 bytes in base64") from None
        if len(raw) != HASH_SIZE or base64.b64encode(raw).decode("ascii") != item:
            raise MalformedInput("a proof hash is 32 bytes in canonical base64")
        out.append(raw)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """Where the relay's log holds one envelope, as the relay answered: unverified."""

    leaf_index: int
    checkpoint: str
    inclusion_proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if type(self.leaf_index) is not int or not 0 <= self.leaf_index < MAX_TREE_SIZE:
            raise ValueError("a leaf index is an integer in 0 .. 2**64 - 2")
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ValueError("a receipt's checkpoint is the signed note's text")
        if not isinstance(self.inclusion_proof, tuple) or any(
            type(h) is not bytes or len(h) != HASH_SIZE for h in self.inclusion_proof
        ):
            raise ValueError("an inclusion proof is a tuple of 32-byte hashes")

    def to_json(self) -> dict[str, Any]:
        """``{"leaf_index", "checkpoint", "inclusion_proof": [base64, ...]}``."""
        return {
            "leaf_index": self.leaf_index,
            "checkpoint": self.checkpoint,
            "inclusion_proof": encode_hashes(self.inclusion_proof),
        }

    @classmethod
    def from_json_text(cls, text: str | bytes) -> Receipt:
        """Parse a receipt stored as JSON text (strictly: no duplicate
        names, UTF-8 only, bounded); ``MalformedInput``."""
        data = strict_json.loads(text, max_size=4 * MAX_NOTE_BYTES, what="a stored receipt")
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        """Parse the JSON object of a send reply's ``receipt``; ``MalformedInput``."""
        if not isinstance(data, dict) or set(data) != {
            "leaf_index",
            "checkpoint",
            "inclusion_proof",
        }:
            raise MalformedInput("a receipt has leaf_index, checkpoint and inclusion_proof")
        index, note = data["leaf_index"], data["checkpoint"]
        if type(index) is not int or not 0 <= index < MAX_TREE_SIZE:
            raise MalformedInput("malformed leaf index")
        if not isinstance(note, str) or not note or len(note) > MAX_NOTE_BYTES:
            raise MalformedInput("malformed checkpoint")
        return cls(
            leaf_index=index,
            checkpoint=note,
            inclusion_proof=decode_hashes(data["inclusion_proof"]),
        )


def verify_receipt(receipt: Receipt, envelope: bytes, log_key: VerifierKey) -> Checkpoint:
    """Check that ``receipt`` proves ``envelope`` is in the log of ``log_key``.

    Returns the verified checkpoint (its size and root are what the receipt
    commits the relay to). Steps: (1) verify the checkpoint note's signature
    by ``log_key`` (cosignatures are ignored here: witness policy is the
    caller's), and that its origin is the key's name; (2) the leaf index must
    be below the checkpoint's size; (3) recompute the leaf from ``envelope``
    and verify the inclusion proof to the checkpoint's root.
    """
    if not isinstance(receipt, Receipt):
        raise TypeError("receipt must be a Receipt")
    checkpoint = open_checkpoint(receipt.checkpoint, log_key)
    if receipt.leaf_index >= checkpoint.size:
        raise ProofFailed("the leaf index is beyond the checkpoint's tree")
    verify_inclusion(
        envelope_leaf_hash(envelope),
        receipt.leaf_index,
        checkpoint.size,
        receipt.inclusion_proof,
        checkpoint.root_hash,
    )
    return checkpoint
