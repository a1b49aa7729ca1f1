"""C2SP tlog-witness, both ways (issue 16 item 3).

1. ``securechan witness serve`` as a generic witness: a log written in the
   test from the specs (tests/tlog_spec.py, no securechan import) POSTs
   ``add-checkpoint`` over real HTTP; every status code of the spec (200,
   400, 403, 404, 409 with its size body, 422), both cosignatures (Ed25519
   type 0x04 and ML-DSA-44 type 0x06) verified from the spec, the state
   durable across a restart.
2. The relay pushing its checkpoints with ``add-checkpoint``: to a witness
   written in the test from the spec (every answer it can give, the 409
   retry after a restart, a forged or stripped ML-DSA-44 line), and to
   ``securechan witness serve``; PQ cosignatures verified, and refused by a
   policy that requires them when forged or stripped.
3. The request parser under Hypothesis.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.audit.checkpoint import open_checkpoint, open_cosigned_checkpoint
from securechan.audit.log import AuditLog
from securechan.audit.note import VerifierKey, open_note
from securechan.audit.witness_api import MAX_PROOF_LINES, parse_add_checkpoint
from securechan.client.db import ClientDB
from securechan.client.logview import RelayLogs
from securechan.errors import BadSignature, MalformedInput, VerificationFailed
from securechan.primitives import Ed25519SigningKey
from securechan.transport import RelayClient
from tests.test_relay_tlog import STRICT, envelope, new_queue, run, send, start_relay
from tests.tlog_spec import (
    DASH,
    SpecLog,
    SpecWitness,
    b64,
    consistency,
    verify_cosignature,
)

EXE = Path(sys.executable).with_name("securechan")
PASS = "witness passphrase"  # noqa: S105 (a test passphrase)


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


class Witness:
    """``securechan witness serve`` in a subprocess on 127.0.0.1."""

    def __init__(self, home: Path, logs: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
        env["SECURECHAN_PASSPHRASE"] = PASS
        args = [str(EXE), "--home", str(home), "witness", "serve", "--listen", "127.0.0.1:0"]
        for log in logs:
            args += ["--log", log]
        self.err = open(home.parent / f"witness-{time.monotonic_ns()}.err", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err, env=env
        )
        deadline = time.monotonic() + 60
        while True:
            self.err.seek(0)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.err.read())
            if m:
                self.port = int(m.group(1))
                break
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, "the witness did not start"
            time.sleep(0.05)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def post(self, body: bytes, path: str = "/add-checkpoint") -> tuple[int, str, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert "Traceback" not in self.stderr(), self.stderr()
        self.err.close()


@pytest.fixture
def witness_home(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    home = tmp_path / "witness-home"
    out = cli(home, "witness", "init", "--name", "witness.example/w1", "--kdf", "interactive")
    assert out.returncode == 0, out.stderr
    ed = out.stdout.strip()
    pq = cli(home, "witness", "key", "--mldsa44")
    assert pq.returncode == 0, pq.stderr
    assert cli(home, "witness", "key").stdout.strip() == ed
    return home, ed, pq.stdout.strip()


def cosigs(body: str) -> list[str]:
    lines = body.splitlines(keepends=True)
    assert lines and all(line.startswith(DASH) and line.endswith("\n") for line in lines)
    return lines


def test_securechan_witness_serves_a_log_written_from_the_spec(
    witness_home: tuple[Path, str, str],
) -> None:
    home, ed_vkey, pq_vkey = witness_home
    log = SpecLog("log.example/spec-log")
    other = SpecLog("log.example/second")  # configured, never cosigned
    stranger = SpecLog("log.example/unknown")  # not configured
    w = Witness(home, [log.vkey, other.vkey])
    try:
        log.append(5)
        # 404: an origin the witness does not witness.
        stranger.append(2)
        status, _, _ = w.post(stranger.request(0))
        assert status == 404
        # 400: malformed bodies, and an old size above the checkpoint's.
        for junk in (
            b"",
            b"old 0\n",  # no empty line
            b"old 00\n\n" + log.checkpoint().encode(),
            b"old -1\n\n" + log.checkpoint().encode(),
            b"old 0\nnot base64\n\n" + log.checkpoint().encode(),
            b"old 0\n\n" + log.text(5).encode(),  # a checkpoint with no signature line
            ("old 0\n" + f"{b64(bytes(32))}\n" * 64 + "\n" + log.checkpoint()).encode(),
        ):
            status, _, _ = w.post(junk)
            assert status == 400, junk[:40]
        status, _, _ = w.post(log.request(6, 5, []))
        assert status == 400
        # 403: signed by another key under the log's name (not a trusted key:
        # no signature from one), and the trusted key's ID with a bad signature.
        line = log.checkpoint().splitlines()[-1]
        sig = bytearray(base64.b64decode(line.split(" ")[-1]))
        sig[10] ^= 1
        bad = f"{log.text(5)}\n{DASH}{log.origin} {b64(bytes(sig))}\n"
        other_key = SpecLog(log.origin)  # same name, another key: another key ID
        for body in (
            ("old 0\n\n" + other_key.checkpoint(0)).encode(),
            ("old 0\n\n" + bad).encode(),
        ):
            status, _, _ = w.post(body)
            assert status == 403
        # 200: the first checkpoint, from size 0; both cosignatures verify.
        status, ctype, body = w.post(log.request(0))
        assert status == 200, body
        assert ctype.startswith("text/plain")
        lines = cosigs(body)
        assert len(lines) == 2
        now = int(time.time())
        stamps = [
            verify_cosignature(v, log.text(5), ln)
            for v, ln in zip([ed_vkey, pq_vkey], lines, strict=True)
        ]
        assert all(abs(s - now) < 120 for s in stamps)
        # 409: the log thinks we have nothing; the body says 5.
        log.append(3)
        status, ctype, body = w.post(log.request(0))
        assert (status, ctype, body) == (409, "text/x.tlog.size", "5\n")
        status, _, body = w.post(log.request(4, 8))
        assert (status, body) == (409, "5\n")
        # 422: a proof that does not verify; another root for the size cosigned.
        proof = consistency(5, log.leaves)
        proof[0] = bytes(32)
        status, _, _ = w.post(log.request(5, 8, proof))
        assert status == 422
        fork = log.sign(log.text(5, root=hashlib.sha256(b"fork").digest()))
        status, _, _ = w.post(("old 5\n\n" + fork).encode())
        assert status == 422
        assert list((home / "witness-evidence").iterdir()), "the fork is kept as evidence"
        # 422 on the second log: a non-empty proof from 0, a size-0 checkpoint
        # whose root is not the empty tree's.
        other.append(3)
        status, _, _ = w.post(other.request(0, 3, [bytes(32)]))
        assert status == 422
        zero = other.sign(other.text(0, root=hashlib.sha256(b"x").digest()))
        status, _, _ = w.post(("old 0\n\n" + zero).encode())
        assert status == 422
        # 200 again with a real proof, from 5 to 8.
        status, _, body = w.post(log.request(5, 8))
        assert status == 200, body
        for vkey, line in zip([ed_vkey, pq_vkey], cosigs(body), strict=True):
            verify_cosignature(vkey, log.text(8), line)
        # The same checkpoint again: 200 (old 8 = size 8, same root).
        status, _, body = w.post(log.request(8, 8))
        assert status == 200, body
    finally:
        w.stop()
    # The state is durable: a new process still knows size 8.
    w = Witness(home, [log.vkey, other.vkey])
    try:
        status, ctype, body = w.post(log.request(5, 8))
        assert (status, ctype, body) == (409, "text/x.tlog.size", "8\n")
    finally:
        w.stop()


_line = st.sampled_from(
    [b"old 0", b"old 7", b"old 18446744073709551615", b"old 1", b"", b"\n", b"old 01"]
    + [b64(bytes([i]) * 32).encode() for i in range(3)]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=8), st.binary(max_size=64))
def test_request_parser_never_crashes(lines: list[bytes], tail: bytes) -> None:
    body = b"\n".join(lines) + tail
    try:
        req = parse_add_checkpoint(body)
    except MalformedInput:
        return
    # What parses is exactly the spec's form, and prints back the same.
    out = (
        f"old {req.old}\n".encode()
        + b"".join(b64(h).encode() + b"\n" for h in req.proof)
        + b"\n"
        + req.note
    )
    assert out == body
    assert len(req.proof) <= MAX_PROOF_LINES


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_request_parser_on_arbitrary_bytes(body: bytes) -> None:
    with contextlib.suppress(MalformedInput):
        parse_add_checkpoint(body)


# --- the relay pushes (issue 16 item 3, the other direction) ---------------------

ORIGIN = "relay.example/pushed"


def relay_data(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A relay data folder with a fresh relay key; the log's verifier key."""
    data = tmp_path / name
    data.mkdir(mode=0o700)
    key = Ed25519SigningKey.generate()
    (data / "relay.key").write_text(key.seed_bytes_secret().hex() + "\n")
    (data / "relay.key").chmod(0o600)
    return data, VerifierKey(name=ORIGIN, sig_type=0x01, public_key=key.public).to_text()


def push_config(keys: list[str], url: str) -> str:
    return (
        "[log]\n"
        f'origin = "{ORIGIN}"\n'
        f"witnesses = {json.dumps(keys)}\n"
        f'witness_urls = ["{url}"]\n'
        "push_interval = 0.1\n"
    )


def grow(url: str, n: int) -> None:
    async def go() -> None:
        async with RelayClient(url, retry=STRICT) as rc:
            q = await new_queue(rc)
            for _ in range(n):
                await send(rc, q, envelope())

    run(go())


def checkpoint(url: str) -> str:
    async def go() -> str:
        async with RelayClient(url, retry=STRICT) as rc:
            return await rc.log_checkpoint()

    return run(go())


def wait_cosigned(url: str, log_key: VerifierKey, keys: list[VerifierKey], size: int) -> str:
    """The relay's checkpoint once it carries ``keys``' cosignatures at ``size``."""
    deadline = time.monotonic() + 30
    while True:
        note = checkpoint(url)
        with contextlib.suppress(VerificationFailed):
            got = open_cosigned_checkpoint(note, log_key, keys, required=len(keys))
            if got.checkpoint.size == size:
                return note
        assert time.monotonic() < deadline, note
        time.sleep(0.1)


def witness_lines(note: str, name: str) -> list[str]:
    return [line + "\n" for line in note.splitlines() if line.startswith(f"{DASH}{name} ")]


def test_the_relay_pushes_to_a_witness_written_from_the_spec(tmp_path: Path) -> None:
    data, log_vkey = relay_data(tmp_path, "relay")
    log_key = VerifierKey.from_text(log_vkey)
    spec = SpecWitness("witness.example/spec", log_vkey)
    server, port = spec.serve()
    ed, pq = VerifierKey.from_text(spec.ed_vkey), VerifierKey.from_text(spec.pq_vkey)
    config = push_config([spec.ed_vkey, spec.pq_vkey], f"http://127.0.0.1:{port}")
    relay = start_relay(tmp_path, "relay", config, data=data)
    try:
        grow(relay.url, 3)
        note = wait_cosigned(relay.url, log_key, [ed, pq], 3)
        text = note.split("\n\n")[0] + "\n"
        lines = witness_lines(note, spec.name)
        assert [
            verify_cosignature(k, text, ln) > 0
            for k, ln in zip([spec.ed_vkey, spec.pq_vkey], lines, strict=True)
        ] == [True, True]
        # The relay's own two lines: Ed25519 (0x01) first, ML-DSA-44 (0x06).
        own = witness_lines(note, ORIGIN)
        assert len(own) == 2 and len(own[1]) > 3000
        relay.stop()
        # A new process knows nothing: old 0, a 409 with the witness's size
        # 3, then the retry from 3 with a proof the spec's algorithm checks.
        spec.seen.clear()
        relay = start_relay(tmp_path, "relay", config, data=data)
        grow(relay.url, 2)
        wait_cosigned(relay.url, log_key, [ed, pq], 5)
        assert spec.seen[:2] == [(0, 409), (3, 200)], spec.seen
        # Every refusal the spec lists: logged, nothing stored, the relay up.
        size = 5
        for mode in (400, 403, 404, 422, 409, "forge-pq"):
            spec.mode = mode
            spec.seen.clear()
            grow(relay.url, 1)
            size += 1
            deadline = time.monotonic() + 30
            while not spec.seen:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.3)
            note = checkpoint(relay.url)
            assert open_checkpoint(note, log_key).size == size
            assert witness_lines(note, spec.name) == [], (mode, note)
        # A stripped ML-DSA line: the Ed25519 cosignature alone is stored, and
        # a policy that requires the PQ cosignature refuses the checkpoint.
        spec.mode = "strip-pq"
        wait_cosigned(relay.url, log_key, [ed], size)
        note = checkpoint(relay.url)
        with pytest.raises(VerificationFailed):
            open_cosigned_checkpoint(note, log_key, [ed, pq], required=2)
        with pytest.raises(VerificationFailed):
            open_cosigned_checkpoint(note, log_key, [pq], required=1)
        spec.mode = None
        grow(relay.url, 1)
        wait_cosigned(relay.url, log_key, [ed, pq], size + 1)
        relay.stop()
        err = relay.err.read_text()
        for status in ("400", "403", "404", "422"):
            assert f"answered {status}" in err
        assert "bad_signature" in err
    finally:
        relay.kill()
        server.shutdown()
        server.server_close()


def test_the_relay_pushes_to_securechan_witness(
    tmp_path: Path, witness_home: tuple[Path, str, str]
) -> None:
    home, ed_vkey, pq_vkey = witness_home
    data, log_vkey = relay_data(tmp_path, "relay")
    log_key = VerifierKey.from_text(log_vkey)
    ed, pq = VerifierKey.from_text(ed_vkey), VerifierKey.from_text(pq_vkey)
    w = Witness(home, [log_vkey])
    relay = start_relay(
        tmp_path, "relay", push_config([ed_vkey, pq_vkey], f"http://127.0.0.1:{w.port}"), data=data
    )
    try:
        grow(relay.url, 4)
        note = wait_cosigned(relay.url, log_key, [ed, pq], 4)
        got = open_cosigned_checkpoint(note, log_key, [ed, pq], required=2)
        assert {c.cosigner.sig_type for c in got.cosignatures} == {0x04, 0x06}
        text = note.split("\n\n")[0] + "\n"
        for vkey, line in zip([ed_vkey, pq_vkey], witness_lines(note, ed.name), strict=True):
            verify_cosignature(vkey, text, line)
        # The relay's ML-DSA-44 line verifies under the key /v1/relay publishes.
        info = run(_info(relay.url))
        log_pq = VerifierKey.from_text(info["log_mldsa44_verifier_key"])
        assert open_note(note, [log_key, log_pq]).verified_by(log_pq) is not None
        # A forged or stripped witness ML-DSA line is refused by a policy
        # that requires the PQ cosignature.
        pq_line = witness_lines(note, ed.name)[1]
        stripped = note.replace(pq_line, "")
        open_cosigned_checkpoint(stripped, log_key, [ed, pq], required=1)
        with pytest.raises(VerificationFailed):
            open_cosigned_checkpoint(stripped, log_key, [ed, pq], required=2)
        raw = bytearray(base64.b64decode(pq_line.split(" ")[-1]))
        raw[-5] ^= 1
        forged = note.replace(pq_line, f"{DASH}{ed.name} {b64(bytes(raw))}\n")
        with pytest.raises(BadSignature):
            open_cosigned_checkpoint(forged, log_key, [ed, pq], required=2)
        # The witness's state follows the relay; the relay's next push goes on.
        grow(relay.url, 3)
        wait_cosigned(relay.url, log_key, [ed, pq], 7)
        relay.stop()
    finally:
        relay.kill()
        w.stop()
    state = json.loads((home / "witness.json").read_text())
    assert [open_checkpoint(e["note"], log_key).size for e in state["logs"]] == [7]


async def _info(url: str) -> dict[str, Any]:
    async with RelayClient(url, retry=STRICT) as rc:
        return await rc.info()


def test_the_client_requires_the_relays_ml_dsa_line(tmp_path: Path) -> None:
    """The client pins the log's ML-DSA-44 key with the Ed25519 one and
    refuses a checkpoint whose ML-DSA-44 line is missing or forged; a note
    verifier that knows only the Ed25519 key (Go's sumdb note, C2SP tools)
    still accepts the full note, ignoring the line it does not know."""
    data, log_vkey = relay_data(tmp_path, "relay")
    relay = start_relay(tmp_path, "relay", f'[log]\norigin = "{ORIGIN}"\n', data=data)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    db = ClientDB(home / "client.db", bytes(32))
    audit = AuditLog.open(home)
    pq_text = pq_vkey(relay.url)

    async def go() -> None:
        async with RelayClient(relay.url, retry=STRICT) as rc:

            async def connect(_: str) -> RelayClient:
                return rc

            logs = RelayLogs(db, audit, connect, lambda _: None, lambda *_: None)
            key = await logs.key(relay.url)
            assert key.to_text() == log_vkey
            q = await new_queue(rc)
            await send(rc, q, envelope())
            note = await rc.log_checkpoint()
            cp = open_checkpoint(note, key)
            _, pq_line = witness_lines(note, ORIGIN)
            stripped = note.replace(pq_line, "")
            raw = bytearray(base64.b64decode(pq_line.split(" ")[-1]))
            raw[40] ^= 1
            forged = note.replace(pq_line, f"{DASH}{ORIGIN} {b64(bytes(raw))}\n")
            for bad in (stripped, forged):
                with pytest.raises(BadSignature):
                    await logs.accept(relay.url, key, bad, cp)
                known = db.relay_log(relay.url)
                assert known is not None and known[1] is None  # nothing accepted
            await logs.accept(relay.url, key, note, cp)
            assert db.relay_log(relay.url) == (f"{log_vkey} {pq_text}", note)
            # Ed25519-only verifiers: the full note verifies, the extra line ignored.
            assert open_checkpoint(note, key) == cp
            assert len(open_note(note, [key]).unverified) == 1

    try:
        run(go())
        relay.stop()
    finally:
        relay.kill()
        db.close()


def pq_vkey(url: str) -> str:
    return str(run(_info(url))["log_mldsa44_verifier_key"])


def test_the_pull_mode_witness_posts_both_cosignatures(
    tmp_path: Path, witness_home: tuple[Path, str, str]
) -> None:
    """``securechan witness cosign`` (the witness fetches and posts) sends its
    ML-DSA-44 line too; a relay that lists both keys stores and serves both."""
    home, ed_vkey, pq_vkey = witness_home
    data, log_vkey = relay_data(tmp_path, "relay")
    log_key = VerifierKey.from_text(log_vkey)
    ed, pq = VerifierKey.from_text(ed_vkey), VerifierKey.from_text(pq_vkey)
    config = f'[log]\norigin = "{ORIGIN}"\nwitnesses = {json.dumps([ed_vkey, pq_vkey])}\n'
    relay = start_relay(tmp_path, "relay", config, data=data)
    try:
        grow(relay.url, 2)
        out = cli(home, "witness", "cosign", "--relay", relay.url, "--log-key", log_vkey)
        assert out.returncode == 0, out.stderr
        note = wait_cosigned(relay.url, log_key, [ed, pq], 2)
        text = note.split("\n\n")[0] + "\n"
        for vkey, line in zip([ed_vkey, pq_vkey], witness_lines(note, ed.name), strict=True):
            verify_cosignature(vkey, text, line)
        relay.stop()
    finally:
        relay.kill()
