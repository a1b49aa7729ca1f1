"""The witness (issue 5 item 4; docs/AUDIT.md "Witnesses").

* The sans-I/O core (:mod:`securechan.audit.witness`): a first checkpoint,
  growth with a consistency proof, the same checkpoint again; and every
  refusal (bad relay signature, another origin, another log key, size going
  backwards, another root for the same size, a proof that fails, a non-empty
  proof from 0), each leaving the state as it was and, where the relay showed
  two histories, carrying both signed notes.
* The files (:mod:`securechan.audit.witness_store`): the key sealed under the
  passphrase (wrong passphrase and any edit refused), the state round trip,
  a damaged state refused rather than restarted from nothing.
* End to end: a real relay configured with the witness key; ``securechan
  witness cosign`` (a real subprocess) cosigns, the relay serves the
  cosignature, a second round after more sends cosigns a larger size, an idle
  round changes nothing; a relay restarted on another data folder with the
  same key (a rewritten history) is refused with exit 1, one line, and the
  evidence file holds both checkpoints.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from securechan.audit.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    open_checkpoint,
    open_cosigned_checkpoint,
    sign_checkpoint,
)
from securechan.audit.merkle import MemoryTree
from securechan.audit.note import SIG_COSIGNATURE_V1, VerifierKey, add_signatures
from securechan.audit.witness import (
    Cosigned,
    WitnessState,
    already_cosigned,
    witness_checkpoint,
)
from securechan.audit.witness_store import WitnessHome, WitnessKey
from securechan.client.witness import RoundResult, witness_round
from securechan.errors import (
    BadPassphrase,
    BadSignature,
    IdentityExists,
    MalformedInput,
    NoIdentity,
    ProofFailed,
    RelayError,
    SplitView,
    StorageError,
    UntrustedKey,
    VerificationFailed,
)
from securechan.primitives import KDF_INTERACTIVE, Ed25519SigningKey
from securechan.transport import CosignatureReply, RelayClient, RetryPolicy

ORIGIN = "relay.example/witness-test"
NOW = 1_790_000_000


def _key(label: str) -> Ed25519SigningKey:
    # PUBLIC TEST DATA: seeds derived from public strings.
    return Ed25519SigningKey(hashlib.sha256(f"securechan witness test {label}".encode()).digest())


RELAY = _key("relay")
LOG_KEY = VerifierKey(name=ORIGIN, sig_type=0x01, public_key=RELAY.public)
WITNESS = WitnessKey("witness.example/delegation-a", _key("witness"))


class Log:
    """A log in memory, signing its checkpoints like the relay."""

    def __init__(self, key: Ed25519SigningKey = RELAY, origin: str = ORIGIN) -> None:
        self.tree = MemoryTree()
        self.key, self.origin = key, origin

    def grow(self, n: int, tag: str = "") -> None:
        for _ in range(n):
            self.tree.append(f"{tag}leaf {self.tree.size}".encode())

    def note(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        cp = Checkpoint(origin=self.origin, size=size, root_hash=self.tree.root(size))
        return sign_checkpoint(self.key, self.origin, cp)

    def proof(self, old: int, new: int | None = None) -> list[bytes]:
        return self.tree.consistency_proof(old, self.tree.size if new is None else new)


def cosign(state: WitnessState, note: str, proof: list[bytes], now: int = NOW) -> Cosigned:
    return witness_checkpoint(
        state, key=WITNESS.key, name=WITNESS.name, log_key=LOG_KEY, note=note, proof=proof, now=now
    )


def first(log: Log) -> WitnessState:
    done = cosign(WitnessState(), log.note(), [])
    return done.state


# --- the core ---------------------------------------------------------------------


def test_first_checkpoint_growth_and_the_same_checkpoint_again() -> None:
    log = Log()
    log.grow(5)
    done = witness_checkpoint(
        WitnessState(),
        key=WITNESS.key,
        name=WITNESS.name,
        log_key=LOG_KEY,
        note=log.note(),
        proof=[],
        now=NOW,
    )
    assert (done.checkpoint.size, done.old_size) == (5, 0)
    # The posted note: the relay's signature and ours, verifiable as a cosigned checkpoint.
    got = open_cosigned_checkpoint(done.note, LOG_KEY, [WITNESS.verifier], required=1)
    assert got.checkpoint == done.checkpoint
    assert [(c.cosigner, c.timestamp) for c in got.cosignatures] == [(WITNESS.verifier, NOW)]
    assert done.note == log.note() + done.line
    entry = done.state.get(ORIGIN)
    assert entry is not None and entry.checkpoint.size == 5 and entry.note == log.note()
    assert done.state.old_size(LOG_KEY) == 5

    # Growth: 5 -> 13 with the RFC 9162 proof.
    log.grow(8)
    grown = witness_checkpoint(
        done.state,
        key=WITNESS.key,
        name=WITNESS.name,
        log_key=LOG_KEY,
        note=log.note(),
        proof=log.proof(5),
        now=NOW + 60,
    )
    assert (grown.checkpoint.size, grown.old_size) == (13, 5)
    assert grown.state.old_size(LOG_KEY) == 13

    # The same checkpoint again (no new leaves): cosigned again, empty proof.
    again = witness_checkpoint(
        grown.state,
        key=WITNESS.key,
        name=WITNESS.name,
        log_key=LOG_KEY,
        note=log.note(),
        proof=[],
        now=NOW + 120,
    )
    assert again.checkpoint == grown.checkpoint and again.old_size == 13

    # Others' cosignatures on the fetched note are not stored or reposted.
    other = WitnessKey("witness.example/other", _key("other"))
    extra = log.note() + cosign_checkpoint(other.key, other.name, grown.checkpoint, timestamp=NOW)
    mixed = witness_checkpoint(
        grown.state,
        key=WITNESS.key,
        name=WITNESS.name,
        log_key=LOG_KEY,
        note=extra,
        proof=[],
        now=NOW + 180,
    )
    assert other.name not in mixed.note
    entry = mixed.state.get(ORIGIN)
    assert entry is not None and other.name not in entry.note


def test_state_round_trips_and_already_cosigned() -> None:
    log = Log()
    log.grow(3)
    done = cosign(WitnessState(), log.note(), [])
    state = done.state
    assert WitnessState.from_json(state.to_json()) == state
    assert already_cosigned(state, done.note, LOG_KEY, WITNESS.verifier)
    assert not already_cosigned(state, log.note(), LOG_KEY, WITNESS.verifier)
    assert not already_cosigned(WitnessState(), done.note, LOG_KEY, WITNESS.verifier)
    log.grow(1)
    assert not already_cosigned(state, log.note(), LOG_KEY, WITNESS.verifier)
    # A stored note that no longer verifies is refused, never trusted as a baseline.
    data = json.loads(state.to_json())
    data["logs"][0]["note"] = data["logs"][0]["note"].replace("\n3\n", "\n4\n")
    with pytest.raises(MalformedInput):
        WitnessState.from_json(json.dumps(data))
    for bad in ("", "[]", '{"version": 2, "logs": []}', '{"version": 1}'):
        with pytest.raises(MalformedInput):
            WitnessState.from_json(bad)


def _refuses(state: WitnessState, note: str, proof: list[bytes], exc: type[Exception]) -> Exception:
    before = state.to_json()
    with pytest.raises(exc) as info:
        cosign(state, note, proof)
    assert state.to_json() == before  # unchanged: an immutable value, nothing returned
    return info.value


def test_refusals_leave_the_state_unchanged() -> None:
    log = Log()
    log.grow(6)
    state = first(log)
    old_note = log.note()

    # 1. Not signed by the pinned log key (another key under the same name).
    impostor = Log(key=_key("impostor"))
    impostor.grow(7)
    _refuses(state, impostor.note(), impostor.proof(6), BadSignature)
    # ... a signature byte flipped.
    note = log.note()
    head, sig64 = note.rstrip("\n").rsplit(" ", 1)
    raw = base64.b64decode(sig64)
    flipped = head + " " + base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode() + "\n"
    _refuses(state, flipped, [], BadSignature)
    # ... garbage.
    _refuses(state, "not a note\n", [], MalformedInput)

    # 2. Another log key for an origin cosigned before: UntrustedKey.
    rekeyed = VerifierKey(name=ORIGIN, sig_type=0x01, public_key=_key("rekeyed").public)
    rekeyed_log = Log(key=_key("rekeyed"))
    rekeyed_log.grow(6)
    before = state.to_json()
    with pytest.raises(UntrustedKey):
        witness_checkpoint(
            state,
            key=WITNESS.key,
            name=WITNESS.name,
            log_key=rekeyed,
            note=rekeyed_log.note(),
            proof=[],
            now=NOW,
        )
    assert state.to_json() == before

    # 3. Size going backwards: evidence is both notes.
    e = _refuses(state, log.note(4), [], SplitView)
    assert isinstance(e, SplitView) and e.evidence == (old_note, log.note(4))
    assert "went back" in str(e)

    # 4. The same size with another root (a fork of the same length).
    fork = Log()
    fork.grow(6, tag="forked ")
    e = _refuses(state, fork.note(), [], SplitView)
    assert isinstance(e, SplitView) and e.evidence == (old_note, fork.note())
    assert (
        open_checkpoint(e.evidence[0], LOG_KEY).size == open_checkpoint(e.evidence[1], LOG_KEY).size
    )

    # 5. A larger tree that does not extend ours (its own, valid, proof).
    fork.grow(5, tag="forked ")
    e = _refuses(state, fork.note(), fork.proof(6), SplitView)
    assert isinstance(e, SplitView) and e.evidence == (old_note, fork.note())
    # ... and a proof that is simply wrong, too short, or absent.
    log.grow(5)
    good = log.proof(6)
    _refuses(state, log.note(), [bytes(32), *good[1:]], SplitView)
    _refuses(state, log.note(), good[:-1], SplitView)
    _refuses(state, log.note(), [], SplitView)
    # With the right proof the same state cosigns.
    assert cosign(state, log.note(), good).checkpoint.size == 11

    # 6. Nothing cosigned yet: a proof from 0 is empty.
    with pytest.raises(ProofFailed):
        cosign(WitnessState(), log.note(), [bytes(32)])

    # A note for another origin under our key name cannot be made: the origin
    # is the key's name; a checkpoint of another origin signed by the log key fails.
    other = Log(origin="relay.example/other")
    other.grow(2)
    forged = add_signatures(other.note(), [])
    _refuses(state, forged, [], VerificationFailed)


# --- the files ---------------------------------------------------------------------


def test_key_file_sealed_under_the_passphrase(tmp_path: Path) -> None:
    home = WitnessHome(tmp_path / "home")
    with pytest.raises(NoIdentity):
        home.verifier()
    key = home.create_key("witness.example/a", "correct horse", kdf=KDF_INTERACTIVE, force=False)
    assert home.key_path.stat().st_mode & 0o777 == 0o600
    assert home.verifier() == key.verifier and key.verifier.sig_type == SIG_COSIGNATURE_V1
    assert home.unlock("correct horse").key.public == key.key.public
    text = home.key_path.read_text()
    assert text.startswith("securechan witness key v1\n")
    assert key.key.seed_bytes_secret().hex() not in text
    with pytest.raises(BadPassphrase):
        home.unlock("wrong")
    with pytest.raises(IdentityExists):
        home.create_key("witness.example/b", "x", kdf=KDF_INTERACTIVE, force=False)
    assert home.key_path.read_text() == text
    with pytest.raises(MalformedInput):
        home.create_key("has space", "x", kdf=KDF_INTERACTIVE, force=True)
    # Any change to the header (the name and key, the KDF cost) or the sealed
    # part fails like a wrong passphrase, or does not parse.
    other = WitnessKey("witness.example/a", _key("other")).verifier.to_text()
    for old, new in (
        (key.verifier.to_text(), other),
        ("\nsalt ", "\nsalt A"),
        ("sealed A", "sealed B"),
    ):
        home.key_path.write_text(text.replace(old, new, 1) if old in text else text + "x")
        with pytest.raises((BadPassphrase, MalformedInput)):
            home.unlock("correct horse")
    home.key_path.write_text(text.replace(" v1\n", " v2\n"))
    with pytest.raises(MalformedInput, match="version"):
        home.unlock("correct horse")


def test_state_file_atomic_and_damage_refused(tmp_path: Path) -> None:
    home = WitnessHome(tmp_path)
    assert home.read_state() == WitnessState()
    log = Log()
    log.grow(2)
    state = first(log)
    with home.locked():
        home.write_state(state)
    assert home.read_state() == state
    assert home.state_path.stat().st_mode & 0o777 == 0o600
    home.state_path.write_text(home.state_path.read_text()[:-20])
    with pytest.raises(StorageError, match="damaged"):
        home.read_state()


# --- end to end: a real relay and the real command ----------------------------------------

EXE = Path(sys.executable).with_name("securechan")
PASS = "witness passphrase"  # noqa: S105 - a test passphrase
STRICT = RetryPolicy(attempts=2, base=0.1, cap=0.5, timeout=10.0)


class Relay:
    def __init__(self, data: Path, out: Path) -> None:
        self.data, self.out = data, out
        with out.open("wb") as f:
            self.proc = subprocess.Popen(
                [str(EXE), "relay", "serve", "--port", "0", "--data", str(data)],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        deadline = time.monotonic() + 20
        pattern = r"^listening on (http://127\.0\.0\.1:\d+)$"
        while not (m := re.search(pattern, out.read_text(), re.M)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"relay did not start: {out.read_text()}")
            time.sleep(0.05)
        self.url = m[1]
        key = re.search(r"^log verifier key: (\S+)$", out.read_text(), re.M)
        assert key, out.read_text()
        self.log_key = key[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[Relay]]:
    started: list[Relay] = []
    yield started
    for r in started:
        r.stop()


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    env["SECURECHAN_PASSPHRASE"] = PASS
    return subprocess.run(
        [str(EXE), "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def send_envelopes(url: str, n: int) -> None:
    async def go() -> None:
        async with RelayClient(url, retry=STRICT) as rc:
            rkey, skey = Ed25519SigningKey.generate(), Ed25519SigningKey.generate()
            ids = await rc.create_queue(rkey, sender_key=skey.public)
            for _ in range(n):
                await rc.send_with_receipt(ids.sid, os.urandom(120), os.urandom(16), sender=skey)

    asyncio.run(go())


def served(url: str, size: int | None = None) -> str:
    async def go() -> str:
        async with RelayClient(url, retry=STRICT) as rc:
            return await rc.log_checkpoint(size)

    return asyncio.run(go())


def test_witness_cosign_against_a_real_relay(tmp_path: Path, relays: list[Relay]) -> None:
    home = tmp_path / "witness-home"
    out = cli(home, "witness", "init", "--name", "witness.example/tehran", "--kdf", "interactive")
    assert out.returncode == 0, out.stderr
    wkey = out.stdout.strip()
    assert cli(home, "witness", "key").stdout.strip() == wkey
    witness = VerifierKey.from_text(wkey)
    assert witness.sig_type == SIG_COSIGNATURE_V1

    data = tmp_path / "relay"
    data.mkdir(mode=0o700)
    (data / "witnesses.txt").write_text(f"# the tehran delegation\n{wkey}\n")
    relay = Relay(data, tmp_path / "relay.out")
    relays.append(relay)
    log_key = VerifierKey.from_text(relay.log_key)
    send_envelopes(relay.url, 3)

    # Round 1: cosigns size 3; the relay serves the checkpoint with our cosignature.
    run1 = cli(
        home, "witness", "cosign", "--relay", relay.url, "--log-key", relay.log_key, "--json"
    )
    assert run1.returncode == 0, run1.stderr
    r1 = json.loads(run1.stdout)
    assert (r1["size"], r1["old_size"], r1["status"]) == (3, 0, "cosigned")
    got = open_cosigned_checkpoint(served(relay.url), log_key, [witness], required=1)
    assert got.checkpoint.size == 3 and [c.cosigner for c in got.cosignatures] == [witness]

    # An idle round: nothing new to sign or post.
    idle = cli(home, "witness", "cosign", "--relay", relay.url, "--log-key", relay.log_key)
    assert idle.returncode == 0, idle.stderr
    assert idle.stdout.strip().endswith("size 3 root " + r1["root"] + ": unchanged")

    # Round 2 after more sends: a larger size, checked with a consistency proof.
    send_envelopes(relay.url, 4)
    run2 = cli(
        home, "witness", "cosign", "--relay", relay.url, "--log-key", relay.log_key, "--json"
    )
    assert run2.returncode == 0, run2.stderr
    r2 = json.loads(run2.stdout)
    assert (r2["size"], r2["old_size"], r2["status"]) == (7, 3, "cosigned")
    got = open_cosigned_checkpoint(served(relay.url), log_key, [witness], required=1)
    assert got.checkpoint.size == 7
    # The relay keeps one cosignature per witness, its newest: size 3 has none now.
    assert (
        open_cosigned_checkpoint(served(relay.url, 3), log_key, [witness], required=0).cosignatures
        == ()
    )
    state = json.loads((home / "witness.json").read_text())
    assert [e["log_key"] for e in state["logs"]] == [relay.log_key]

    # --follow keeps going (and stops at --timeout).
    follow = cli(
        home, "witness", "cosign", "--relay", relay.url, "--log-key", relay.log_key,
        "--follow", "--interval", "0.2", "--timeout", "1",
    )  # fmt: skip
    assert follow.returncode == 0, follow.stderr
    assert len(follow.stdout.splitlines()) >= 2

    # A rewritten history: the same relay key on a fresh data folder, other
    # envelopes, a larger log. The witness refuses, exit 1, evidence kept.
    relay.stop()
    fork_data = tmp_path / "fork"
    fork_data.mkdir(mode=0o700)
    shutil.copy2(data / "relay.key", fork_data / "relay.key")
    shutil.copy2(data / "witnesses.txt", fork_data / "witnesses.txt")
    fork = Relay(fork_data, tmp_path / "fork.out")
    relays.append(fork)
    assert fork.log_key == relay.log_key
    send_envelopes(fork.url, 9)
    refused = cli(home, "witness", "cosign", "--relay", fork.url, "--log-key", relay.log_key)
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("securechan: "), refused.stderr
    assert "not consistent" in lines[0] and "evidence" in lines[0]
    assert "Traceback" not in refused.stderr
    evidence = list((home / "witness-evidence").iterdir())
    assert len(evidence) == 1
    text = evidence[0].read_text()
    sizes = [open_checkpoint(n, log_key).size for n in _notes(text)]
    assert sizes == [7, 9]
    # The state still names size 7, and the fork got no cosignature.
    assert json.loads((home / "witness.json").read_text()) == state
    assert (
        open_cosigned_checkpoint(served(fork.url), log_key, [witness], required=0).cosignatures
        == ()
    )

    # Shorter than what we cosigned: refused too ("went back").
    fork2 = tmp_path / "fork2"
    fork2.mkdir(mode=0o700)
    shutil.copy2(data / "relay.key", fork2 / "relay.key")
    short = Relay(fork2, tmp_path / "fork2.out")
    relays.append(short)
    send_envelopes(short.url, 2)
    back = cli(home, "witness", "cosign", "--relay", short.url, "--log-key", relay.log_key)
    assert back.returncode == 1 and "went back" in back.stderr, back.stderr

    # Usage errors are one line, exit 2; an unreachable relay exits 3.
    bad = cli(home, "witness", "cosign", "--relay", relay.url, "--log-key", wkey)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    down = cli(home, "witness", "cosign", "--relay", relay.url, "--log-key", relay.log_key)
    assert down.returncode == 3 and len(down.stderr.splitlines()) == 1, down.stderr


def _notes(evidence: str) -> list[str]:
    """The two signed notes of an evidence file."""
    body = evidence.split("-- checkpoint cosigned before\n", 1)[1]
    old, new = body.split("\n-- checkpoint refused\n", 1)
    return [old, new]


# --- one round, against a scripted relay (the 409 path) -------------------------------


class ScriptedRelay:
    """The log routes of a relay, in memory; ``moves`` 409s before accepting."""

    def __init__(self, log: Log, moves: int, serve_ours: bool = True) -> None:
        self.log, self.moves, self.serve_ours = log, moves, serve_ours
        self.posted: list[str] = []

    async def log_checkpoint(self, size: int | None = None) -> str:
        return self.log.note(size)

    async def consistency_proof(self, old: int, new: int) -> tuple[bytes, ...]:
        return tuple(self.log.proof(old, new))

    async def tile_resource(self, path: str) -> bytes | None:
        return None  # serves no tlog-tiles: the round falls back to consistency_proof

    async def post_cosignature(self, text: str) -> CosignatureReply:
        self.posted.append(text)
        if self.moves:
            self.moves -= 1
            self.log.grow(2)  # the log moved on before the post arrived
            return CosignatureReply(accepted=False, log_size=self.log.tree.size)
        if not self.serve_ours:
            return CosignatureReply(accepted=True, checkpoint=self.log.note())
        return CosignatureReply(accepted=True, checkpoint=text)


def _round(relay: ScriptedRelay, home: WitnessHome) -> RoundResult:
    client = cast(RelayClient, relay)
    return asyncio.run(
        witness_round("unused", home, WITNESS, LOG_KEY, clock=lambda: NOW, client=client)
    )


def test_round_retries_once_after_409(tmp_path: Path) -> None:
    log = Log()
    log.grow(3)
    home = WitnessHome(tmp_path)
    relay = ScriptedRelay(log, moves=1)
    result = _round(relay, home)
    # The first post (size 3) met a 409; the second round cosigned size 5 from 3.
    assert (result.status, result.checkpoint.size, result.old_size) == ("cosigned", 5, 3)
    assert len(relay.posted) == 2
    assert home.read_state().old_size(LOG_KEY) == 5
    # Nothing new: unchanged, nothing posted.
    assert _round(relay, home).status == "cosigned"  # the served note lacks our line
    served = ScriptedRelay(log, moves=0)
    served.log_checkpoint = lambda size=None: _async(relay.posted[-1])  # type: ignore[method-assign]
    assert _round(served, home).status == "unchanged" and served.posted == []

    # 409 twice (5, then 7, while the log went to 9): a relay error; the
    # state holds the last checkpoint checked and cosigned.
    with pytest.raises(RelayError):
        _round(ScriptedRelay(log, moves=2), home)
    assert (home.read_state().old_size(LOG_KEY), log.tree.size) == (7, 9)
    # Accepted but our cosignature is not in the answer: a verification failure.
    with pytest.raises(VerificationFailed, match="does not serve"):
        _round(ScriptedRelay(log, moves=0, serve_ours=False), home)


async def _async(value: str) -> str:
    return value
