"""Shared fixtures: real files in tmp_path, the cheapest KDF the keystore accepts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechan.identity import Identity, Keystore
from securechan.identity.events import SecurityEvent
from securechan.primitives import KDF_INTERACTIVE, HybridSigningKey
from securechan.testing.postgres import (
    PostgresServer,
    PostgresUnavailable,
    find_bindir,
    running_postgres,
)

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (tests create databases on it).

    Skipped, with how to run it, when the machine has no PostgreSQL server
    binaries or no psycopg; `.ci/run` installs both and sets
    SECURECHAN_REQUIRE_POSTGRES, so there these tests fail instead of skipping.
    """
    required = bool(os.environ.get("SECURECHAN_REQUIRE_POSTGRES"))
    why = ""
    if find_bindir() is None:
        why = "no PostgreSQL server binaries (Debian: apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            why = "no psycopg (pip install 'psycopg[binary]')"
    if why:
        if required:
            pytest.fail(f"SECURECHAN_REQUIRE_POSTGRES is set but {why}")
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        if required:
            pytest.fail(f"SECURECHAN_REQUIRE_POSTGRES is set but {exc}")
        pytest.skip(f"PostgreSQL tests skipped: {exc}")


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server, for one test."""
    name = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    return postgres_server.create_database(name)
