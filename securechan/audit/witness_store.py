"""A witness's files in the home folder: its key, its state, its evidence.

Layout (``docs/AUDIT.md``, "Witnesses"; the folder is 0700, files 0600)::

    witness.key        the witness's Ed25519 key, encrypted under the passphrase
    witness-mldsa44.pub  its ML-DSA-44 verifier key (derived from the
                       Ed25519 seed; public, written at init and unlock)
    witness.json       per log origin, the last checkpoint cosigned (WitnessState)
    witness.lock       held from reading the state to writing the new one
    witness-evidence/  one file per refusal that proves a split view

The witness key is its own Ed25519 key, never the identity key: a key is used
in one protocol only, so a cosignature can never be replayed as an identity
signature or the other way round. It is sealed the way the keystore seals the
identity (``docs/PROTOCOL.md`` §6): Argon2id of the passphrase with the same
cost profiles, then XChaCha20-Poly1305 with the readable header as associated
data. The keystore's sealing is private to identities, so the file is its own
small text format, a version line first::

    securechan witness key v1
    verifier <name>+<key ID>+<base64(0x04 || public key)>
    kdf argon2id <opslimit> <memlimit>
    salt <base64, 16 bytes>
    sealed <base64(nonce || XChaCha20-Poly1305(seed) || tag)>

The associated data is the first four lines exactly, so changing the name,
the key or the cost parameters fails authentication like a wrong passphrase
(:class:`BadPassphrase`); the decrypted seed must give the stated public key.
``witness key`` reads the ``verifier`` line without the passphrase, as
``id show`` reads the key file's fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as _dt
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from securechan.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_MLDSA44_COSIGNATURE,
    VerifierKey,
    is_valid_key_name,
    mldsa44_companion,
)
from securechan.audit.witness import MAX_STATE_BYTES, WitnessState
from securechan.errors import (
    BadPassphrase,
    IdentityExists,
    MalformedInput,
    NoIdentity,
    SplitView,
    StorageError,
    VerificationFailed,
)
from securechan.identity._files import atomic_write, ensure_private_dir, read_bounded
from securechan.identity.keystore import passphrase_bytes
from securechan.primitives import (
    ARGON2_SALT_SIZE,
    KDF_MODERATE,
    SEED_SIZE,
    Ed25519SigningKey,
    KdfParams,
    MlDsa44SigningKey,
    aead_decrypt,
    aead_encrypt,
    argon2id,
    random_bytes,
)

__all__ = ["EVIDENCE_DIR", "KEY_FILE", "STATE_FILE", "WitnessHome", "WitnessKey"]

KEY_FILE = "witness.key"
PQ_KEY_FILE = "witness-mldsa44.pub"
STATE_FILE = "witness.json"
LOCK_FILE = "witness.lock"
EVIDENCE_DIR = "witness-evidence"
_VERSION_LINE = "securechan witness key v1"
_MAX_KEY_FILE = 4096
_MAX_STATE_FILE = MAX_STATE_BYTES


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A witness's cosigning key: a name and an Ed25519 key (type 0x04)."""

    name: str
    key: Ed25519SigningKey

    @property
    def verifier(self) -> VerifierKey:
        """The verifier key the relay operator configures."""
        return VerifierKey(name=self.name, sig_type=SIG_COSIGNATURE_V1, public_key=self.key.public)

    @property
    def pq_key(self) -> MlDsa44SigningKey:
        """The witness's ML-DSA-44 key, derived from the Ed25519 seed
        (:func:`~securechan.audit.note.mldsa44_companion`)."""
        return mldsa44_companion(self.key, "witness-cosignature")

    @property
    def pq_verifier(self) -> VerifierKey:
        """The ML-DSA-44 (type 0x06) verifier key, under the same name."""
        return VerifierKey(
            name=self.name, sig_type=SIG_MLDSA44_COSIGNATURE, public_key=self.pq_key.public
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise MalformedInput(f"{what}: invalid base64") from None
    if _b64(raw) != text:
        raise MalformedInput(f"{what}: non-canonical base64")
    return raw


_HEADER = re.compile(
    rf"{re.escape(_VERSION_LINE)}\n"
    r"verifier (?P<verifier>\S+)\n"
    r"kdf argon2id (?P<ops>[1-9][0-9]{0,9}) (?P<mem>[1-9][0-9]{0,19})\n"
    r"salt (?P<salt>[A-Za-z0-9+/=]+)\n"
)
_SEALED = re.compile(r"sealed (?P<sealed>[A-Za-z0-9+/=]+)\n")


def seal_witness_key(key: WitnessKey, passphrase: str | bytes, kdf: KdfParams) -> str:
    """The key file's text: ``key`` sealed under ``passphrase``."""
    secret = passphrase_bytes(passphrase)
    kdf.check()
    salt = random_bytes(ARGON2_SALT_SIZE)
    header = (
        f"{_VERSION_LINE}\nverifier {key.verifier.to_text()}\n"
        f"kdf argon2id {kdf.opslimit} {kdf.memlimit}\nsalt {_b64(salt)}\n"
    )
    sealed = aead_encrypt(argon2id(secret, salt, kdf), key.key.seed_bytes_secret(), header.encode())
    return f"{header}sealed {_b64(sealed)}\n"


def _parse(text: str, where: Path) -> tuple[str, VerifierKey, KdfParams, bytes, bytes]:
    if not text.startswith(_VERSION_LINE.rsplit(" ", 1)[0] + " "):
        raise MalformedInput(f"{where} is not a securechan witness key file")
    if not text.startswith(_VERSION_LINE + "\n"):
        raise MalformedInput(f"{where}: unsupported witness key file version")
    head = _HEADER.match(text)
    tail = _SEALED.fullmatch(text, head.end()) if head else None
    if head is None or tail is None:
        raise MalformedInput(f"{where} is not a securechan witness key file")
    verifier = VerifierKey.from_text(head["verifier"])
    if verifier.sig_type != SIG_COSIGNATURE_V1:
        raise MalformedInput(f"{where}: not a cosignature (type 0x04) key")
    params = KdfParams(opslimit=int(head["ops"]), memlimit=int(head["mem"]))
    try:
        params.check()
    except ValueError as e:
        raise MalformedInput(f"{where}: {e}") from None
    salt = _unb64(head["salt"], str(where))
    if len(salt) != ARGON2_SALT_SIZE:
        raise MalformedInput(f"{where}: bad salt")
    return head.group(0), verifier, params, salt, _unb64(tail["sealed"], str(where))


def open_witness_key(text: str, passphrase: str | bytes, *, where: Path) -> WitnessKey:
    """Decrypt a key file. :class:`BadPassphrase` for a wrong passphrase or
    an altered file, :class:`MalformedInput` for one that does not parse."""
    secret = passphrase_bytes(passphrase)
    header, verifier, params, salt, sealed = _parse(text, where)
    try:
        seed = aead_decrypt(argon2id(secret, salt, params), sealed, header.encode())
    except VerificationFailed:
        raise BadPassphrase("wrong passphrase, or the witness key file was altered") from None
    if len(seed) != SEED_SIZE:
        raise MalformedInput(f"{where}: bad witness key")
    key = WitnessKey(verifier.name, Ed25519SigningKey(seed))
    if key.verifier != verifier:
        # Unreachable unless a buggy writer sealed it: the header is authenticated.
        raise MalformedInput(f"{where}: the verifier line does not match the key")
    return key


class WitnessHome:
    """The witness files of one home folder."""

    def __init__(self, home: Path | str) -> None:
        self.home = Path(home)

    @property
    def key_path(self) -> Path:
        """Path of the encrypted witness key."""
        return self.home / KEY_FILE

    @property
    def state_path(self) -> Path:
        """Path of the witness state."""
        return self.home / STATE_FILE

    def create_key(
        self, name: str, passphrase: str | bytes, *, kdf: KdfParams = KDF_MODERATE, force: bool
    ) -> WitnessKey:
        """Make a new witness key named ``name`` and store it sealed.

        Raises :class:`IdentityExists` if a witness key exists and ``force``
        is false (the old file is then untouched); :class:`MalformedInput`
        for a name that is not a valid note key name.
        """
        if not is_valid_key_name(name):
            raise MalformedInput(
                f"{name!r} is not a valid witness name (no spaces and no '+', "
                "e.g. witness.example/delegation-a)"
            )
        ensure_private_dir(self.home)
        key = WitnessKey(name, Ed25519SigningKey.generate())
        text = seal_witness_key(key, passphrase, kdf)
        try:
            atomic_write(self.key_path, text.encode("ascii"), replace=force)
        except FileExistsError:
            raise IdentityExists(
                f"{self.key_path} exists; use --force to replace the witness key"
            ) from None
        self._write_pq(key)
        return key

    def _write_pq(self, key: WitnessKey) -> None:
        text = key.pq_verifier.to_text() + "\n"
        atomic_write(self.home / PQ_KEY_FILE, text.encode("ascii"), replace=True, mode=0o644)

    def pq_verifier(self) -> VerifierKey | None:
        """The ML-DSA-44 verifier key, if the key was unlocked once (no
        passphrase needed); the Ed25519 key's companion."""
        try:
            raw = read_bounded(self.home / PQ_KEY_FILE, _MAX_KEY_FILE)
            key = VerifierKey.from_text(raw.decode("ascii").strip())
        except (FileNotFoundError, UnicodeDecodeError, MalformedInput):
            return None
        mine = self.verifier()
        return key if key.name == mine.name else None

    def _key_text(self) -> str:
        try:
            raw = read_bounded(self.key_path, _MAX_KEY_FILE)
        except FileNotFoundError:
            raise NoIdentity(
                f"no witness key in {self.home}; run 'securechan witness init'"
            ) from None
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedInput(f"{self.key_path} is not a witness key file") from None

    def verifier(self) -> VerifierKey:
        """The witness's verifier key, read without the passphrase."""
        return _parse(self._key_text(), self.key_path)[1]

    def unlock(self, passphrase: str | bytes) -> WitnessKey:
        """The witness key, decrypted."""
        key = open_witness_key(self._key_text(), passphrase, where=self.key_path)
        if self.pq_verifier() != key.pq_verifier:
            self._write_pq(key)
        return key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the witness lock: from reading the state to writing it back.

        Two witness processes on one home (a ``--follow`` and a manual round)
        could otherwise both check against the same old checkpoint and the
        slower one overwrite the newer state.
        """
        ensure_private_dir(self.home)
        try:
            fd = os.open(self.home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StorageError(f"cannot lock {self.home}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_state(self) -> WitnessState:
        """The stored state (empty if none). :class:`StorageError` if damaged."""
        try:
            raw = read_bounded(self.state_path, _MAX_STATE_FILE)
        except FileNotFoundError:
            return WitnessState()
        try:
            return WitnessState.from_json(raw)
        except MalformedInput as e:
            # Never start again from nothing over a damaged file: that would
            # let a relay that rewrote history get a fresh cosignature.
            raise StorageError(f"{self.state_path} is damaged: {e}") from None

    def write_state(self, state: WitnessState) -> None:
        """Replace the state atomically (fsync'ed before it returns)."""
        atomic_write(self.state_path, state.to_json().encode("utf-8"), replace=True)

    def save_evidence(self, error: SplitView, *, now: int) -> Path:
        """Write both checkpoints of a refusal to a new file; its path."""
        folder = self.home / EVIDENCE_DIR
        ensure_private_dir(folder)
        stamp = _dt.datetime.fromtimestamp(now, _dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        old, new = error.evidence
        text = (
            f"securechan witness evidence v1\nreason {error}\n\n"
            f"-- checkpoint cosigned before\n{old}\n-- checkpoint refused\n{new}"
        )
        for i in range(1000):
            path = folder / f"{stamp}-{i}.txt"
            try:
                atomic_write(path, text.encode("utf-8"), replace=False)
            except FileExistsError:
                continue
            return path
        raise StorageError(f"too many evidence files in {folder}")
