"""Shared fixtures: real files in tmp_path, the cheapest KDF the keystore accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from securechan.identity import Identity, Keystore
from securechan.identity.events import SecurityEvent
from securechan.primitives import KDF_INTERACTIVE, HybridSigningKey

# Argon2id at 64 MiB / 2 passes: the floor the keystore accepts, so tests run
# the real KDF at its cheapest allowed setting.
FAST_KDF = KDF_INTERACTIVE
NOW = 1_790_000_000


def fixed_identity(name: str, created: int = NOW) -> Identity:
    """A deterministic identity whose seeds are derived from its name.

    PUBLIC TEST DATA: these keys are derived from public strings.
    """
    ed = hashlib.sha256(f"securechan test {name} ed25519".encode()).digest()
    ml = hashlib.sha256(f"securechan test {name} ml-dsa-65".encode()).digest()
    return Identity(name=name, created=created, key=HybridSigningKey(ed, ml))


@pytest.fixture
def events() -> list[SecurityEvent]:
    return []


@pytest.fixture
def store(tmp_path: Path, events: list[SecurityEvent]) -> Keystore:
    return Keystore(tmp_path / "home", events=events.append, clock=lambda: NOW)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove nothing changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
