"""The relay as adversary, end to end (issue 6; SECURITY-TESTS.md, "The relay
as adversary").

A real ``securechan relay serve`` runs on 127.0.0.1; each delegation talks to
it through its own :class:`~tests.adversary.MaliciousRelay` front, which the
test scripts to replay, reorder, drop, redirect, reflect, tamper with,
substitute bundles, forge receipts and fork the transparency log. The
delegations are driven by real ``securechan`` processes and by the library's
``Channel`` on the same home folders.

Every refusal is checked against the catalogue's five rules: the security
state of the home folder is byte-for-byte unchanged (sealed sessions with
their skipped keys, prekeys, replay guard, stored messages, relay log heads:
``session_states``); the peer is told nothing (no error goes back over the
relay at all); the reason is in the local audit log (``securechan log show
--json``); nothing unverified reaches stdout or the application; and refusals
before authentication are fast.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan import wire
from securechan.client.results import Received, Rejected
from securechan.identity import Keystore
from securechan.primitives import KDF_INTERACTIVE, random_bytes
from securechan.protocol import ratchet as ratchet_mod
from securechan.protocol import session as session_mod
from securechan.protocol.address import ContactCard, seal_prekey_blob
from securechan.protocol.handshake import FIRST
from securechan.protocol.prekeys import PrekeyStore
from securechan.protocol.ratchet import RatchetHeader
from tests.adversary import (
    Envelope,
    Party,
    RelayProcess,
    audit_rejections,
    b64e,
    running_relay,
    session_states,
)
from tests.adversary.parties import pin, receive_until, transcript
from tests.adversary.world import World, world_of
from tests.ndjson import ndjson, one

pytestmark = pytest.mark.timeout(180)

MESSAGE_TYPE = session_mod.MESSAGE.type_id


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay")) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pristine")


@pytest.fixture
def world(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    """tehran and washington, registered through their own fronts, verified,
    with the handshake done both ways."""
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington")
        yield w


# --- helpers -------------------------------------------------------------------------


def run(coro: Any, seconds: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


def send(p: Party, to: str, *texts: str) -> None:
    async def go() -> None:
        async with p.channel() as ch:
            for text in texts:
                assert (await ch.send_text(to, text)).pending == 0

    run(go())


def receive(p: Party) -> list[Received | Rejected]:
    async def go() -> list[Received | Rejected]:
        async with p.channel() as ch:
            return await ch.receive()

    result: list[Received | Rejected] = run(go())
    return result


def shown(items: list[Received | Rejected]) -> list[str]:
    return [x.text for x in items if isinstance(x, Received) and x.text is not None]


def refusals(items: list[Received | Rejected]) -> list[str]:
    return [x.reason for x in items if isinstance(x, Rejected)]


def cli_receive(p: Party) -> tuple[list[dict[str, Any]], list[str]]:
    """``securechan receive --json``: the JSON items and the stderr lines."""
    proc = p.run("receive", "--json")
    assert proc.returncode == 0, transcript(proc)
    return ndjson(proc.stdout), proc.stderr.splitlines()


def is_message(env: Envelope) -> bool:
    return wire.peek_type(env.data) == MESSAGE_TYPE


def new_rejections(home: Path, before: int) -> list[dict[str, Any]]:
    return audit_rejections(home)[before:]


class Unchanged:
    """Rule 1: the security state of a home is byte-for-byte the same."""

    def __init__(self, p: Party) -> None:
        self.p = p
        self.before = session_states(p.home)
        self.rejections = len(audit_rejections(p.home))

    def check(self) -> None:
        after = session_states(self.p.home)
        for key in self.before:
            assert after[key] == self.before[key], f"{self.p.name}: {key} changed"

    def audited(self) -> list[str]:
        """Rule 3: the reasons recorded since the snapshot."""
        return [r["reason"] for r in new_rejections(self.p.home, self.rejections)]


def rewrap(message: bytes, **changes: object) -> bytes:
    """A ratchet message with header fields changed (ciphertext kept)."""
    rec = wire.decode(session_mod.MESSAGE, message)
    header = RatchetHeader.from_bytes(rec["header"])
    fields: dict[str, object] = {
        name: getattr(header, name)
        for name in ("dh", "kem_pub", "root_ct", "pn", "n", "epoch_ct", "guard")
    }
    fields.update(changes)
    raw = wire.encode(ratchet_mod.HEADER, fields)
    return wire.encode(session_mod.MESSAGE, {"header": raw, "ciphertext": rec["ciphertext"]})


# --- replay -------------------------------------------------------------------------


def test_relay_replays_old_envelope(world: World) -> None:
    """An old envelope handed out again, under a new id and under its own id,
    to a recipient that restarted (each CLI run is a new process)."""
    t, w, fw = world.t, world.w, world.front["washington"]
    t.ok("send", "washington", "Tehran: the meeting is at noon.")
    items, _ = cli_receive(w)
    assert [x["text"] for x in items] == ["Tehran: the meeting is at noon."]
    old = [e for e in fw.fetched if is_message(e)][-1]

    state = Unchanged(w)
    fw.inject(old.data, queue=old.rid)  # a new message id: only the session can tell
    fw.inject(old.data, queue=old.rid, msg_id=old.msg_id)  # the same id
    items, err = cli_receive(w)
    assert items == [{"rejected": "replay", "error": items[0]["error"], "held": False}], items
    assert err == [], err
    state.check()
    assert state.audited() == ["replay"]  # one entry: the same id is dropped as seen
    # The reason as the user's own tool shows it.
    audit = [e for e in w.cli_audit() if e["kind"] == "rejected"]
    assert audit[-1]["fields"]["reason"] == "replay"
    # Shown once, in history too; the conversation goes on.
    history = ndjson(w.ok("history", "tehran", "--json"))
    assert [h["summary"] for h in history].count("Tehran: the meeting is at noon.") == 1
    t.ok("send", "washington", "Tehran: still here.")
    items, _ = cli_receive(w)
    assert [x["text"] for x in items] == ["Tehran: still here."]


# --- reorder ------------------------------------------------------------------------


def test_relay_reorders_envelopes(world: World) -> None:
    t, w, fw = world.t, world.w, world.front["washington"]
    fw.hold(is_message)
    send(t, "washington", "one", "two", "three")
    assert shown(receive(w)) == []
    assert fw.release(lambda held: [held[2], held[0], held[1]]) == 3
    items, _ = cli_receive(w)
    texts = [(x["text"], x["seq"]) for x in items]
    assert [x for x, _ in texts] == ["three", "one", "two"], items
    seqs = dict(texts)
    # Placed by the signed sequence numbers, not the order of arrival.
    assert seqs["two"] == seqs["one"] + 1 and seqs["three"] == seqs["two"] + 1
    notes = " ".join(n for x in items for n in x["notes"])
    assert f"messages {seqs['one']}..{seqs['two']}" in notes, items
    assert "late" in notes, items
    assert not any(x.get("rejected") for x in items)
    history = ndjson(w.ok("history", "tehran", "--json"))
    convo = [h for h in history if h["summary"] in ("one", "two", "three")]
    assert sorted(h["seq"] for h in convo) == [seqs["one"], seqs["two"], seqs["three"]]
    assert len(convo) == 3


# --- drop ---------------------------------------------------------------------------


def test_relay_drops_message_and_tail(world: World) -> None:
    t, w, fw = world.t, world.w, world.front["washington"]
    send(t, "washington", "m1")
    got = receive(w)
    assert shown(got) == ["m1"]
    first = next(x.seq for x in got if isinstance(x, Received) and x.text == "m1")

    # One message in the middle.
    dropped: list[bytes] = []

    def second(env: Envelope) -> bool:
        if is_message(env) and (not dropped or env.msg_id in dropped):
            dropped.append(env.msg_id)
            return True
        return False

    fw.drop(second)
    send(t, "washington", "m2", "m3")
    items, err = cli_receive(w)
    assert [x["text"] for x in items] == ["m3"], items
    assert f"messages {first + 1}..{first + 1} from tehran have not arrived" in items[0]["notes"]

    # The tail: nothing arrives, and nothing claims all is well.
    fw.reset()
    fw.drop(is_message)
    send(t, "washington", "m4", "m5")
    items, err = cli_receive(w)
    assert items == [] and err == []
    fw.reset()
    send(t, "washington", "m6")
    items, err = cli_receive(w)
    assert [x["text"] for x in items] == ["m6"]
    assert f"messages {first + 3}..{first + 4} from tehran have not arrived" in items[0]["notes"]
    # In plain output the gap is a note on stderr.
    fw.drop(is_message)
    send(t, "washington", "m7")
    assert cli_receive(w) == ([], [])
    fw.reset()
    send(t, "washington", "m8")
    proc = w.run("receive")
    assert proc.returncode == 0, transcript(proc)
    assert "m8" in proc.stdout and "m7" not in proc.stdout
    assert f"messages {first + 6}..{first + 6} from tehran have not arrived" in proc.stderr


# --- redirect and reflect -----------------------------------------------------------


@pytest.fixture
def world3(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    """tehran-washington and cairo-washington conversations, each with the
    handshake done."""
    with world_of(relay, pristine, tmp_path, ["tehran", "washington", "cairo"]) as w:
        w.introduce("tehran", "washington")
        w.introduce("cairo", "washington")
        yield w


def test_relay_redirects_envelope_to_another_queue(world3: World) -> None:
    """tehran's envelope for washington moved into washington's queue of the
    cairo conversation, and into cairo's own queue."""
    t, w, c = world3.t, world3.w, world3.c
    fw, fc = world3.front["washington"], world3.front["cairo"]
    fw.hold(is_message)
    send(t, "washington", "for washington only")
    assert shown(receive(w)) == []
    [env] = fw.held()
    other = [rid for rid, k in fw.queue_kinds.items() if k == "private" and rid != env.rid]
    assert len(other) == 1, fw.queue_kinds

    w_state, c_state = Unchanged(w), Unchanged(c)
    fw.inject(env.data, queue=other[0])  # the cairo conversation's queue
    fc.inject(env.data, queue="private")  # another recipient's queue
    got_w, got_c = receive(w), receive(c)
    assert shown(got_w) == [] and shown(got_c) == []
    assert len(refusals(got_w)) == 1 and len(refusals(got_c)) == 1, (got_w, got_c)
    w_state.check()
    c_state.check()
    assert w_state.audited() == refusals(got_w)
    assert c_state.audited() == refusals(got_c)
    # The envelope, delivered where it belongs, is shown once.
    fw.release()
    assert shown(receive(w)) == ["for washington only"]


def test_relay_reflects_own_message(world: World) -> None:
    t, w = world.t, world.w
    ft, fw = world.front["tehran"], world.front["washington"]
    send(w, "tehran", "Washington: our position")  # posted through tehran's front
    own = [x.body for x in ft.sent() if wire.peek_type(x.body) == MESSAGE_TYPE][-1]
    state = Unchanged(w)
    fw.inject(own, queue="private")
    items, _ = cli_receive(w)
    assert [x.get("rejected") for x in items] == [items[0]["rejected"]], items
    assert not [x for x in items if "text" in x]
    state.check()
    assert state.audited() == [items[0]["rejected"]]
    assert shown(receive(t)) == ["Washington: our position"]


# --- substituted bundles and identity keys ------------------------------------------


@pytest.fixture
def strangers(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    """tehran and washington registered and verified, no message yet."""
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington", hello=False)
        yield w


def _mallory(pristine: Path, tmp_path: Path) -> Party:
    """Another key under washington's name (what a relay would substitute)."""
    home = tmp_path / "mallory"
    Keystore(home).create("washington", "mallory's long passphrase", kdf=KDF_INTERACTIVE)
    return Party("washington", home, "mallory's long passphrase")


def test_relay_substitutes_prekey_bundle(strangers: World, pristine: Path, tmp_path: Path) -> None:
    t, w, fw = strangers.t, strangers.w, strangers.front["washington"]
    card = ContactCard.from_bytes(t.keystore.contacts.get("washington").card or b"")
    address_key = card.addresses[0].key
    mallory = _mallory(pristine, tmp_path)
    store = PrekeyStore.new(mallory.identity)
    now = int(time.time())
    store = store.rotate(mallory.identity, now=now).add_one_time(mallory.identity, 1, now=now)
    forged = {
        "signed": b64e(seal_prekey_blob(address_key, store.current_signed(now).to_bytes())),
        "one_time": b64e(seal_prekey_blob(address_key, store.one_time_records()[0].to_bytes())),
    }
    fw.on_response("bundle", lambda x, status, body: (200, json.dumps(forged).encode()))
    state = Unchanged(t)
    proc = t.run("send", "washington", "Tehran: for washington's eyes")
    assert proc.returncode == 1, transcript(proc)
    assert "bundle" in proc.stderr and len(proc.stderr.splitlines()) == 1, transcript(proc)
    state.check()
    assert one(t.ok("status", "--json"))["outbox"] == 0  # nothing encrypted to mallory
    assert [x for x in fw.sent() if x.status < 300] == []
    assert state.audited() == ["bundle-rejected"]
    # The real bundle works.
    fw.reset()
    t.ok("send", "washington", "Tehran: for washington's eyes")
    assert shown(receive(w)) == ["Tehran: for washington's eyes"]


def test_relay_substitutes_identity_key(world: World, pristine: Path, tmp_path: Path) -> None:
    """A first message from another key under a known contact's name, and the
    new key offered as the contact's: refused; sending stays with the pinned key."""
    t, w = world.t, world.w
    known = one(t.ok("contact", "show", "washington", "--json"))

    async def t_card() -> ContactCard:
        async with t.channel() as ch:
            return ch.card()

    mallory = _mallory(pristine, tmp_path)

    async def impersonate() -> None:
        async with mallory.channel() as ch:
            await ch.register(world.relay.url)
            pin(mallory, await_card)
            await ch.send_text("tehran", "Washington (new key): please resend everything")

    await_card = run(t_card())
    state = Unchanged(t)
    run(impersonate())
    proc = t.run("receive")
    assert proc.returncode == 0, transcript(proc)
    assert proc.stdout == "" and "resend everything" not in proc.stderr
    assert "unknown-sender" in proc.stderr, transcript(proc)
    state.check()
    assert state.audited() == ["unknown-sender"]
    # Offered as washington's new key, it is refused (exit 4) and not pinned.
    offered = tmp_path / "washington-new.id"
    offered.write_text(mallory.keystore.public_identity().to_text(), encoding="ascii")
    proc = t.run("contact", "add", str(offered))
    assert proc.returncode == 4, transcript(proc)
    assert one(t.ok("contact", "show", "washington", "--json")) == known
    # Sending goes on to the pinned key only.
    t.ok("send", "washington", "Tehran: to the key we verified")
    assert shown(receive(w)) == ["Tehran: to the key we verified"]
    assert shown(receive(mallory)) == []


# --- handshake messages and one-time keys --------------------------------------------


def test_relay_replays_first_message(world: World) -> None:
    t, w, fw = world.t, world.w, world.front["washington"]
    first = next(x.body for x in fw.sent() if wire.peek_type(x.body) == FIRST.type_id)
    state = Unchanged(w)
    fw.inject(first, queue="contact")
    items, _ = cli_receive(w)
    assert [x.get("rejected") for x in items] == ["replay"], items
    state.check()  # the existing session is not reset
    assert state.audited() == ["replay"]
    t.ok("send", "washington", "Tehran: same session")
    assert shown(receive(w)) == ["Tehran: same session"]


def test_relay_reuses_one_time_prekey(relay: RelayProcess, pristine: Path, tmp_path: Path) -> None:
    """The bundle tehran claimed (with its one-time key) served again to cairo:
    the second first message naming that key is refused."""
    with world_of(relay, pristine, tmp_path, ["tehran", "washington", "cairo"]) as world:
        world.introduce("tehran", "washington")
        world.introduce("cairo", "washington", hello=False)
        t, w, c, fw = world.t, world.w, world.c, world.front["washington"]
        [claimed] = [x.reply for x in fw.exchanges if x.kind == "bundle"]
        assert json.loads(claimed)["one_time"] is not None
        fw.on_response("bundle", lambda x, status, body: (200, claimed))
        state = Unchanged(w)
        c.ok("send", "washington", "Cairo: a word")
        items, err = cli_receive(w)
        # The first message is refused for its key; cairo's grant and text on
        # the same chain then open under no session (refused, not shown).
        reasons = [x.get("rejected") for x in items]
        assert reasons[0] == "unknown-prekey" and None not in reasons, items
        assert err == []
        state.check()
        assert state.audited() == reasons
        t.ok("send", "washington", "Tehran: unaffected")
        assert shown(receive(w)) == ["Tehran: unaffected"]


def test_relay_withholds_one_time_prekeys_and_strips_fields(strangers: World) -> None:
    t, w, fw = strangers.t, strangers.w, strangers.front["washington"]

    def withhold(x: Any, status: int, body: bytes) -> tuple[int, bytes]:
        data = json.loads(body)
        data["one_time"] = None
        return status, json.dumps(data).encode()

    fw.on_response("bundle", withhold)
    # Everything of the handshake is held (the first message, tehran's queue
    # grant and the text): see pending_bugs_adversary.py for what happens
    # when only the first message is delayed.
    fw.hold(lambda e: True)
    t.ok("send", "washington", "Tehran: first contact")
    assert receive(w) == []
    first = fw.held()[0]
    assert wire.peek_type(first.data) == FIRST.type_id
    rec = wire.decode(FIRST, first.data)
    assert rec.get("one_time_prekey_id") is None  # the signed prekey alone
    # Fields stripped or altered in flight: refused, and nothing half-made.
    variants = {
        "one-time id added": wire.encode(FIRST, {**rec, "one_time_prekey_id": 1}),
        "signed prekey id changed": wire.encode(
            FIRST, {**rec, "signed_prekey_id": rec["signed_prekey_id"] ^ 1}
        ),
        "sealed body cut": wire.encode(FIRST, {**rec, "sealed_body": rec["sealed_body"][:-1]}),
        "older wire version": b"\x00" + first.data[1:],
    }
    state = Unchanged(w)
    for data in variants.values():
        fw.inject(data, queue="contact")
    got = receive(w)
    assert shown(got) == [] and len(refusals(got)) == len(variants), got
    state.check()
    assert state.audited() == refusals(got)
    fw.release()
    final = receive_all(w)
    assert shown(final) == ["Tehran: first contact"], final


def test_relay_delays_first_message_behind_its_followers(strangers: World) -> None:
    """Reordering across the handshake: the first message held back while
    the grant and the text that follow it on the contact queue are
    delivered. Nothing is lost or shown twice once the first arrives."""
    t, w, fw = strangers.t, strangers.w, strangers.front["washington"]
    fw.hold(lambda e: wire.peek_type(e.data) == FIRST.type_id)
    t.ok("send", "washington", "Tehran: first contact")
    early = receive(w)
    assert shown(early) == []
    assert fw.release() == 1
    late = receive_all(w)
    assert shown(early + late) == ["Tehran: first contact"], (early, late)
    t.ok("send", "washington", "Tehran: and more")
    assert shown(receive(w)) == ["Tehran: and more"]


def receive_all(p: Party, want: int = 1) -> list[Received | Rejected]:
    async def go() -> list[Received | Rejected]:
        async with p.channel() as ch:
            return await receive_until(ch, want)

    result: list[Received | Rejected] = run(go())
    return result


# --- downgrade ----------------------------------------------------------------------


def test_relay_strips_pq_half_or_lowers_version(world: World) -> None:
    t, w, fw = world.t, world.w, world.front["washington"]
    fw.hold(is_message)
    send(t, "washington", "post-quantum")
    assert shown(receive(w)) == []
    [m] = fw.held()
    rec = wire.decode(session_mod.MESSAGE, m.data)
    header = wire.decode(ratchet_mod.HEADER, rec["header"])

    def without(name: str) -> bytes:
        schema = ratchet_mod.HEADER
        stripped = wire.Schema(
            schema.type_id, schema.name, tuple(f for f in schema.fields if f.name != name)
        )
        raw = wire.encode(stripped, {k: v for k, v in header.items() if k != name})
        return wire.encode(session_mod.MESSAGE, {"header": raw, "ciphertext": rec["ciphertext"]})

    variants = {
        "ML-KEM public key stripped": without("kem_pub"),
        "ML-KEM ciphertext stripped": without("root_ct"),
        "ML-KEM public key zeroed": rewrap(m.data, kem_pub=bytes(len(header["kem_pub"]))),
        "ML-KEM ciphertext zeroed": rewrap(m.data, root_ct=bytes(len(header["root_ct"]))),
        "wire version 0": b"\x00" + m.data[1:],
        "wire version 2": b"\x02" + m.data[1:],
        "relabelled as a first message": m.data[:1] + FIRST.type_id.to_bytes(2, "big") + m.data[3:],
    }
    state = Unchanged(w)
    for data in variants.values():
        fw.inject(data, queue="private")
    got = receive(w)
    assert shown(got) == [] and len(refusals(got)) == len(variants), got
    state.check()
    assert state.audited() == refusals(got)
    fw.release()
    assert shown(receive(w)) == ["post-quantum"]


def test_relay_strips_request_signature(world: World) -> None:
    """The sender's request signature removed on the way: the relay refuses
    to store; the message waits in the outbox and goes out once, later."""
    t, w, fw = world.t, world.w, world.front["washington"]

    def strip(x: Any) -> Any:
        x.headers.pop("Authorization", None)
        return x

    fw.on_request("send", strip)
    proc = t.run("send", "washington", "Tehran: signed request")
    assert proc.returncode == 3, transcript(proc)
    assert [x.status for x in fw.sent()][-1] == 401
    fw.reset()
    t.ok("send", "washington", "Tehran: and another")
    assert shown(receive(w)) == ["Tehran: signed request", "Tehran: and another"]


# --- huge counters and garbage keys ---------------------------------------------------


def test_relay_sends_huge_counter_or_garbage_key(world: World) -> None:
    t, w, fw = world.t, world.w, world.front["washington"]
    fw.hold(is_message)
    send(t, "washington", "counted")
    assert shown(receive(w)) == []
    [m] = fw.held()
    epoch = random_bytes(1088)
    variants = [
        rewrap(m.data, n=2**64 - 1, epoch_ct=epoch),
        rewrap(m.data, n=10**9, epoch_ct=epoch),
        rewrap(m.data, dh=random_bytes(32), n=10**9, epoch_ct=epoch),
        rewrap(m.data, dh=random_bytes(32), pn=2**64 - 1, n=0, epoch_ct=None),
        rewrap(m.data, dh=random_bytes(32)),
        rewrap(m.data, dh=bytes(32)),  # a low-order point
    ]
    state = Unchanged(w)
    for data in variants:
        fw.inject(data, queue="private")

    async def go() -> tuple[list[Received | Rejected], float, int]:
        async with w.channel() as ch:
            tracemalloc.start()
            start = time.perf_counter()
            got = await ch.receive()
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return got, elapsed, peak

    got, elapsed, peak = run(go())
    assert shown(got) == [] and len(refusals(got)) == len(variants), got
    assert set(refusals(got)) <= {"too-far-ahead", "decryption-failed", "malformed"}, got
    # Refused before any expensive work: no skipped-key derivation storm.
    assert elapsed < 5.0, elapsed
    assert peak < 32 << 20, peak
    state.check()
    assert state.audited() == refusals(got)
    fw.release()
    assert shown(receive(w)) == ["counted"]


# --- receipts and the transparency log ---------------------------------------------------


def outbox_rows(p: Party) -> int:
    conn = sqlite3.connect(f"file:{p.home / 'client.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def _relay_log(p: Party, url: str) -> Any:
    return [row for row in session_states(p.home)["relay_logs"] if row[0] == url]


def _flip_signature(note: str) -> str:
    lines = note.split("\n")
    i = max(k for k, line in enumerate(lines) if line.startswith("\u2014 "))
    sig = lines[i].rsplit(" ", 1)
    raw = bytearray(b64d_std(sig[1]))
    raw[-1] ^= 1
    lines[i] = f"{sig[0]} {base64.b64encode(bytes(raw)).decode()}"
    return "\n".join(lines)


def b64d_std(text: str) -> bytes:
    return base64.b64decode(text)


RECEIPT_FORGERIES: dict[str, Any] = {
    "checkpoint signature altered": lambda r: {**r, "checkpoint": _flip_signature(r["checkpoint"])},
    "inclusion proof altered": lambda r: {
        **r,
        "inclusion_proof": [base64.b64encode(random_bytes(32)).decode(), *r["inclusion_proof"][1:]],
    },
    "another leaf index": lambda r: {**r, "leaf_index": r["leaf_index"] + 1},
}


@pytest.mark.parametrize("forgery", sorted(RECEIPT_FORGERIES))
def test_relay_forges_log_receipt(world: World, forgery: str) -> None:
    """The relay's answer to a send carries a receipt that does not prove the
    envelope is in its log: refused (exit 1), the reason audited, the bad
    checkpoint not adopted; the message itself is delivered once."""
    t, w, fw = world.t, world.w, world.front["washington"]
    t.ok("send", "washington", "Tehran: first")
    head = _relay_log(t, fw.url)
    assert head and head[0][2] is not None
    change = RECEIPT_FORGERIES[forgery]

    def forge(x: Any, status: int, body: bytes) -> tuple[int, bytes]:
        data = json.loads(body)
        data["receipt"] = change(data["receipt"])
        return status, json.dumps(data).encode()

    fw.on_response("send", forge)
    before = len(audit_rejections(t.home))
    proc = t.run("send", "washington", "Tehran: second")
    assert proc.returncode == 1, transcript(proc)
    assert "receipt" in proc.stderr and len(proc.stderr.splitlines()) == 1, transcript(proc)
    assert _relay_log(t, fw.url) == head
    assert len(audit_rejections(t.home)) == before + 1
    assert one(t.ok("status", "--json"))["outbox"] == 0
    assert shown(receive(w)) == ["Tehran: first", "Tehran: second"]


def test_relay_strips_log_receipt(world: World) -> None:
    """No receipt at all: the envelope is not counted as delivered by the
    sender; it stays in the outbox and goes out (once) when the relay
    answers properly."""
    t, w, fw = world.t, world.w, world.front["washington"]

    def strip(x: Any, status: int, body: bytes) -> tuple[int, bytes]:
        data = json.loads(body)
        data.pop("receipt", None)
        return status, json.dumps(data).encode()

    fw.on_response("send", strip)
    proc = t.run("send", "washington", "Tehran: receipted?")
    assert proc.returncode != 0, transcript(proc)
    assert len(proc.stderr.splitlines()) == 1, transcript(proc)
    assert outbox_rows(t) == 1
    fw.reset()
    t.ok("send", "washington", "Tehran: and now")
    assert shown(receive(w)) == ["Tehran: receipted?", "Tehran: and now"]


def test_relay_shows_forked_log(world: World) -> None:
    """The relay shows tehran another history (a shadow log signed with the
    relay's own key, diverging by one leaf), then the real one again: the
    second checkpoint cannot be consistent with the first, and tehran says
    so with both signed notes as evidence."""
    t, w, fw = world.t, world.w, world.front["washington"]
    t.ok("send", "washington", "m1 (real log)")
    leaf = fw.fork(base="copy")
    assert fw.forked and leaf
    # A fork after what tehran saw, seen alone, is consistent with it: this
    # is why the checkpoints also travel between the parties.
    t.ok("send", "washington", "m2 (forked log)")
    forked_head = _relay_log(t, fw.url)
    fw.unfork()
    before = len(audit_rejections(t.home))
    proc = t.run("send", "washington", "m3 (real log again)")
    assert proc.returncode == 1, transcript(proc)
    line = proc.stderr.strip()
    assert "two histories" in line and len(proc.stderr.splitlines()) == 1, transcript(proc)
    assert _relay_log(t, fw.url) == forked_head  # the contradicted head is kept as evidence
    reasons = [r["reason"] for r in audit_rejections(t.home)[before:]]
    assert reasons == ["split-view"], reasons
    # The fork does not cost messages: each is delivered once.
    assert shown(receive(w)) == ["m1 (real log)", "m2 (forked log)", "m3 (real log again)"]
    # And it stays detected.
    assert t.run("send", "washington", "m4").returncode == 1


def test_relay_rolls_back_its_log(world: World) -> None:
    """A relay that restarts its log from nothing (a rewritten, truncated
    history) after tehran saw a larger checkpoint, and so cannot prove the
    old checkpoint consistent with the new one: a split view (exit 1, in the
    audit log); the smaller checkpoint is never adopted."""
    t, fw = world.t, world.front["washington"]
    t.ok("send", "washington", "m1")
    t.ok("send", "washington", "m2")
    head = _relay_log(t, fw.url)
    fw.fork(base="empty")
    before = len(audit_rejections(t.home))
    proc = t.run("send", "washington", "m3")
    assert proc.returncode == 1, transcript(proc)
    assert "two histories" in proc.stderr and len(proc.stderr.splitlines()) == 1, transcript(proc)
    assert _relay_log(t, fw.url) == head
    assert [r["reason"] for r in audit_rejections(t.home)[before:]] == ["split-view"]


def test_relay_answers_one_fetch_with_garbage(world: World) -> None:
    """A relay answering one queue's fetch with malformed JSON: that queue is
    reported (one line, audited), the others are still received."""
    t, w, fw = world.t, world.w, world.front["washington"]
    contact = fw.queue_of("contact")

    def garbage(x: Any, status: int, body: bytes) -> tuple[int, bytes]:
        return (status, b'{"messages": "garbage"}') if x.queue == contact else (status, body)

    fw.on_response("fetch", garbage)
    before = len(audit_rejections(w.home))
    t.ok("send", "washington", "on the private queue")
    proc = w.run("receive")
    assert proc.returncode == 0, transcript(proc)
    assert "on the private queue" in proc.stdout, transcript(proc)
    assert len(proc.stderr.splitlines()) == 1, transcript(proc)
    assert [r["reason"] for r in audit_rejections(w.home)[before:]] == ["malformed"]


def test_relay_refuses_queue_creation_while_receiving(strangers: World) -> None:
    """The recipient's own relay refuses to create the private queue its
    grant needs (after the first message was fetched): the message is still
    shown (it is stored and acknowledged already), the grant follows on a
    later pass, and the conversation moves to the private queue."""
    t, w, fw = strangers.t, strangers.w, strangers.front["washington"]
    t.ok("send", "washington", "Tehran: first contact")
    fw.fail("create", status=503, times=-1)
    assert shown(receive(w)) == ["Tehran: first contact"]
    fw.reset()
    assert shown(receive(w)) == []  # the grant goes out now
    assert shown(receive(t)) == []  # tehran takes it
    t.ok("send", "washington", "Tehran: on your private queue")
    assert shown(receive(w)) == ["Tehran: on your private queue"]
