"""Delegations for the adversarial suite: a home folder each, driven by real
``securechan`` processes (``--home``, the passphrase in the environment) or
by the library's ``Channel`` on the same folder.

Identities use the cheapest Argon2id the keystore accepts, made once per
module (:func:`make_people`) and copied per test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securechan.audit.log import AuditLog
from securechan.client.channel import Channel
from securechan.client.results import Received, Rejected
from securechan.identity import Identity, Keystore
from securechan.identity.safety import safety_number
from securechan.primitives import KDF_INTERACTIVE
from securechan.protocol.address import ContactCard
from securechan.transport import RetryPolicy
from tests.adversary.relay import clean_env, securechan_command
from tests.ndjson import ndjson

__all__ = ["Party", "audit_rejections", "introduce", "make_people", "session_states"]

# Fail fast against a misbehaving relay: the tests script the failures.
FAST = RetryPolicy(attempts=2, base=0.05, cap=0.2, timeout=5.0)


@dataclass
class Party:
    """One delegation: a name, a home folder and its passphrase."""

    name: str
    home: Path
    passphrase: str
    _identity: Identity | None = field(default=None, repr=False)

    # --- the CLI ---------------------------------------------------------------

    def run(self, *args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``securechan --home HOME ARGS``; a traceback is always a failure."""
        start = time.monotonic()
        proc = subprocess.run(
            [*securechan_command(), "--home", str(self.home), *map(str, args)],
            capture_output=True,
            text=True,
            env=clean_env(self.passphrase),
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        assert "Traceback" not in proc.stderr + proc.stdout, transcript(proc)
        if os.environ.get("ADVERSARY_TIMING"):
            print(
                f"[{time.monotonic() - start:5.2f}s] {self.name}: {' '.join(map(str, args))[:60]}"
            )
        return proc

    def ok(self, *args: object) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, transcript(proc)
        return proc.stdout

    def cli_audit(self) -> list[dict[str, Any]]:
        """``securechan log show --json`` (no passphrase needed)."""
        return ndjson(self.ok("log", "show", "--json"))

    # --- the library ------------------------------------------------------------

    @property
    def keystore(self) -> Keystore:
        return Keystore(self.home)

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self.keystore.unlock(self.passphrase)
        return self._identity

    def channel(self, retry: RetryPolicy = FAST) -> Channel:
        return Channel(self.keystore, self.identity, retry=retry)

    def audit_kinds(self) -> list[str]:
        with AuditLog.open(self.home, read_only=True) as log:
            return [e.kind for e in log.entries()]


def transcript(proc: subprocess.CompletedProcess[str]) -> str:
    cmd = " ".join(map(str, proc.args[1:]))
    return (
        f"$ securechan {cmd}\nexit {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    )


def make_people(pristine: Path, root: Path, names: dict[str, str]) -> dict[str, Party]:
    """Fresh copies of identities made once in ``pristine`` (made if missing)."""
    out = {}
    for name, passphrase in names.items():
        if not (pristine / name).exists():
            Keystore(pristine / name).create(name, passphrase, kdf=KDF_INTERACTIVE)
        shutil.copytree(pristine / name, root / name)
        out[name] = Party(name, root / name, passphrase)
    return out


def audit_rejections(home: Path) -> list[dict[str, Any]]:
    """The ``rejected`` entries of the local audit log, as ``log show`` prints them."""
    with AuditLog.open(home, read_only=True) as log:
        return [e.fields.describe() for e in log.entries() if e.kind == "rejected"]


def session_states(home: Path) -> dict[str, Any]:
    """The security state of a home, byte for byte: every sealed state row
    (sessions with their skipped keys, prekeys, the first-message replay
    guard), the stored messages and the relay log heads the client keeps."""
    conn = sqlite3.connect(f"file:{home / 'client.db'}?mode=ro", uri=True, timeout=10)
    try:
        return {
            "state": conn.execute(
                "SELECT name, generation, blob FROM state ORDER BY name"
            ).fetchall(),
            "messages": conn.execute("SELECT * FROM messages ORDER BY id").fetchall(),
            "relay_logs": conn.execute("SELECT * FROM relay_logs ORDER BY relay").fetchall(),
            "sessions": conn.execute("SELECT * FROM sessions ORDER BY conversation").fetchall(),
        }
    finally:
        conn.close()


async def register(ch: Channel, url: str) -> ContactCard:
    return await ch.register(url)


def pin(party: Party, card: ContactCard, *, verify: bool = True) -> None:
    store = party.keystore
    store.contacts.add(card.identity, card=card.to_bytes())
    if verify:
        own = store.public_identity()
        store.contacts.verify(card.identity.name, str(safety_number(own, card.identity)), own)


async def introduce(a: Party, url_a: str, b: Party, url_b: str, *, hello: bool = True) -> None:
    """Register ``a`` at ``url_a`` and ``b`` at ``url_b``, pin and verify each
    other; with ``hello``, run the handshake both ways so that later messages
    travel on the private queues."""
    async with a.channel() as ach, b.channel() as bch:
        card_a = await ach.register(url_a)
        card_b = await bch.register(url_b)
        pin(a, card_b)
        pin(b, card_a)
        if not hello:
            return
        assert (await ach.send_text(b.name, "hello")).pending == 0
        got = await receive_until(bch, 1)
        assert [x.text for x in got if isinstance(x, Received) and x.text] == ["hello"], got
        shown = await ach.receive()  # a picks up b's queue grant
        assert not [x for x in shown if isinstance(x, Rejected)], shown


async def receive_until(ch: Channel, want: int, *, rounds: int = 30) -> list[Received | Rejected]:
    """Receive until ``want`` texts were shown (bounded), then one more pass."""
    items: list[Received | Rejected] = []
    for _ in range(rounds):
        items.extend(await ch.receive())
        if sum(1 for x in items if isinstance(x, Received) and x.text is not None) >= want:
            break
        await asyncio.sleep(0.1)
    items.extend(await ch.receive())
    return items
