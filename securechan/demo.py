"""``securechan demo``: the back-channel, played on this machine.

The scenario of the project: two delegations ("tehran" and "washington")
talk through a mediator ("muscat") who runs a relay; a second mediator
("geneva") runs a relay of its own and witnesses muscat's log. Everything is
real: two ``securechan relay serve`` processes on free loopback ports,
home folders with encrypted keystores, the library's :class:`Channel` for
each delegation, and muscat's cheating done by a proxy in front of its relay
(:class:`~securechan.testing.malicious_relay.MaliciousRelay`), which is what
a mediator controls: what its relay stores, hands out and signs.

Then the mediator attacks: it reads its own database, tampers with an
envelope, replays one, drops one, shows the two delegations different
histories of its log, and answers with an error made to drive a terminal.
Each attempt must be caught. Then a statement of one message is verified
as a third party would, and both audit logs verified. Last, a group scene
(:mod:`securechan.demo_groups`): the mediator and both delegations in one
group, a member removed, and a member who shows others different content
caught.

Every step is a :class:`Step` (title, whether it held, details); the CLI
decides how to show them. A run is good only if every step held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from securechan import strict_json, wire
from securechan.audit.checkpoint import open_checkpoint, open_cosigned_checkpoint
from securechan.audit.log import AuditLog
from securechan.audit.note import VerifierKey
from securechan.audit.statement import Statement, verify_statement
from securechan.audit.witness_store import WitnessHome, WitnessKey
from securechan.client.channel import Channel
from securechan.client.policy import refresh_witnessed, set_policy, witnessed_statement
from securechan.client.results import Received, Rejected
from securechan.client.witness import witness_round
from securechan.demo_groups import group_scene
from securechan.errors import MalformedInput, Reason, SecurechanError
from securechan.identity import Identity, Keystore
from securechan.primitives import Ed25519SigningKey, KdfParams, random_bytes
from securechan.protocol.session import MESSAGE
from securechan.terminal_text import inline, is_flagged
from securechan.testing.malicious_relay import Envelope, MaliciousRelay
from securechan.transport import RetryPolicy

__all__ = ["COMMUNIQUE", "Step", "run_demo"]

COMMUNIQUE = (
    b"DRAFT JOINT COMMUNIQUE\n"
    b"The two delegations met through the good offices of the mediator and\n"
    b"agreed to resume technical talks within thirty days.\n"
)
PEOPLE = ("tehran", "washington")
# Words the mediator would love to find in its database.
SECRETS = (b"ceasefire", b"COMMUNIQUE", b"thirty days", b"tehran", b"washington")
_FAST = RetryPolicy(attempts=2, base=0.05, cap=0.2, timeout=10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step of the demo: a stable id, a title, what was seen, and whether
    it held (for an attack: whether it was caught)."""

    id: str
    title: str
    ok: bool
    details: dict[str, str] = field(default_factory=dict)
    attack: bool = False

    def to_json(self) -> dict[str, str | bool | dict[str, str]]:
        """The step as ``securechan demo --json`` prints it (docs/CLI.md)."""
        return {
            "id": self.id,
            "title": self.title,
            "ok": self.ok,
            "attack": self.attack,
            "details": dict(self.details),
        }


def _refused_once(step_id: str, title: str, got: list[Received], bad: list[Rejected]) -> Step:
    """An attack step that holds when nothing was shown and one envelope was
    refused; the reason it was refused as is in the details."""
    return Step(
        id=step_id,
        title=title,
        ok=not got and len(bad) == 1,
        attack=True,
        details={"refused as": bad[0].reason if bad else "NOT REFUSED"},
    )


class _Relay:
    """A ``securechan relay serve`` child process."""

    def __init__(self, name: str, data: Path) -> None:
        self.name, self.data = name, data
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data.parent / f"{self.name}.log", "ab")  # noqa: SIM115 (child owns it)
        self.proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [
                sys.executable,
                "-m",
                "securechan",
                "relay",
                "serve",
                "--port",
                "0",
                "--data",
                str(self.data),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        log.close()
        assert self.proc.stdout is not None  # noqa: S101 (PIPE above)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(r"listening on (http://127\.0\.0\.1:\d+)$", line.strip())
            if m:
                self.url = m.group(1)
                return
        self.stop()
        raise RuntimeError(f"the {self.name} relay did not start (see {self.name}.log)")

    def log_key(self) -> VerifierKey:
        with urllib.request.urlopen(f"{self.url}/v1/relay", timeout=10) as r:  # noqa: S310
            info = strict_json.loads(r.read(1 << 16), max_size=1 << 16, what="the relay's info")
        if not isinstance(info, dict) or not isinstance(info.get("log_verifier_key"), str):
            raise MalformedInput("the relay's info names no log key")
        return VerifierKey.from_text(info["log_verifier_key"])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run_demo(folder: Path, *, kdf: KdfParams) -> Iterator[Step]:
    """Run the scenario in ``folder`` (empty or absent); yield each step as
    it happens. Relays and proxies are stopped whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    stack = contextlib.ExitStack()
    scenario = _Scenario(folder, kdf, stack)
    steps = scenario.run()
    try:
        while True:
            try:
                yield loop.run_until_complete(steps.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(steps.aclose())
        loop.run_until_complete(scenario.close())
        stack.close()
        loop.close()


class _Scenario:
    def __init__(self, folder: Path, kdf: KdfParams, stack: contextlib.ExitStack) -> None:
        self.folder, self.kdf, self.stack = folder, kdf, stack
        self.ch: dict[str, Channel] = {}
        self.front: dict[str, MaliciousRelay] = {}
        self.ids: dict[str, Identity] = {}
        self.log_key: VerifierKey | None = None

    async def close(self) -> None:
        for ch in self.ch.values():
            await ch.close()

    # --- helpers ---------------------------------------------------------------------

    async def _receive(self, name: str) -> tuple[list[Received], list[Rejected]]:
        got = await self.ch[name].receive()
        return (
            [x for x in got if isinstance(x, Received)],
            [x for x in got if isinstance(x, Rejected)],
        )

    async def run(self) -> AsyncGenerator[Step, None]:
        # --- 1. The mediators' relays ------------------------------------------------
        relays = {n: _Relay(n, self.folder / n / "data") for n in ("muscat", "geneva")}
        muscat, geneva = relays["muscat"], relays["geneva"]
        # geneva witnesses muscat's log: muscat's operator lists geneva's key.
        witness = WitnessKey("geneva.example/witness", Ed25519SigningKey.generate())
        witness_home = WitnessHome(self.folder / "geneva" / "witness")
        muscat.data.mkdir(parents=True)
        (muscat.data / "witnesses.txt").write_text(witness.verifier.to_text() + "\n", "utf-8")
        for r in relays.values():
            r.start()
            self.stack.callback(r.stop)
        log_key = self.log_key = muscat.log_key()
        yield Step(
            id="relays",
            title="muscat and geneva each run a relay (real processes on loopback)",
            ok=bool(muscat.url and geneva.url),
            details={
                "muscat": muscat.url,
                "geneva": geneva.url,
                "muscat's log key": log_key.to_text(),
            },
        )
        for name in PEOPLE:
            front = MaliciousRelay(
                muscat.url, muscat.data, self.folder / "muscat" / f"front-{name}"
            )
            front.start()
            self.stack.callback(front.close)
            self.front[name] = front

        # --- 2. The delegations ----------------------------------------------------------
        for name in PEOPLE:
            t0 = time.perf_counter()
            store = Keystore(self.folder / name)
            self.ids[name] = store.create(name, random_bytes(18).hex(), kdf=self.kdf)
            self.ch[name] = Channel(store, self.ids[name], retry=_FAST)
            await self.ch[name].register(self.front[name].url)
            card = await self.ch[name].register(geneva.url)  # a second, redundant path
            yield Step(
                id=f"identity-{name}",
                title=f"{name}: identity created (ML-DSA-65 + Ed25519), registered at muscat "
                "and geneva",
                ok=card.identity.fingerprint == self.ids[name].fingerprint,
                details={
                    "fingerprint": str(self.ids[name].fingerprint),
                    "seconds": f"{time.perf_counter() - t0:.2f}",
                },
            )
        t, w = self.ch["tehran"], self.ch["washington"]
        for me, other in (("tehran", "washington"), ("washington", "tehran")):
            card = self.ch[other].card()
            self.ch[me].keystore.contacts.add(card.identity, card=card.to_bytes())
        own = {n: self.ids[n].public for n in PEOPLE}
        sn_t = t.keystore.contacts.safety_number("washington", own["tehran"])
        sn_w = w.keystore.contacts.safety_number("tehran", own["washington"])
        t.keystore.contacts.verify("washington", str(sn_w), own["tehran"])
        w.keystore.contacts.verify("tehran", str(sn_t), own["washington"])
        yield Step(
            id="verify-contacts",
            title="contact files exchanged; both read out the same safety number and verify",
            ok=sn_t == sn_w
            and t.keystore.contacts.get("washington").verified
            and w.keystore.contacts.get("tehran").verified,
            details={"safety number": str(sn_t), "words": sn_t.words_text},
        )

        # --- 3. The conversation -----------------------------------------------------------
        # First contact goes to both relays; muscat refuses service meanwhile.
        line = "Tehran: we accept a ceasefire from 06:00 on the 3rd, if the text holds."
        self.front["washington"].refuse_service(503)
        sent = await t.send_text("washington", line)
        got, bad = await self._receive("washington")
        texts = [x.text for x in got if x.text]
        unreachable = [x for x in bad if x.reason == Reason.RELAY_ERROR]
        yield Step(
            id="message",
            title="muscat refuses service; tehran's first message arrives through geneva, "
            "decrypted and verified",
            ok=texts == [line]
            and got[-1].verified
            and sent.pending > 0
            and len(unreachable) == len(bad),
            attack=True,
            details={
                "text": line,
                "seq": str(got[-1].seq if got else "-"),
                "envelopes posted / waiting for muscat": f"{sent.delivered} / {sent.pending}",
            },
        )
        self.front["washington"].refuse_service(None)
        delivered, pending = await t.flush_outbox()
        # Before washington fetches the late copies, muscat looks at what it stores.
        yield self._mediator_reads(muscat)
        got, bad = await self._receive("washington")
        yield Step(
            id="redundant",
            title="muscat serves again: tehran's outbox delivers there too; "
            "the late copies are not shown twice",
            ok=delivered > 0 and pending == 0 and not got and not bad,
            details={"late envelopes delivered to muscat": str(delivered), "shown again": "none"},
        )
        await w.send_file("tehran", "communique-draft.txt", COMMUNIQUE)
        got, bad = await self._receive("tehran")
        files = [x for x in got if x.file_data is not None]
        yield Step(
            id="file",
            title="washington sends the draft communiqué as a signed file; tehran gets it intact",
            ok=len(files) == 1 and files[0].file_data == COMMUNIQUE and not bad,
            details={"file": "communique-draft.txt", "bytes": str(len(COMMUNIQUE))},
        )
        await t.send_receipt("washington")
        got, bad = await self._receive("washington")
        receipts = [x for x in got if x.receipt_matches is not None]
        yield Step(
            id="receipt",
            title="tehran signs a receipt for what it got; washington checks it against its record",
            ok=len(receipts) == 1 and receipts[0].receipt_matches is True and not bad,
            details={"receipt": "matches washington's own record of what it sent"},
        )
        # Every send above came back with muscat's log receipt, checked by the
        # client; geneva now witnesses muscat's newest checkpoint.
        result = await witness_round(muscat.url, witness_home, witness, log_key, clock=time.time)
        with urllib.request.urlopen(f"{muscat.url}/v1/log/checkpoint", timeout=10) as r:  # noqa: S310
            note = r.read().decode("utf-8")
        cosigned = open_cosigned_checkpoint(note, log_key, [witness.verifier], required=1)
        # Each delegation's policy: muscat's checkpoints count once geneva
        # has cosigned them (docs/AUDIT.md, Witnesses).
        held = []
        for name in PEOPLE:
            for url in {f.url for f in self.front.values()}:
                set_policy(self.ch[name], url, [witness.verifier], 1)
            seen = await refresh_witnessed(self.ch[name], self.front["washington"].url)
            held.append(seen is not None and seen.checkpoint.size == cosigned.checkpoint.size)
        yield Step(
            id="witness",
            title="every send carried a log receipt; geneva witnesses muscat's log and cosigns",
            ok=result.status in ("cosigned", "unchanged")
            and len(cosigned.cosignatures) == 1
            and all(held),
            details={
                "log size": str(cosigned.checkpoint.size),
                "root": cosigned.checkpoint.root_hash.hex()[:32] + "...",
                "cosigned by": witness.verifier.name,
                "policy": "each delegation requires geneva's cosignature",
            },
        )
        statement_id = next(
            mid for c, d, _, _, s, mid in t.history("washington") if d == "out" and s == line
        )

        # --- 4. The mediator attacks -------------------------------------------------------
        async for step in self._attacks():
            yield step

        # --- 5. The record -----------------------------------------------------------------
        st, witnessed = await witnessed_statement(t, statement_id)
        path = self.folder / "statement.txt"
        path.write_text(st.to_text(), encoding="ascii")
        third_party = verify_statement(
            Statement.from_text(path.read_text("ascii")),
            trust_relay=log_key,
            trust_witnesses=[witness.verifier],
        )
        yield Step(
            id="statement",
            title="tehran exports its message as a statement; a third party verifies it offline",
            ok=third_party.sender.name == "tehran"
            and third_party.recipient.name == "washington"
            and third_party.payload.content() == line
            and third_party.log is not None
            and witnessed
            and len(third_party.log.cosignatures) == 1,
            details={
                "file": str(path),
                "from": f"tehran ({third_party.sender.fingerprint})",
                "to": "washington",
                "in muscat's log": f"leaf {third_party.log.leaf_index} of "
                f"{third_party.log.checkpoint.size}"
                if third_party.log
                else "-",
                "cosigned by": ", ".join(
                    f"{c.cosigner.name} at {time.strftime('%H:%M:%S', time.gmtime(c.timestamp))}"
                    for c in (third_party.log.cosignatures if third_party.log else ())
                )
                or "nobody",
            },
        )
        edited = path.read_text("ascii").replace("A", "B", 1)
        try:
            verify_statement(Statement.from_text(edited), trust_relay=log_key)
            caught = False
        except SecurechanError:
            caught = True
        yield Step(
            id="attack-statement-edit",
            title="the same statement with one character changed fails",
            ok=caught,
            attack=True,
        )
        for name in PEOPLE:
            await self.ch[name].close()
            with AuditLog.open(self.folder / name, read_only=True) as log:
                report = log.verify(self.ids[name].public)
                refused = sum(1 for e in log.entries() if e.kind == "rejected")
            yield Step(
                id=f"audit-log-{name}",
                title=f"{name}: audit log verified (hash chain and signed checkpoints)",
                ok=report.entries > 0 and report.last_checkpoint is not None,
                details={"entries": str(report.entries), "refusals recorded": str(refused)},
            )
        self.ch.clear()

        # --- 6. A group: the mediator and both delegations (demo_groups.py) ---------------
        async for step in group_scene(self.folder / "group", muscat.url, self.kdf, Step):
            yield step

    def _mediator_reads(self, muscat: _Relay) -> Step:
        """muscat opens its own database: what can it learn?"""
        db = sqlite3.connect(f"file:{muscat.data / 'relay.db'}?mode=ro", uri=True)
        try:
            sizes = [n for (n,) in db.execute("SELECT length(data) FROM envelopes ORDER BY seq")]
        finally:
            db.close()
        raw = b"".join(p.read_bytes() for p in muscat.data.glob("relay.db*"))
        found = [s.decode() for s in SECRETS if s in raw or s.upper() in raw]
        return Step(
            id="attack-read",
            title="muscat reads its own database: only padded ciphertext, no names, no words",
            ok=bool(sizes) and not found,
            attack=True,
            details={
                "envelope sizes (bytes)": ", ".join(map(str, sizes)),
                "secrets found": ", ".join(found) or "none",
            },
        )

    async def _attacks(self) -> AsyncIterator[Step]:
        t, w = self.ch["tehran"], self.ch["washington"]
        front = self.front["washington"]
        delivered = [e for e in front.fetched if _is_message(e)]
        original = delivered[0]

        # Tamper: one bit of the next envelope flipped on its way through.
        def flip(data: bytes) -> bytes:
            out = bytearray(data)
            out[len(out) // 2] ^= 0x01
            return bytes(out)

        front.tamper(_is_message, flip)
        await t.send_text("washington", "Tehran: point 2, the monitors.")
        got, bad = await self._receive("washington")
        yield _refused_once(
            "attack-tamper",
            "muscat flips one bit of an envelope in transit: refused, nothing shown",
            got,
            bad,
        )
        # Replay: the same envelope again, under a new message id.
        front.inject(original.data, queue=original.rid)
        got, bad = await self._receive("washington")
        yield _refused_once(
            "attack-replay",
            "muscat replays an old envelope: refused as a replay, shown once only",
            got,
            bad,
        )
        # Drop: the next message never reaches washington.
        front.drop(lambda e: _is_message(e))
        await t.send_text("washington", "Tehran: point 3, the observers.")
        await self._receive("washington")
        front.reset()
        await t.send_text("washington", "Tehran: point 4, the timetable.")
        got, bad = await self._receive("washington")
        notes = [n for x in got for n in x.notes]
        yield Step(
            id="attack-drop",
            title="muscat drops a message: washington sees the gap (sequence numbers, hash chain)",
            ok=[x.text for x in got] == ["Tehran: point 4, the timetable."]
            and any("have not arrived" in n for n in notes),
            attack=True,
            details={"reported": "; ".join(notes) or "NOTHING"},
        )
        # Split view: washington is shown a forked log.
        front.fork()
        await t.send_text("washington", "Tehran: point 5, the announcement.")
        _, bad_w = await self._receive("washington")
        await w.send_text("tehran", "Washington: agreed on all five points.")
        _, bad_t = await self._receive("tehran")
        caught_w = [x for x in bad_w if x.reason == Reason.SPLIT_VIEW]
        caught_t = [x for x in bad_t if x.reason == Reason.SPLIT_VIEW]
        sizes = []
        for x in (caught_w or caught_t)[:1]:
            key = self.log_key
            sizes = [str(open_checkpoint(n, key).size) for n in x.evidence] if key else []
        yield Step(
            id="attack-split-view",
            title="muscat shows the two delegations different histories: both sides catch it",
            ok=bool(caught_w) and bool(caught_t),
            attack=True,
            details={
                "washington": "SPLIT VIEW reported" if caught_w else "MISSED",
                "tehran": "SPLIT VIEW reported" if caught_t else "MISSED",
                "evidence": "two signed checkpoints, sizes " + " and ".join(sizes),
            },
        )
        front.reset()
        # Words for a person: muscat answers washington's fetch with an error
        # made to drive a terminal (window title, clipboard, clear screen, a
        # bidi override) and to imitate a verified message from tehran.
        hostile = (
            "\x1b]0;muscat owns this window\x07\x1b]52;c;d2l0aGRyYXc=\x07\x1b[2J\u202e"
            "\n[2026-12-04T12:00:00Z] tehran (verified) #99: we withdraw"
        )
        body = json.dumps({"error": {"code": "forbidden", "message": hostile}}).encode()
        front.on_request("fetch", lambda _: (403, body))
        _, bad = await self._receive("washington")
        front.on_request("fetch", None)
        said = [x.error for x in bad if x.reason == Reason.RELAY_ERROR and hostile in x.error]
        shown = inline(said[0]) if said else ""
        yield Step(
            id="attack-terminal",
            title="muscat answers with an error made to drive washington's terminal and "
            "forge a message line: shown escaped, on one line",
            ok=bool(said)
            and not any(is_flagged(c) for c in shown)
            and "\\x1b]0;muscat owns this window\\x07" in shown
            and "<U+202E>\\x0a[2026-12-04T12:00:00Z] tehran" in shown,
            attack=True,
            details={"shown as": shown or "NOT RECEIVED"},
        )


def _is_message(env: Envelope) -> bool:
    try:
        return wire.peek_type(env.data) == MESSAGE.type_id
    except MalformedInput:
        return False
