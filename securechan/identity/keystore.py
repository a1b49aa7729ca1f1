"""The home folder and the encrypted key file.

Layout of a home folder (mode 0700; every file 0600)::

    identity.key     the private identity, encrypted under the passphrase
    identity.pub     the public identity file (what ``id export`` prints)
    contacts.bin     the pinned contacts (see contacts.py)
    .lock            held while a command changes the folder

The key file (``docs/PROTOCOL.md`` §6) is armoured text whose body is a
``KeyFile`` record: a header (Argon2id parameters, salt, the public
fingerprint) and the secret record sealed with XChaCha20-Poly1305 under
``Argon2id(passphrase, salt)``, with the header's bytes as associated data.
So any change to the header or the ciphertext fails authentication, and the
secret is parsed only after authentication succeeded. A wrong passphrase and a
damaged file look the same (:class:`BadPassphrase`), as with Fernet's
``InvalidToken``; a file that does not parse is :class:`MalformedInput`; a
file from a newer format is :class:`UnsupportedVersion`.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from securechan import armor, wire
from securechan.errors import (
    BadPassphrase,
    IdentityExists,
    MalformedInput,
    NoIdentity,
    StorageError,
    UsageError,
    VerificationFailed,
)
from securechan.home import default_home
from securechan.identity._files import atomic_write, ensure_private_dir, home_lock, read_bounded
from securechan.identity.contacts import Contacts
from securechan.identity.events import EventKind, EventSink, SecurityEvent, discard
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity
from securechan.primitives import (
    ARGON2_SALT_SIZE,
    KDF_INTERACTIVE,
    KDF_MODERATE,
    KDF_SENSITIVE,
    KdfParams,
    aead_decrypt,
    aead_encrypt,
    argon2id,
    random_bytes,
)

__all__ = ["KDF_PROFILES", "Keystore", "default_home", "passphrase_bytes"]

KEY_FILE = "identity.key"
PUBLIC_FILE = "identity.pub"
_ARMOR_LABEL = "ENCRYPTED SECRET KEY"
_MAX_FILE = 64 * 1024

# Named Argon2id cost settings. "moderate" (libsodium's MODERATE: 3 passes,
# 256 MiB) is the default and above RFC 9106 §4's second recommended option
# (3 passes, 64 MiB). "interactive" (2 passes, 64 MiB) is the floor we accept.
KDF_PROFILES: dict[str, KdfParams] = {
    "interactive": KDF_INTERACTIVE,
    "moderate": KDF_MODERATE,
    "sensitive": KDF_SENSITIVE,
}


@wire.record(0x0010, "KeyFileHeader")
@dataclass(frozen=True, slots=True, kw_only=True)
class _KeyFileHeader(wire.Record):
    kdf: Annotated[str, wire.text(1, max_len=16)]
    opslimit: Annotated[int, wire.uint(2)]
    memlimit: Annotated[int, wire.uint(3)]
    salt: Annotated[bytes, wire.bytes_(4, size=ARGON2_SALT_SIZE)]
    fingerprint: Annotated[bytes, wire.bytes_(5, size=32)]


@wire.record(0x0011, "KeyFile")
@dataclass(frozen=True, slots=True, kw_only=True)
class _KeyFile(wire.Record):
    # The header's exact bytes are the associated data of the sealed secret.
    header: Annotated[bytes, wire.nested(1, max_len=256, of=_KeyFileHeader)]
    sealed: Annotated[bytes, wire.bytes_(2, max_len=8192)]


KEY_FILE_HEADER = wire.schema_of(_KeyFileHeader)
KEY_FILE_SCHEMA = wire.schema_of(_KeyFile)
_KDF_NAME = "argon2id"


@dataclass(frozen=True, slots=True, kw_only=True)
class _SealedKey:
    """A parsed, not yet authenticated key file."""

    name_header: str | None
    header: bytes
    params: KdfParams
    salt: bytes
    fingerprint: Fingerprint
    sealed: bytes


def passphrase_bytes(passphrase: str | bytes) -> bytes:
    """Normalise a passphrase: text is NFC-normalised and UTF-8 encoded.

    NFC makes the same passphrase typed on different keyboards derive the same
    key. Raises :class:`UsageError` for an empty passphrase.
    """
    if isinstance(passphrase, str):
        passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    if not isinstance(passphrase, bytes):
        raise TypeError("a passphrase is str or bytes")
    if not passphrase:
        raise UsageError("the passphrase is empty")
    return passphrase


def _now() -> int:
    return int(time.time())


class Keystore:
    """A securechan home folder: one identity and its contacts.

    ``events`` receives a :class:`SecurityEvent` for each security-relevant
    change; ``clock`` returns the Unix time (injectable for tests).
    """

    def __init__(
        self,
        home: Path | str,
        *,
        events: EventSink = discard,
        clock: Callable[[], int] = _now,
    ) -> None:
        self.home = Path(home)
        self._events = events
        self._clock = clock

    @property
    def key_path(self) -> Path:
        """Path of the encrypted key file."""
        return self.home / KEY_FILE

    @property
    def public_path(self) -> Path:
        """Path of the public identity file."""
        return self.home / PUBLIC_FILE

    @property
    def contacts(self) -> Contacts:
        """The contact store of this home (refuses to pin the own identity)."""
        own = self.fingerprint() if self.has_identity() else None
        return Contacts(self.home, own=own, events=self._events, clock=self._clock)

    def has_identity(self) -> bool:
        """True if the home folder holds a key file."""
        return self.key_path.exists()

    def create(
        self,
        name: str,
        passphrase: str | bytes,
        *,
        kdf: KdfParams = KDF_MODERATE,
        force: bool = False,
    ) -> Identity:
        """Create a new identity and store it encrypted under ``passphrase``.

        Raises :class:`IdentityExists` if one exists and ``force`` is false;
        the existing files are then untouched.
        """
        secret = passphrase_bytes(passphrase)
        kdf.check()
        ensure_private_dir(self.home)
        with home_lock(self.home):
            existed = self.has_identity()
            if existed and not force:
                raise IdentityExists(f"{self.key_path} exists; use --force to replace it")
            ident = Identity.generate(name, now=self._clock())
            text = self._seal(ident, secret, kdf)
            try:
                atomic_write(self.key_path, text.encode("ascii"), replace=force)
            except FileExistsError:
                raise IdentityExists(f"{self.key_path} exists; use --force to replace it") from None
            atomic_write(self.public_path, ident.public.to_text().encode("ascii"), replace=True)
        kind = EventKind.IDENTITY_REPLACED if existed else EventKind.IDENTITY_CREATED
        self._events(
            SecurityEvent(
                at=self._clock(), kind=kind, name=ident.name, fingerprint=str(ident.fingerprint)
            )
        )
        return ident

    def _seal(self, ident: Identity, secret: bytes, kdf: KdfParams) -> str:
        salt = random_bytes(ARGON2_SALT_SIZE)
        header = _KeyFileHeader(
            kdf=_KDF_NAME,
            opslimit=kdf.opslimit,
            memlimit=kdf.memlimit,
            salt=salt,
            fingerprint=ident.fingerprint.digest,
        ).to_bytes()
        key = argon2id(secret, salt, kdf)
        sealed = aead_encrypt(key, ident.secret_bytes(), header)
        body = _KeyFile(header=header, sealed=sealed).to_bytes()
        return armor.armor(
            _ARMOR_LABEL, body, [("Name", ident.name), ("Fingerprint", str(ident.fingerprint))]
        )

    def _read_key_file(self) -> _SealedKey:
        try:
            raw = read_bounded(self.key_path, _MAX_FILE)
        except FileNotFoundError:
            raise NoIdentity(f"no identity in {self.home}; run 'securechan init'") from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedInput(f"{self.key_path} is not a securechan key file") from None
        block = armor.dearmor(
            text, _ARMOR_LABEL, allowed_headers=frozenset({"Name", "Fingerprint"})
        )
        outer = _KeyFile.from_bytes(block.body)
        header = _KeyFileHeader.from_bytes(outer.header)
        fp_header = block.headers.get("Fingerprint")
        if fp_header is not None and Fingerprint.parse(fp_header).digest != header.fingerprint:
            raise MalformedInput(f"{self.key_path}: the Fingerprint header does not match the key")
        if header.kdf != _KDF_NAME:
            raise MalformedInput(f"{self.key_path}: unknown key derivation {header.kdf!r}")
        params = KdfParams(opslimit=header.opslimit, memlimit=header.memlimit)
        try:
            params.check()
        except ValueError as e:
            raise MalformedInput(f"{self.key_path}: {e}") from None
        return _SealedKey(
            name_header=block.headers.get("Name"),
            header=outer.header,
            params=params,
            salt=header.salt,
            fingerprint=Fingerprint(header.fingerprint),
            sealed=outer.sealed,
        )

    def fingerprint(self) -> Fingerprint:
        """The stored identity's fingerprint, read without the passphrase."""
        return self._read_key_file().fingerprint

    def unlock(self, passphrase: str | bytes) -> Identity:
        """Decrypt the identity.

        Raises :class:`NoIdentity`, :class:`MalformedInput` (or
        :class:`UnsupportedVersion`) for a file that does not parse, and
        :class:`BadPassphrase` for a wrong passphrase or an altered file.
        Nothing on disk is changed.
        """
        secret = passphrase_bytes(passphrase)
        stored = self._read_key_file()
        key = argon2id(secret, stored.salt, stored.params)
        try:
            plain = aead_decrypt(key, stored.sealed, stored.header)
        except VerificationFailed:
            raise BadPassphrase("wrong passphrase, or the key file was altered") from None
        ident = Identity.from_secret_bytes(plain)
        if ident.fingerprint != stored.fingerprint:
            # Unreachable unless the file was sealed by a buggy writer: the
            # header is authenticated together with the secret.
            raise MalformedInput(f"{self.key_path}: fingerprint does not match the key")
        if stored.name_header is not None and stored.name_header != ident.name:
            # The readable header is a copy for people; it must not lie.
            raise MalformedInput(f"{self.key_path}: the Name header does not match the key")
        return ident

    def change_passphrase(
        self, old: str | bytes, new: str | bytes, *, kdf: KdfParams = KDF_MODERATE
    ) -> None:
        """Re-encrypt the key file under a new passphrase (atomic)."""
        new_secret = passphrase_bytes(new)
        kdf.check()
        with home_lock(self.home):
            ident = self.unlock(old)
            text = self._seal(ident, new_secret, kdf)
            atomic_write(self.key_path, text.encode("ascii"), replace=True)

    def public_identity(self) -> PublicIdentity:
        """The own public identity, checked against the key file's fingerprint."""
        expected = self.fingerprint()
        try:
            raw = read_bounded(self.public_path, _MAX_FILE)
        except FileNotFoundError:
            raise StorageError(f"{self.public_path} is missing") from None
        try:
            ident = PublicIdentity.from_text(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise MalformedInput(f"{self.public_path} is not a public identity file") from None
        if ident.fingerprint != expected:
            raise StorageError(f"{self.public_path} does not belong to {self.key_path}")
        return ident
