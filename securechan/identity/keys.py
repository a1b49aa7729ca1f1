"""Identities: a name bound to a hybrid (ML-DSA-65 + Ed25519) signing key.

A :class:`PublicIdentity` is what a delegation hands to others: name,
creation time, the composite public key and a self-signature over all three
(so a name cannot be re-attached to someone else's key without the key's
consent). Its fingerprint is a hash of the public key alone, so a renamed
contact keeps its fingerprint. An :class:`Identity` adds the private key.

``docs/PROTOCOL.md`` §4-§5 is the normative description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated

from securechan import armor, wire
from securechan.errors import BadSignature, MalformedInput
from securechan.primitives import (
    HYBRID_PUBLIC_KEY_SIZE,
    HYBRID_SIGNATURE_SIZE,
    SEED_SIZE,
    HybridSigningKey,
    HybridVerifyKey,
    hkdf_sha256,
    sha256,
)

__all__ = [
    "CONTEXT_IDENTITY_SELF",
    "Fingerprint",
    "Identity",
    "PublicIdentity",
    "check_name",
]

# Context labels: each signature and hash has its own, so a signature made
# for one purpose is never accepted for another (SECURITY-TESTS: key reuse).
CONTEXT_IDENTITY_SELF = b"securechan/v1/identity-self"
_FINGERPRINT_LABEL = b"securechan/v1/fingerprint"
_STORAGE_KEY_LABEL = b"securechan/v1/storage-key"

NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@wire.record(0x0001, "IdentityClaim")
@dataclass(frozen=True, slots=True, kw_only=True)
class _Claim(wire.Record):
    # What the self-signature covers.
    name: Annotated[str, wire.text(1, max_len=NAME_MAX)]
    created: Annotated[int, wire.uint(2)]
    public_key: Annotated[bytes, wire.bytes_(3, size=HYBRID_PUBLIC_KEY_SIZE)]


@wire.record(0x0002, "PublicIdentity")
@dataclass(frozen=True, slots=True, kw_only=True)
class _PublicRecord(wire.Record):
    claim: Annotated[_Claim, wire.nested(1, max_len=4096)]
    self_signature: Annotated[bytes, wire.bytes_(2, size=HYBRID_SIGNATURE_SIZE)]


@wire.record(0x0003, "SecretIdentity")
@dataclass(frozen=True, slots=True, kw_only=True)
class _SecretRecord(wire.Record):
    # Only for the encrypted keystore; the seeds stay out of repr().
    name: Annotated[str, wire.text(1, max_len=NAME_MAX)]
    created: Annotated[int, wire.uint(2)]
    ed25519_seed: Annotated[bytes, wire.bytes_(3, size=SEED_SIZE)] = field(repr=False)
    mldsa65_seed: Annotated[bytes, wire.bytes_(4, size=SEED_SIZE)] = field(repr=False)
    self_signature: Annotated[bytes, wire.bytes_(5, size=HYBRID_SIGNATURE_SIZE)]


IDENTITY_CLAIM = wire.schema_of(_Claim)
PUBLIC_IDENTITY = wire.schema_of(_PublicRecord)
SECRET_IDENTITY = wire.schema_of(_SecretRecord)

_ARMOR_LABEL = "PUBLIC IDENTITY"
_ARMOR_HEADERS = frozenset({"Name", "Fingerprint"})


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid identity or contact name.

    Names are 1-64 characters of ASCII letters, digits, ``.``, ``_`` and
    ``-``, starting with a letter or digit: safe as a file name, in a
    terminal and in a shell, and free of look-alike Unicode.
    Raises :class:`MalformedInput` otherwise, saying which rule failed.

    Why ASCII only (docs/THREAT-MODEL.md, "A contact passing for another"):
    a name is what a person reads to tell one contact from another, in
    ``receive``'s lines, ``contact list`` and ``verify --from``. Letters of
    other scripts can look the same as these (Cyrillic U+0430 for Latin
    ``a``, Greek U+03BF for ``o``) or be written right to left, so a stranger
    could name an identity to pass for a pinned contact. Telling safe uses of
    a script from look-alikes needs Unicode's script and confusable data
    (UTS #39), which this Python does not carry; so other scripts are refused,
    with the reason, rather than half-checked.
    """
    if not isinstance(name, str):
        raise MalformedInput("a name is text")
    if _NAME.fullmatch(name):
        return name
    rule = "a name is 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
    odd = next((c for c in name if not c.isascii()), None)
    if odd is not None:
        raise MalformedInput(
            f"{rule}: U+{ord(odd):04X} is not ASCII; letters of other scripts are refused "
            "because they can look like these (Cyrillic U+0430 for 'a'), so a contact "
            "could pass for another (docs/THREAT-MODEL.md): use a transliteration"
        )
    if not name or len(name) > 64:
        raise MalformedInput(f"{rule}: this one has {len(name)} characters")
    raise MalformedInput(rule)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """SHA-256 over a labelled public key: 32 bytes, shown as 16 hex groups."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise ValueError("a fingerprint is 32 bytes")

    @classmethod
    def of(cls, key: HybridVerifyKey) -> Fingerprint:
        """The fingerprint of a composite public key."""
        return cls(sha256(_FINGERPRINT_LABEL + b"\x00" + bytes(key)))

    def __bytes__(self) -> bytes:
        return self.digest

    def __str__(self) -> str:
        h = self.digest.hex().upper()
        return " ".join(h[i : i + 4] for i in range(0, len(h), 4))

    @classmethod
    def parse(cls, text: str) -> Fingerprint:
        """Parse the display form (spaces optional, any case)."""
        compact = "".join(text.split())
        if len(compact) != 64 or not re.fullmatch(r"[0-9A-Fa-f]{64}", compact):
            raise MalformedInput("a fingerprint is 64 hexadecimal digits")
        return cls(bytes.fromhex(compact))


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicIdentity:
    """A self-signed public identity. Instances are always verified.

    Build one with :meth:`Identity.public` or parse one with
    :meth:`from_bytes` / :meth:`from_text`, which check the self-signature.
    """

    name: str
    created: int
    public_key: HybridVerifyKey
    self_signature: bytes
    _fingerprint: Fingerprint | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        self.public_key.verify(
            self.self_signature, self._claim_bytes(), context=CONTEXT_IDENTITY_SELF
        )
        # Computed once: sessions read it several times per message.
        object.__setattr__(self, "_fingerprint", Fingerprint.of(self.public_key))

    def _claim(self) -> _Claim:
        return _Claim(name=self.name, created=self.created, public_key=bytes(self.public_key))

    def _claim_bytes(self) -> bytes:
        return self._claim().to_bytes()

    @property
    def fingerprint(self) -> Fingerprint:
        """Hash of the public key (the name is not part of it)."""
        if self._fingerprint is None:  # unreachable: set in __post_init__
            return Fingerprint.of(self.public_key)
        return self._fingerprint

    def verify(self, signature: bytes, message: bytes, *, context: bytes) -> None:
        """Raise :class:`BadSignature` unless this identity signed ``message``."""
        self.public_key.verify(signature, message, context=context)

    def same_key(self, other: PublicIdentity) -> bool:
        """True if both identities hold the same public key (constant time)."""
        return self.public_key == other.public_key

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0002)."""
        return _PublicRecord(claim=self._claim(), self_signature=self.self_signature).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicIdentity:
        """Decode and verify; raise :class:`MalformedInput` or :class:`BadSignature`."""
        outer = _PublicRecord.from_bytes(data)
        claim = outer.claim
        check_name(claim.name)
        key = HybridVerifyKey(claim.public_key)
        try:
            return cls(
                name=claim.name,
                created=claim.created,
                public_key=key,
                self_signature=outer.self_signature,
            )
        except BadSignature:
            raise BadSignature("the identity's self-signature does not verify") from None

    def to_text(self) -> str:
        """The copy-pasteable public identity file (``id export``)."""
        return armor.armor(
            _ARMOR_LABEL,
            self.to_bytes(),
            [("Name", self.name), ("Fingerprint", str(self.fingerprint))],
        )

    @classmethod
    def from_text(cls, text: str) -> PublicIdentity:
        """Parse a public identity file; its headers must agree with its body."""
        block = armor.dearmor(text, _ARMOR_LABEL, allowed_headers=_ARMOR_HEADERS)
        ident = cls.from_bytes(block.body)
        if block.headers.get("Name", ident.name) != ident.name:
            raise MalformedInput("the Name header does not match the signed name")
        fp_header = block.headers.get("Fingerprint")
        if fp_header is not None and Fingerprint.parse(fp_header) != ident.fingerprint:
            raise MalformedInput("the Fingerprint header does not match the key")
        return ident


class Identity:
    """A private identity: name, creation time and hybrid signing key."""

    def __init__(
        self, *, name: str, created: int, key: HybridSigningKey, self_signature: bytes | None = None
    ) -> None:
        self.name = check_name(name)
        if isinstance(created, bool) or not isinstance(created, int) or created < 0:
            raise ValueError("created is a non-negative Unix time")
        self.created = created
        self._key = key
        if self_signature is not None:
            # Pre-populate the cache; PublicIdentity verifies it.
            self.__dict__["public"] = PublicIdentity(
                name=name, created=created, public_key=key.public_key, self_signature=self_signature
            )

    @classmethod
    def generate(cls, name: str, *, now: int) -> Identity:
        """A new identity with a fresh key; ``now`` is the Unix time."""
        return cls(name=name, created=now, key=HybridSigningKey.generate())

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, fingerprint={self.public.fingerprint})"

    @cached_property
    def public(self) -> PublicIdentity:
        """The self-signed public identity (signed once, then cached)."""
        claim = _Claim(
            name=self.name, created=self.created, public_key=bytes(self._key.public_key)
        ).to_bytes()
        sig = self._key.sign(claim, context=CONTEXT_IDENTITY_SELF)
        return PublicIdentity(
            name=self.name,
            created=self.created,
            public_key=self._key.public_key,
            self_signature=sig,
        )

    @property
    def fingerprint(self) -> Fingerprint:
        """The public key's fingerprint."""
        return self.public.fingerprint

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        """A composite signature over ``message`` for ``context``."""
        return self._key.sign(message, context=context)

    def sign_prehashed(self, prehash: bytes, *, context: bytes) -> bytes:
        """A composite signature over a message given by its SHA-512."""
        return self._key.sign_prehashed(prehash, context=context)

    def storage_key(self) -> bytes:
        """A 32-byte key for encrypting this identity's state at rest.

        Derived from the identity's seeds with its own label, so it is exactly
        as protected as the key file and needs no storage of its own.
        """
        ed_seed, mldsa_seed = self._key.seed_bytes_secret()
        return hkdf_sha256(ed_seed + mldsa_seed, salt=bytes(32), info=_STORAGE_KEY_LABEL, length=32)

    def secret_bytes(self) -> bytes:
        """The secret record (seeds included) for the encrypted keystore only."""
        ed_seed, mldsa_seed = self._key.seed_bytes_secret()
        return _SecretRecord(
            name=self.name,
            created=self.created,
            ed25519_seed=ed_seed,
            mldsa65_seed=mldsa_seed,
            self_signature=self.public.self_signature,
        ).to_bytes()

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> Identity:
        """Rebuild from :meth:`secret_bytes`; checks the stored self-signature."""
        rec = _SecretRecord.from_bytes(data)
        key = HybridSigningKey(rec.ed25519_seed, rec.mldsa65_seed)
        return cls(name=rec.name, created=rec.created, key=key, self_signature=rec.self_signature)
