"""The encrypted keystore (securechan.identity.keystore) with real files."""

from __future__ import annotations

import base64
import stat
import unicodedata
from pathlib import Path

import pytest

from securechan import wire
from securechan.errors import (
    BadPassphrase,
    IdentityExists,
    MalformedInput,
    NoIdentity,
    StorageError,
    UnsupportedVersion,
    UsageError,
)
from securechan.identity import EventKind, Keystore
from securechan.identity.events import SecurityEvent
from securechan.identity.keystore import KEY_FILE_HEADER, KEY_FILE_SCHEMA
from securechan.primitives import KdfParams
from tests.conftest import FAST_KDF, snapshot

PW = "correct horse battery staple"


@pytest.fixture
def made(store: Keystore) -> Keystore:
    store.create("tehran", PW, kdf=FAST_KDF)
    return store


def _body_lines(text: str) -> tuple[list[str], int, int]:
    lines = text.split("\n")
    start = lines.index("") + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("-----END"))
    return lines, start, end


def test_create_and_unlock(made: Keystore, events: list[SecurityEvent]) -> None:
    ident = made.unlock(PW)
    assert ident.name == "tehran"
    assert made.public_identity() == ident.public
    assert made.fingerprint() == ident.fingerprint
    assert [e.kind for e in events] == [EventKind.IDENTITY_CREATED]
    assert events[0].fingerprint == str(ident.fingerprint)


def test_permissions(made: Keystore) -> None:
    assert stat.S_IMODE(made.home.stat().st_mode) == 0o700
    for p in made.home.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert not [p for p in made.home.iterdir() if p.name.endswith(".tmp")]


def test_key_file_holds_no_raw_secret(made: Keystore) -> None:
    ed_seed, mldsa_seed = made.unlock(PW)._key.seed_bytes_secret()
    for path in made.home.iterdir():
        data = path.read_bytes()
        decoded = b""
        if path.name == "identity.key":
            _, start, end = _body_lines(data.decode())
            decoded = base64.b64decode("".join(data.decode().split("\n")[start:end]))
        for seed in (ed_seed, mldsa_seed):
            for form in (
                seed,
                seed.hex().encode(),
                seed.hex().upper().encode(),
                base64.b64encode(seed)[:40],
            ):
                assert form not in data, path
            assert seed not in decoded, path
        assert PW.encode() not in data


def test_no_overwrite_without_force(made: Keystore, events: list[SecurityEvent]) -> None:
    before = snapshot(made.home)
    with pytest.raises(IdentityExists):
        made.create("other", PW, kdf=FAST_KDF)
    assert snapshot(made.home) == before
    new = made.create("other", "another passphrase", kdf=FAST_KDF, force=True)
    assert made.unlock("another passphrase").fingerprint == new.fingerprint
    assert events[-1].kind is EventKind.IDENTITY_REPLACED


def test_wrong_passphrase(made: Keystore) -> None:
    before = snapshot(made.home)
    with pytest.raises(BadPassphrase):
        made.unlock("correct horse battery stapler")
    with pytest.raises(UsageError):
        made.unlock("")
    assert snapshot(made.home) == before


def test_passphrase_is_nfc_normalised(store: Keystore) -> None:
    composed = unicodedata.normalize("NFC", "café ümlaut")
    decomposed = unicodedata.normalize("NFD", "café ümlaut")
    assert composed != decomposed
    store.create("tehran", composed, kdf=FAST_KDF)
    assert store.unlock(decomposed).name == "tehran"


def test_no_identity(store: Keystore) -> None:
    with pytest.raises(NoIdentity):
        store.unlock(PW)
    with pytest.raises(NoIdentity):
        store.public_identity()


@pytest.mark.parametrize("keep", [0, 10, 100, 1000, -40, -2])
def test_truncated_key_file(made: Keystore, keep: int) -> None:
    data = made.key_path.read_bytes()
    # -2 cuts into the END line (the last byte alone is only the final newline).
    made.key_path.write_bytes(data[:keep])
    before = snapshot(made.home)
    with pytest.raises(MalformedInput):
        made.unlock(PW)
    assert snapshot(made.home) == before


def test_newer_format_version(made: Keystore) -> None:
    made.key_path.write_text(made.key_path.read_text().replace("Version: 1", "Version: 2"))
    before = snapshot(made.home)
    with pytest.raises(UnsupportedVersion, match="version 2"):
        made.unlock(PW)
    assert snapshot(made.home) == before


def test_newer_wire_version(made: Keystore) -> None:
    text = made.key_path.read_text()
    lines, start, end = _body_lines(text)
    body = bytearray(base64.b64decode("".join(lines[start:end])))
    body[0] = 9
    b64 = base64.b64encode(bytes(body)).decode()
    lines[start:end] = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    made.key_path.write_text("\n".join(lines))
    with pytest.raises(UnsupportedVersion):
        made.unlock(PW)


def test_bit_flips_in_the_key_file_never_unlock(made: Keystore) -> None:
    # Decode the body, flip one bit at positions across header and ciphertext,
    # re-encode canonically: the result must be refused, never half-loaded.
    text = made.key_path.read_text()
    lines, start, end = _body_lines(text)
    body = base64.b64decode("".join(lines[start:end]))
    before_flip = snapshot(made.home)
    positions = [0, 1, 2, 5, 8, 20, 40, 60, 90, 120, len(body) // 2, len(body) - 17, len(body) - 1]
    for i in positions:
        bad = bytearray(body)
        bad[i] ^= 0x10
        b64 = base64.b64encode(bytes(bad)).decode()
        new_lines = lines[:start] + [b64[j : j + 64] for j in range(0, len(b64), 64)] + lines[end:]
        made.key_path.write_text("\n".join(new_lines))
        with pytest.raises((BadPassphrase, MalformedInput)):
            made.unlock(PW)
    made.key_path.write_text(text)
    assert snapshot(made.home) == before_flip
    assert made.unlock(PW).name == "tehran"


def test_header_is_authenticated(made: Keystore) -> None:
    # Swap in a valid header with another salt: it parses, but the AEAD's
    # associated data no longer matches, so it is refused.
    text = made.key_path.read_text()
    lines, start, end = _body_lines(text)
    outer = wire.decode(KEY_FILE_SCHEMA, base64.b64decode("".join(lines[start:end])))
    header = wire.decode(KEY_FILE_HEADER, outer["header"])
    header["salt"] = bytes(16)
    forged = wire.encode(
        KEY_FILE_SCHEMA, {"header": wire.encode(KEY_FILE_HEADER, header), "sealed": outer["sealed"]}
    )
    b64 = base64.b64encode(forged).decode()
    made.key_path.write_text(
        "\n".join(lines[:start] + [b64[j : j + 64] for j in range(0, len(b64), 64)] + lines[end:])
    )
    with pytest.raises(BadPassphrase):
        made.unlock(PW)


def test_weak_kdf_parameters_are_refused_before_work(made: Keystore) -> None:
    text = made.key_path.read_text()
    lines, start, end = _body_lines(text)
    outer = wire.decode(KEY_FILE_SCHEMA, base64.b64decode("".join(lines[start:end])))
    for field, value in (
        ("memlimit", 1024 * 1024),
        ("memlimit", 2**40),
        ("opslimit", 1),
        ("opslimit", 10**9),
    ):
        header = wire.decode(KEY_FILE_HEADER, outer["header"])
        header[field] = value
        forged = wire.encode(
            KEY_FILE_SCHEMA,
            {"header": wire.encode(KEY_FILE_HEADER, header), "sealed": outer["sealed"]},
        )
        b64 = base64.b64encode(forged).decode()
        made.key_path.write_text(
            "\n".join(
                lines[:start] + [b64[j : j + 64] for j in range(0, len(b64), 64)] + lines[end:]
            )
        )
        with pytest.raises(MalformedInput, match="Argon2id"):
            made.unlock(PW)


def test_kdf_below_floor_cannot_be_chosen(store: Keystore) -> None:
    with pytest.raises(ValueError, match="64 MiB"):
        store.create("x", PW, kdf=KdfParams(opslimit=2, memlimit=8 * 1024 * 1024))
    assert not store.has_identity()


def test_public_file_swapped(made: Keystore, tmp_path: Path) -> None:
    other = Keystore(tmp_path / "other")
    other.create("impostor", PW, kdf=FAST_KDF)
    made.public_path.write_bytes(other.public_path.read_bytes())
    with pytest.raises(StorageError, match="does not belong"):
        made.public_identity()


def test_change_passphrase(made: Keystore) -> None:
    fp = made.fingerprint()
    with pytest.raises(BadPassphrase):
        made.change_passphrase("wrong", "new passphrase", kdf=FAST_KDF)
    made.change_passphrase(PW, "new passphrase", kdf=FAST_KDF)
    with pytest.raises(BadPassphrase):
        made.unlock(PW)
    assert made.unlock("new passphrase").fingerprint == fp


def test_garbage_key_file(made: Keystore) -> None:
    made.key_path.write_bytes(b"\xff\xfe" * 100)
    with pytest.raises(MalformedInput):
        made.unlock(PW)
    made.key_path.write_bytes(b"x" * (70 * 1024))
    with pytest.raises(StorageError, match="larger"):
        made.unlock(PW)
