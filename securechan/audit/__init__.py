"""The record: the relay's transparency log and the formats that carry it.

* :mod:`~securechan.audit.merkle`: RFC 6962 / RFC 9162 Merkle tree hashing,
  inclusion and consistency proofs, and their verification.
* :mod:`~securechan.audit.tree`: :class:`TreeStore`, the relay's persistent
  append-only tree in SQLite, with proofs against any past size.
* :mod:`~securechan.audit.note`: C2SP ``signed-note`` (Ed25519, type 0x01) and
  ``tlog-cosignature`` v1 (timestamped Ed25519, type 0x04).
* :mod:`~securechan.audit.checkpoint`: C2SP ``tlog-checkpoint`` bodies, signed
  by the relay and cosigned by witnesses.
"""

from securechan.audit.checkpoint import (
    Checkpoint,
    Cosignature,
    CosignedCheckpoint,
    add_cosignature,
    cosign_checkpoint,
    open_checkpoint,
    open_cosigned_checkpoint,
    sign_checkpoint,
)
from securechan.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MemoryTree,
    leaf_hash,
    node_hash,
    root_from_leaf_data,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from securechan.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    NoteSignature,
    NoteSigner,
    OpenedNote,
    SignedNote,
    VerifiedSignature,
    VerifierKey,
    open_note,
    sign_note,
)
from securechan.audit.tree import TreeStore

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "Checkpoint",
    "Cosignature",
    "CosignedCheckpoint",
    "MemoryTree",
    "NoteSignature",
    "NoteSigner",
    "OpenedNote",
    "SignedNote",
    "TreeStore",
    "VerifiedSignature",
    "VerifierKey",
    "add_cosignature",
    "cosign_checkpoint",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_cosigned_checkpoint",
    "open_note",
    "root_from_leaf_data",
    "root_from_leaf_hashes",
    "sign_checkpoint",
    "sign_note",
    "verify_consistency",
    "verify_inclusion",
]
