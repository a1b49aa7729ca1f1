"""C2SP transparency-log checkpoints, signed by the relay, cosigned by witnesses.

A checkpoint (https://c2sp.org/tlog-checkpoint, §Note text) is the text of a
signed note::

    <origin>                       the log's identity, here also its key name
    <tree size>                    ASCII decimal, no leading zero (0 if empty)
    <root hash>                    base64 of the RFC 6962 root at that size
    <extension line>*              optional, non-empty, opaque

The relay signs it as a signed note with its Ed25519 key, whose key name is
the origin (§Signatures: "SHOULD match"; securechan requires it, so a
signature by one log's key cannot vouch for another log's checkpoint).
Witnesses add tlog-cosignature v1 signatures (type 0x04, timestamped) over
the same note text; clients ignore signatures from keys they do not know.

Stricter than the spec, on purpose: sizes are at most 2**64 - 1 (every size
field we exchange is a u64); a size-0 checkpoint must carry SHA-256 of the
empty string (RFC 9162 §2.1.1), the only root an empty tree has; the origin
must be a valid key name; at most :data:`MAX_EXTENSION_LINES` extension lines.
Parsing raises :class:`~securechan.errors.MalformedInput`; verification
raises :class:`~securechan.errors.BadSignature` or
:class:`~securechan.errors.VerificationFailed`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from securechan.audit.merkle import EMPTY_ROOT, HASH_SIZE, MAX_TREE_SIZE
from securechan.audit.note import (
    MAX_NOTE_BYTES,
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    SIG_MLDSA44_COSIGNATURE,
    NoteSignature,
    NoteSigner,
    SignedNote,
    VerifierKey,
    add_signatures,
    is_valid_key_name,
    open_note,
    sign_note,
)
from securechan.errors import BadSignature, MalformedInput, VerificationFailed
from securechan.primitives import Ed25519SigningKey

__all__ = [
    "MAX_EXTENSION_LINES",
    "Checkpoint",
    "Cosignature",
    "CosignedCheckpoint",
    "add_cosignature",
    "cosign_checkpoint",
    "open_checkpoint",
    "open_cosigned_checkpoint",
    "sign_checkpoint",
]

MAX_EXTENSION_LINES = 16
_COSIGNER_TYPES = (SIG_COSIGNATURE_V1, SIG_MLDSA44_COSIGNATURE)
# ASCII digits only: int() would also take other scripts' digits and "1_0".
_SIZE = re.compile("0|[1-9][0-9]{0,19}")
_CONTROL = re.compile("[\x00-\x1f]")


def _b64decode_hash(text: str) -> bytes | None:
    """A 32-byte hash in canonical padded base64, or ``None``."""
    if not re.fullmatch("[A-Za-z0-9+/]{43}=", text):
        return None
    raw = base64.b64decode(text, validate=True)
    return raw if base64.b64encode(raw).decode() == text else None


def _problem(origin: str, size: int, root_hash: bytes, extensions: tuple[str, ...]) -> str | None:
    """Why these fields do not make a checkpoint, or ``None``."""
    if not is_valid_key_name(origin):
        return "the origin must be a valid key name"
    if type(size) is not int or not 0 <= size <= MAX_TREE_SIZE:
        return "the tree size is an integer in 0 .. 2**64 - 1"
    if type(root_hash) is not bytes or len(root_hash) != HASH_SIZE:
        return "the root hash is 32 bytes"
    if size == 0 and root_hash != EMPTY_ROOT:
        return "an empty tree's root is SHA-256 of the empty string"
    if not isinstance(extensions, tuple) or len(extensions) > MAX_EXTENSION_LINES:
        return "too many extension lines"
    for line in extensions:
        if not isinstance(line, str) or not line or _CONTROL.search(line):
            return "extension lines are non-empty, with no control character"
        if any("\ud800" <= c <= "\udfff" for c in line):
            return "extension lines are valid Unicode"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A log's tree head at one size: origin, size, RFC 6962 root, extensions."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _problem(self.origin, self.size, self.root_hash, self.extensions)
        if problem:
            raise ValueError(problem)

    def to_text(self) -> str:
        """The note text (tlog-checkpoint §Note text), ending in a newline."""
        root = base64.b64encode(self.root_hash).decode()
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: bytes | str) -> Checkpoint:
        """Parse a checkpoint body strictly (the note text, not a signed note)."""
        if isinstance(text, bytes):
            if len(text) > MAX_NOTE_BYTES:
                raise MalformedInput("checkpoint too long")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedInput("a checkpoint is UTF-8") from None
        if not isinstance(text, str) or len(text) > MAX_NOTE_BYTES:
            raise MalformedInput("malformed checkpoint")
        if not text.endswith("\n"):
            raise MalformedInput("a checkpoint ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedInput("a checkpoint has at least three lines")
        origin, size_text, root_text, *extensions = lines
        if not _SIZE.fullmatch(size_text):
            raise MalformedInput("malformed tree size")
        root = _b64decode_hash(root_text)
        if root is None:
            raise MalformedInput("malformed root hash")
        size = int(size_text)
        problem = _problem(origin, size, root, tuple(extensions))
        if problem:
            raise MalformedInput(problem)
        return cls(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))


def sign_checkpoint(key: Ed25519SigningKey, name: str, checkpoint: Checkpoint) -> str:
    """The checkpoint as a signed note by the log key ``name`` (= its origin)."""
    if name != checkpoint.origin:
        raise ValueError("the log's key name must be the checkpoint's origin")
    return sign_note(checkpoint.to_text(), [NoteSigner(name, key)])


def _log_key(verifier: VerifierKey) -> None:
    if not isinstance(verifier, VerifierKey) or verifier.sig_type != SIG_ED25519:
        raise ValueError("a log's verifier key is an Ed25519 (type 0x01) key")


def open_checkpoint(note: bytes | str, verifier: VerifierKey) -> Checkpoint:
    """Verify the log's signature on a checkpoint note, then parse its body.

    Other signatures (cosignatures, other keys) are ignored. Raises
    :class:`MalformedInput`, :class:`BadSignature`, or
    :class:`VerificationFailed` if the origin is not the key's name.
    """
    _log_key(verifier)
    opened = open_note(note, [verifier])
    checkpoint = Checkpoint.from_text(opened.text)
    if checkpoint.origin != verifier.name:
        raise VerificationFailed("the checkpoint's origin is not its log key's name")
    return checkpoint


def cosign_checkpoint(
    key: Ed25519SigningKey, name: str, checkpoint: Checkpoint, *, timestamp: int
) -> str:
    """A witness's tlog-cosignature v1 line over ``checkpoint``, at ``timestamp``.

    The caller (the witness) must first have verified the log's signature and
    consistency with what it cosigned before (c2sp.org/tlog-witness).
    Returns one signature line, as the witness's ``add-checkpoint`` answers.
    """
    signer = NoteSigner(name, key, sig_type=SIG_COSIGNATURE_V1)
    return signer.sign(checkpoint.to_text(), timestamp=timestamp).to_line()


def add_cosignature(note: bytes | str, line: str, cosigner: VerifierKey) -> str:
    """The note with a verified cosignature line by ``cosigner`` added.

    ``line`` is one signature line (with or without its newline). It must be by
    ``cosigner`` and verify over the note's text; a previous cosignature by the
    same key is replaced. Raises :class:`MalformedInput` or :class:`BadSignature`.
    """
    if not isinstance(cosigner, VerifierKey) or cosigner.sig_type != SIG_COSIGNATURE_V1:
        raise ValueError("a cosigner key is a type 0x04 key")
    if not isinstance(line, str) or len(line) > MAX_NOTE_BYTES:
        raise MalformedInput("malformed signature line")
    sig = NoteSignature.from_line(line.removesuffix("\n"))
    if (sig.name, sig.key_id) != (cosigner.name, cosigner.key_id):
        raise BadSignature("the cosignature is not by this cosigner")
    text = SignedNote.from_text_unverified(note).text
    cosigner.verify(text.encode(), sig.signature)
    return add_signatures(note, [sig])


@dataclass(frozen=True, slots=True, kw_only=True)
class Cosignature:
    """A verified cosignature: who, and the time it states (POSIX seconds)."""

    cosigner: VerifierKey
    timestamp: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CosignedCheckpoint:
    """A checkpoint with the log's signature and the cosignatures that verified."""

    checkpoint: Checkpoint
    cosignatures: tuple[Cosignature, ...]


def open_cosigned_checkpoint(
    note: bytes | str,
    log: VerifierKey,
    cosigners: Sequence[VerifierKey],
    *,
    required: int,
    now: int | None = None,
    max_skew: int = 300,
) -> CosignedCheckpoint:
    """Verify a checkpoint's log signature and at least ``required`` cosignatures.

    Cosignatures from keys not in ``cosigners`` are ignored; one that is from a
    listed key but fails to verify rejects the note. A witness's Ed25519 (type
    0x04) and ML-DSA-44 (type 0x06) keys are two cosigners: a policy that
    lists the ML-DSA-44 key requires the post-quantum cosignature. With ``now``, a
    cosignature dated more than ``max_skew`` seconds ahead is not counted
    (tlog-cosignature: verifiers MAY reject future timestamps). Raises
    :class:`MalformedInput`, :class:`BadSignature`, or
    :class:`VerificationFailed` when the quorum is not met.
    """
    _log_key(log)
    if any(not isinstance(c, VerifierKey) or c.sig_type not in _COSIGNER_TYPES for c in cosigners):
        raise ValueError("cosigner keys are type 0x04 (Ed25519) or 0x06 (ML-DSA-44) keys")
    if type(required) is not int or not 0 <= required <= len(cosigners):
        raise ValueError("required is between 0 and the number of cosigners")
    opened = open_note(note, [log, *cosigners])
    if opened.verified_by(log) is None:
        raise BadSignature("the checkpoint is not signed by its log")
    checkpoint = Checkpoint.from_text(opened.text)
    if checkpoint.origin != log.name:
        raise VerificationFailed("the checkpoint's origin is not its log key's name")
    cosignatures = tuple(
        Cosignature(cosigner=sig.key, timestamp=sig.timestamp)
        for sig in opened.verified
        if sig.timestamp is not None and (now is None or sig.timestamp <= now + max_skew)
    )
    if len(cosignatures) < required:
        raise VerificationFailed("the checkpoint lacks the cosignatures policy requires")
    return CosignedCheckpoint(checkpoint=checkpoint, cosignatures=cosignatures)
