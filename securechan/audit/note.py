"""C2SP signed notes with Ed25519 signatures and timestamped cosignatures.

Formats (https://c2sp.org/signed-note and https://c2sp.org/tlog-cosignature):

* A signed note is UTF-8 text with no control character but newline: the note
  text (ending in a newline), one blank line, then one or more signature
  lines ``"— " <key name> " " base64(key ID (4) || signature) "\\n"`` (em dash
  U+2014, then a space). The text is split from the signatures at the *last*
  blank line.
* Key names are non-empty and hold no Unicode space and no ``+``.
* ``key ID = SHA-256(name || 0x0A || type || public key)[:4]``, with type
  ``0x01`` for an Ed25519 note signature over the note text, and ``0x04`` for a
  tlog-cosignature v1: an Ed25519 signature over
  ``"cosignature/v1\\ntime <T>\\n" || note text`` whose signature bytes are
  ``timestamp T (u64, big-endian) || Ed25519 signature (64)``.
* ``0x06`` is a tlog-cosignature over a checkpoint by an ML-DSA-44 key (FIPS
  204, 1312-byte public key): its signature bytes are ``timestamp T (u64,
  big-endian) || ML-DSA-44 signature (2420)`` over the ``cosigned_message``
  ``"subtree/v1\n\0" || u8 len || cosigner name || u64 T || u8 len || origin
  || u64 0 || u64 size || root hash`` (tlog-cosignature §ML-DSA-44 signed
  message): the first three lines of the note text, not the text, are signed.
* A verifier key is ``<name>+<key ID, 8 lowercase hex>+base64(type || public
  key)``; a signer key is ``PRIVATE+KEY+<name>+<key ID>+base64(type || seed)``
  (the forms of golang.org/x/mod/sumdb/note, extended to type 0x04).

Verification (signed-note §Signatures): signatures from unknown keys, those
whose (name, key ID) match no configured key, are ignored but kept; a
signature from a known key that fails rejects the whole note; a note with no
verified signature from a known key is rejected. All parsing is strict: sizes
and signature counts are bounded, base64 must be canonical, and two signatures
with the same (name, key ID) make a note malformed. Parsers raise only
:class:`~securechan.errors.MalformedInput`; verification only
:class:`~securechan.errors.BadSignature`.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from securechan.errors import BadSignature, MalformedInput
from securechan.primitives import (
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    MLDSA44_PUBLIC_KEY_SIZE,
    MLDSA44_SIGNATURE_SIZE,
    SEED_SIZE,
    Ed25519SigningKey,
    MlDsa44SigningKey,
    check_ed25519_public_key,
    check_mldsa44_public_key,
    ed25519_verify,
    hkdf_sha256,
    mldsa44_verify,
    sha256,
)

__all__ = [
    "COSIGNATURE_SIZE",
    "KEY_ID_SIZE",
    "MAX_NAME_BYTES",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "MAX_TIMESTAMP",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "SIG_MLDSA44_COSIGNATURE",
    "NoteSignature",
    "NoteSigner",
    "OpenedNote",
    "SignedNote",
    "VerifiedSignature",
    "VerifierKey",
    "add_signatures",
    "check_note_text",
    "cosignature_message",
    "is_valid_key_name",
    "keep_signatures",
    "key_id",
    "mldsa44_companion",
    "mldsa44_cosigned_message",
    "open_note",
    "sign_note",
]

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
SIG_MLDSA44_COSIGNATURE = 0x06
_TYPES = (SIG_ED25519, SIG_COSIGNATURE_V1, SIG_MLDSA44_COSIGNATURE)
_KEY_SIZES = {
    SIG_ED25519: ED25519_PUBLIC_KEY_SIZE,
    SIG_COSIGNATURE_V1: ED25519_PUBLIC_KEY_SIZE,
    SIG_MLDSA44_COSIGNATURE: MLDSA44_PUBLIC_KEY_SIZE,
}

KEY_ID_SIZE = 4
COSIGNATURE_SIZE = 8 + ED25519_SIGNATURE_SIZE
MLDSA44_COSIGNATURE_SIZE = 8 + MLDSA44_SIGNATURE_SIZE
MAX_TIMESTAMP = (1 << 63) - 1  # tlog-cosignature: "MUST NOT exceed 2^63 - 1"

# The spec asks verifiers to accept at least 16 signatures; Go's note package
# stops at 100. 64 KiB holds 100 Ed25519 lines and a checkpoint with room.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 64 * 1024
MAX_NAME_BYTES = 255

_DASH = "\u2014 "
_PRIVATE = "PRIVATE+KEY+"
_COSIG_HEADER = b"cosignature/v1\ntime "
_SUBTREE_LABEL = b"subtree/v1\n\x00"
_SIZE_LINE = re.compile("0|[1-9][0-9]{0,19}")
_ROOT_LINE = re.compile("[A-Za-z0-9+/]{43}=")
# The longest verifier key: name, "+", 8 hex, "+", base64 of type || 1312 bytes.
_MAX_VKEY = MAX_NAME_BYTES + 10 + 4 * ((1 + MLDSA44_PUBLIC_KEY_SIZE + 2) // 3)
# Control characters below U+0020 other than newline (signed-note §Format).
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
# The Unicode White_Space property, the set Go's unicode.IsSpace tests.
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_HEX8 = re.compile("[0-9a-f]{8}")


def is_valid_key_name(name: str) -> bool:
    """A key name: non-empty, no Unicode space, no ``+``, no control, short."""
    return (
        isinstance(name, str)
        and 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
        and "+" not in name
        and not any(c in _SPACES or c.isspace() for c in name)
        and not _CONTROL.search(name)
        and not any("\ud800" <= c <= "\udfff" for c in name)
    )


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` (signed-note §Signatures)."""
    return sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key)[:KEY_ID_SIZE]


def _b64decode(text: str) -> bytes:
    """Standard base64 (RFC 4648 §4), padded and canonical, or MalformedInput."""
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise MalformedInput("invalid base64") from None
    # strict_mode still accepts non-zero bits after the last symbol; a second
    # spelling of the same bytes would make signed text malleable.
    if base64.b64encode(raw).decode() != text:
        raise MalformedInput("non-canonical base64")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """What a tlog-cosignature v1 signs (tlog-cosignature §Ed25519 signed message)."""
    return _COSIG_HEADER + str(timestamp).encode() + b"\n" + text


def mldsa44_cosigned_message(cosigner: str, timestamp: int, text: bytes) -> bytes:
    """What a type 0x06 cosignature signs over a checkpoint note ``text``
    (tlog-cosignature §ML-DSA-44 signed message, start 0, end = the size).

    Raises ``ValueError`` if ``text`` does not start like a checkpoint
    (origin, decimal size, base64 root) or a name is over 255 bytes.
    """
    lines = text.split(b"\n", 3)
    if len(lines) < 4:
        raise ValueError("not a checkpoint")
    _origin, size_line, root_line = (line.decode("utf-8", "replace") for line in lines[:3])
    if not _SIZE_LINE.fullmatch(size_line) or not _ROOT_LINE.fullmatch(root_line):
        raise ValueError("not a checkpoint")
    size, root = int(size_line), base64.b64decode(root_line)
    name, log = cosigner.encode(), lines[0]
    if not 0 < len(name) < 256 or not 0 < len(log) < 256 or size >= 1 << 64:
        raise ValueError("not a checkpoint")
    return (
        _SUBTREE_LABEL
        + bytes([len(name)])
        + name
        + struct.pack(">Q", timestamp)
        + bytes([len(log)])
        + log
        + struct.pack(">QQ", 0, size)
        + root
    )


def check_note_text(text: str) -> None:
    """Raise ``ValueError`` unless ``text`` can be signed as a note text."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise ValueError("a note text ends with a newline")
    if _CONTROL.search(text) or any("\ud800" <= c <= "\udfff" for c in text):
        raise ValueError("a note text holds no control character but newline")
    if len(text.encode()) > MAX_NOTE_BYTES:
        raise ValueError("note text too long")


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierKey:
    """A public key that may verify note signatures of one name and type."""

    name: str
    sig_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise ValueError("invalid key name")
        if self.sig_type not in _TYPES:
            raise ValueError("signature type must be 0x01, 0x04 or 0x06")
        size = _KEY_SIZES[self.sig_type]
        if type(self.public_key) is not bytes or len(self.public_key) != size:
            raise ValueError(f"a type {self.sig_type:#04x} public key is {size} bytes")

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        return key_id(self.name, self.sig_type, self.public_key)

    def to_text(self) -> str:
        """``<name>+<key ID hex>+base64(type || public key)``."""
        raw = bytes([self.sig_type]) + self.public_key
        return f"{self.name}+{self.key_id.hex()}+{_b64(raw)}"

    @classmethod
    def from_text(cls, text: str) -> VerifierKey:
        """Parse the text form strictly; the key ID must match the key."""
        if not isinstance(text, str) or len(text) > _MAX_VKEY:
            raise MalformedInput("malformed verifier key")
        # Names hold no "+" and IDs are hex, but base64 may: split twice only.
        parts = text.split("+", 2)
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            raise MalformedInput("malformed verifier key")
        name, hex_id, key64 = parts
        raw = _b64decode(key64)
        if not is_valid_key_name(name) or not raw or raw[0] not in _TYPES:
            raise MalformedInput("malformed verifier key or unknown key type")
        if len(raw) != 1 + _KEY_SIZES[raw[0]]:
            raise MalformedInput("malformed verifier key")
        if raw[0] == SIG_MLDSA44_COSIGNATURE:
            check_mldsa44_public_key(raw[1:])
        else:
            check_ed25519_public_key(raw[1:])
        key = cls(name=name, sig_type=raw[0], public_key=raw[1:])
        if key.key_id.hex() != hex_id:
            raise MalformedInput("verifier key ID does not match the key")
        return key

    def verify(self, text: bytes, signature: bytes) -> int | None:
        """Verify ``signature`` (the bytes after the key ID) over note ``text``.

        Returns the cosignature's timestamp for types 0x04 and 0x06, ``None``
        for 0x01. Raises :class:`BadSignature`.
        """
        if self.sig_type == SIG_ED25519:
            ed25519_verify(self.public_key, signature, text)
            return None
        if self.sig_type == SIG_MLDSA44_COSIGNATURE:
            if len(signature) != MLDSA44_COSIGNATURE_SIZE:
                raise BadSignature("malformed cosignature")
            (stamp,) = struct.unpack(">Q", signature[:8])
            try:
                message = mldsa44_cosigned_message(self.name, stamp, text)
            except ValueError:
                raise BadSignature("an ML-DSA-44 cosignature signs a checkpoint") from None
            if stamp > MAX_TIMESTAMP:
                raise BadSignature("malformed cosignature")
            mldsa44_verify(self.public_key, signature[8:], message)
            return int(stamp)
        if len(signature) != COSIGNATURE_SIZE:
            raise BadSignature("malformed cosignature")
        (timestamp,) = struct.unpack(">Q", signature[:8])
        if timestamp > MAX_TIMESTAMP:
            raise BadSignature("malformed cosignature")
        ed25519_verify(self.public_key, signature[8:], cosignature_message(text, timestamp))
        return int(timestamp)


class NoteSigner:
    """An Ed25519 key signing notes under a name, as type 0x01 or 0x04, or
    an ML-DSA-44 key cosigning checkpoints as type 0x06."""

    __slots__ = ("_key", "verifier")

    def __init__(
        self,
        name: str,
        key: Ed25519SigningKey | MlDsa44SigningKey,
        *,
        sig_type: int = SIG_ED25519,
    ) -> None:
        if isinstance(key, MlDsa44SigningKey) != (sig_type == SIG_MLDSA44_COSIGNATURE):
            raise ValueError("type 0x06 goes with an ML-DSA-44 key, 0x01 and 0x04 with Ed25519")
        self._key = key
        self.verifier = VerifierKey(name=name, sig_type=sig_type, public_key=key.public)

    def __repr__(self) -> str:
        return f"NoteSigner({self.verifier.to_text()!r}, <secret>)"

    @property
    def name(self) -> str:
        """The key name."""
        return self.verifier.name

    def sign(self, text: str, *, timestamp: int | None = None) -> NoteSignature:
        """Sign note ``text``; types 0x04 and 0x06 need ``timestamp`` (POSIX
        seconds; 0 for a type 0x06 line that states no time)."""
        check_note_text(text)
        message = text.encode()
        if self.verifier.sig_type == SIG_ED25519:
            if timestamp is not None:
                raise ValueError("an Ed25519 note signature has no timestamp")
            sig = self._key.sign(message)
        elif self.verifier.sig_type == SIG_MLDSA44_COSIGNATURE:
            if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
                raise ValueError("a cosignature needs a timestamp in 0 .. 2**63 - 1")
            signed = mldsa44_cosigned_message(self.name, timestamp, message)
            sig = struct.pack(">Q", timestamp) + self._key.sign(signed)
        else:
            if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
                raise ValueError("a cosignature needs a timestamp in 0 .. 2**63 - 1")
            sig = struct.pack(">Q", timestamp)
            sig += self._key.sign(cosignature_message(message, timestamp))
        return NoteSignature(name=self.name, key_id=self.verifier.key_id, signature=sig)

    def to_text_secret(self) -> str:
        """``PRIVATE+KEY+<name>+<key ID>+base64(type || seed)``. Secret."""
        v = self.verifier
        raw = bytes([v.sig_type]) + self._key.seed_bytes_secret()
        return f"{_PRIVATE}{v.name}+{v.key_id.hex()}+{_b64(raw)}"

    @classmethod
    def from_text_secret(cls, text: str) -> NoteSigner:
        """Parse a signer key; its key ID must match the derived public key."""
        # Errors never echo the text: it holds the secret seed.
        if not isinstance(text, str) or not text.startswith(_PRIVATE):
            raise MalformedInput("malformed signer key")
        parts = text[len(_PRIVATE) :].split("+", 2)
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            raise MalformedInput("malformed signer key")
        name, hex_id, key64 = parts
        raw = _b64decode(key64)
        if not is_valid_key_name(name) or len(raw) != 1 + SEED_SIZE or raw[0] not in _TYPES:
            raise MalformedInput("malformed signer key")
        seed = raw[1:]
        key = (
            MlDsa44SigningKey(seed)
            if raw[0] == SIG_MLDSA44_COSIGNATURE
            else Ed25519SigningKey(seed)
        )
        signer = cls(name, key, sig_type=raw[0])
        if signer.verifier.key_id.hex() != hex_id:
            raise MalformedInput("signer key ID does not match the key")
        return signer


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSignature:
    """One signature line, not verified by itself."""

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise ValueError("invalid key name")
        if type(self.key_id) is not bytes or len(self.key_id) != KEY_ID_SIZE:
            raise ValueError("a key ID is 4 bytes")
        if type(self.signature) is not bytes or not self.signature:
            raise ValueError("a signature is non-empty bytes")

    def to_line(self) -> str:
        """``— <name> base64(key ID || signature)`` and a newline."""
        return f"{_DASH}{self.name} {_b64(self.key_id + self.signature)}\n"

    @classmethod
    def from_line(cls, line: str) -> NoteSignature:
        """Parse one signature line, without its newline."""
        if not line.startswith(_DASH):
            raise MalformedInput("malformed signature line")
        name, sep, sig64 = line[len(_DASH) :].partition(" ")
        if not sep or not is_valid_key_name(name):
            raise MalformedInput("malformed signature line")
        raw = _b64decode(sig64)
        if len(raw) <= KEY_ID_SIZE:
            raise MalformedInput("malformed signature line")
        return cls(name=name, key_id=raw[:KEY_ID_SIZE], signature=raw[KEY_ID_SIZE:])


def _decode(data: bytes | str) -> str:
    """The note as text: bounded, valid UTF-8, no control but newline."""
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError:
            raise MalformedInput("a note is valid UTF-8") from None
    if not isinstance(data, bytes):
        raise TypeError("a note is bytes or str")
    if len(data) > MAX_NOTE_BYTES:
        raise MalformedInput("note too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput("a note is valid UTF-8") from None
    if _CONTROL.search(text):
        raise MalformedInput("a note holds no control character but newline")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedNote:
    """A note text and its signature lines, not verified (see :func:`open_note`)."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        check_note_text(self.text)
        if not 0 < len(self.signatures) <= MAX_SIGNATURES:
            raise ValueError("a note has 1 .. 100 signatures")
        ids = {(s.name, s.key_id) for s in self.signatures}
        if len(ids) != len(self.signatures):
            raise ValueError("two signatures by the same key")

    def to_text(self) -> str:
        """The note text, a blank line, then the signature lines."""
        return self.text + "\n" + "".join(s.to_line() for s in self.signatures)

    @classmethod
    def from_text_unverified(cls, data: bytes | str) -> SignedNote:
        """Parse a signed note strictly, verifying nothing (signed-note §Format)."""
        note = _decode(data)
        split = note.rfind("\n\n")
        if split < 0:
            raise MalformedInput("a note needs a blank line before its signatures")
        text, block = note[: split + 1], note[split + 2 :]
        if not block.endswith("\n"):
            raise MalformedInput("a note ends with a signature line")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise MalformedInput("too many signatures")
        sigs = tuple(NoteSignature.from_line(line) for line in lines)
        if len({(s.name, s.key_id) for s in sigs}) != len(sigs):
            # Spec-wise a repeat could be dropped; refusing keeps one spelling
            # per note, so a note cannot be altered without breaking a check.
            raise MalformedInput("two signatures by the same key")
        return cls(text=text, signatures=sigs)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedSignature:
    """A signature that verified: its key, and the time a cosignature states."""

    key: VerifierKey
    timestamp: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedNote:
    """A note with at least one verified signature from a known key."""

    text: str
    verified: tuple[VerifiedSignature, ...]
    unverified: tuple[NoteSignature, ...]

    def verified_by(self, key: VerifierKey) -> VerifiedSignature | None:
        """The verified signature by ``key``, if any."""
        for sig in self.verified:
            if sig.key == key:
                return sig
        return None


def open_note(data: bytes | str, verifiers: Sequence[VerifierKey]) -> OpenedNote:
    """Parse a signed note and verify it against known keys.

    Signatures whose (name, key ID) matches no key in ``verifiers`` are
    ignored (kept in ``unverified``). Raises :class:`MalformedInput` for a
    malformed note, :class:`BadSignature` if a known key's signature fails or
    if no known key signed. ``ValueError`` if two verifiers share a name and ID.
    """
    known: dict[tuple[str, bytes], VerifierKey] = {}
    for v in verifiers:
        if not isinstance(v, VerifierKey):
            raise TypeError("verifiers are VerifierKey")
        if (v.name, v.key_id) in known:
            raise ValueError("two verifiers with the same name and key ID")
        known[(v.name, v.key_id)] = v
    note = SignedNote.from_text_unverified(data)
    message = note.text.encode()
    verified: list[VerifiedSignature] = []
    unverified: list[NoteSignature] = []
    for sig in note.signatures:
        key = known.get((sig.name, sig.key_id))
        if key is None:
            unverified.append(sig)
            continue
        # A known key's bad signature rejects the note (signed-note §Signatures
        # allows it): a log or relay that forwards garbage should be noticed.
        try:
            timestamp = key.verify(message, sig.signature)
        except BadSignature:
            raise BadSignature("a note signature does not verify") from None
        verified.append(VerifiedSignature(key=key, timestamp=timestamp))
    if not verified:
        raise BadSignature("the note has no signature from a known key")
    return OpenedNote(text=note.text, verified=tuple(verified), unverified=tuple(unverified))


def mldsa44_companion(key: Ed25519SigningKey, purpose: str) -> MlDsa44SigningKey:
    """The ML-DSA-44 key that goes with an Ed25519 note key: its seed is
    HKDF-SHA256 (RFC 5869) of the Ed25519 seed, info
    ``"securechan/v1/mldsa44-companion/" || purpose``.

    So a relay or witness key made before ML-DSA gains its post-quantum
    key with no new file. A quantum attacker who solves the Ed25519 public
    key learns the secret scalar, not the seed (RFC 8032 hashes the seed
    with SHA-512 to get it), so the companion key stays out of reach.
    """
    info = b"securechan/v1/mldsa44-companion/" + purpose.encode()
    return MlDsa44SigningKey(
        hkdf_sha256(key.seed_bytes_secret(), salt=b"", info=info, length=SEED_SIZE)
    )


def sign_note(text: str, signers: Sequence[NoteSigner], *, timestamp: int | None = None) -> str:
    """A signed note of ``text`` by each signer (``timestamp`` for cosigners)."""
    if not signers:
        raise ValueError("a note needs at least one signer")
    sigs = tuple(
        s.sign(text, timestamp=timestamp if s.verifier.sig_type != SIG_ED25519 else None)
        for s in signers
    )
    return SignedNote(text=text, signatures=sigs).to_text()


def add_signatures(data: bytes | str, signatures: Sequence[NoteSignature]) -> str:
    """The note with ``signatures`` added, each replacing any by the same key.

    Nothing is verified here; callers verify what they add.
    """
    note = SignedNote.from_text_unverified(data)
    new = {(s.name, s.key_id) for s in signatures}
    if len(new) != len(signatures):
        raise ValueError("two new signatures by the same key")
    kept = [s for s in note.signatures if (s.name, s.key_id) not in new]
    if len(kept) + len(signatures) > MAX_SIGNATURES:
        raise ValueError("too many signatures for one note")
    return SignedNote(text=note.text, signatures=(*kept, *signatures)).to_text()


def keep_signatures(data: bytes | str, keys: Sequence[VerifierKey]) -> str | None:
    """The note with only the signature lines whose (name, key ID) is one of
    ``keys``, or ``None`` if none is. Nothing is verified: dropping lines
    cannot make a note say more than it did."""
    note = SignedNote.from_text_unverified(data)
    wanted = {(k.name, k.key_id) for k in keys}
    kept = tuple(s for s in note.signatures if (s.name, s.key_id) in wanted)
    return SignedNote(text=note.text, signatures=kept).to_text() if kept else None
