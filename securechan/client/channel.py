"""The high-level channel: identity + contacts + sessions + relays + record.

:class:`Channel` is what the CLI and ``import securechan`` users drive::

    async with Channel.open(home, passphrase) as ch:
        await ch.register("http://127.0.0.1:8470")
        await ch.send_text("washington", "We accept the draft.")
        for item in await ch.receive():
            print(item.contact, item.text)

Queues (``docs/RELAY.md`` §2): each delegation registers a **contact
address** (a public queue) at one or more relays and publishes its prekeys
there, sealed under the address key. A first message goes to the peer's
contact address; it carries a **queue grant** for a private queue the sender
created for the replies. The responder answers through that queue and grants
its own, after which both directions use private queues secured with sender
keys. The relays never learn who talks to whom beyond network addresses.

Reliability (``docs/RELAY.md`` §6): an envelope is written to the outbox in
the same transaction as the session state that produced it, *then* posted;
a crash before the relay's 2xx leaves it in the outbox, and the next command
posts it again with the same message id, which the relay and the recipient
both de-duplicate. A received envelope is acknowledged to the relay only after
the new session state and the message are committed locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from securechan import wire
from securechan.audit.log import AuditLog
from securechan.audit.note import VerifierKey, keep_signatures
from securechan.audit.receipt import Receipt as LogReceipt
from securechan.audit.receipt import envelope_leaf_hash, verify_receipt
from securechan.audit.statement import LogPlacement, Statement, message_id
from securechan.client.db import ClientDB, HeldRow, QueueRow, SessionRow, StoredMessage
from securechan.client.logview import RelayLogs
from securechan.client.policy import check_witnessed
from securechan.client.results import Received, Rejected, SendResult
from securechan.errors import (
    BundleRejected,
    ContactNotFound,
    ConversationInUse,
    MalformedInput,
    MessageRejected,
    NoIdentity,
    NotFound,
    Reason,
    RelayError,
    Replay,
    RolledBack,
    SecurechanError,
    SplitView,
    StorageError,
    UnknownPrekey,
    UnknownSender,
    UntrustedKey,
    UsageError,
    VerificationFailed,
    reason_of,
)
from securechan.identity import Contact, Identity, Keystore
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.primitives import (
    Ed25519SigningKey,
    check_ed25519_public_key,
    random_bytes,
    sha256,
    sha512,
)
from securechan.protocol.address import (
    ContactAddress,
    ContactCard,
    QueueGrant,
    open_prekey_blob,
    seal_prekey_blob,
)
from securechan.protocol.handshake import FIRST, FirstMessage, ReplayGuard
from securechan.protocol.opening import open_envelope
from securechan.protocol.ordering import (
    CHAIN,
    SENDER,
    Bounds,
    Budget,
    Hold,
    HoldQueue,
    Retry,
    may_be_early,
)
from securechan.protocol.payload import (
    ContentType,
    FileChunk,
    Receipt,
    SignedPayload,
    message_text,
)
from securechan.protocol.prekeys import Prekey, PrekeyBundle, PrekeyStore
from securechan.protocol.ratchet import RatchetHeader
from securechan.protocol.session import (
    MESSAGE,
    Event,
    MessageReceived,
    MessagesMissing,
    OutOfOrder,
    ReceiptChecked,
    Session,
    message_chain,
)
from securechan.transport import FetchedEnvelope, RelayClient, RetryPolicy

__all__ = ["Channel", "Received", "Rejected", "SendResult", "sanitize_filename"]

ONE_TIME_BATCH = 20
ONE_TIME_LOW = 5
_REG = wire.Schema(
    0x00B0,
    "Registration",
    (
        wire.Field(1, "relay", wire.Kind.TEXT, max_len=512),
        wire.Field(2, "relay_key", wire.Kind.BYTES, size=32),
        wire.Field(3, "rid", wire.Kind.BYTES, size=16),
        wire.Field(4, "sid", wire.Kind.BYTES, size=16),
        wire.Field(5, "recipient_seed", wire.Kind.BYTES, size=32),
        wire.Field(6, "address_key", wire.Kind.BYTES, size=32),
    ),
)
_REGS = wire.Schema(
    0x00B1,
    "Registrations",
    (wire.Field(1, "items", wire.Kind.LIST, max_len=64 * 400, schema=_REG, max_items=64),),
)
_RECORD = wire.Schema(
    0x00B2,
    "StoredRecord",
    (
        wire.Field(1, "signed", wire.Kind.BYTES, max_len=1 << 17),
        wire.Field(2, "contact", wire.Kind.TEXT, max_len=64),
        # The envelope that carried it, its message key and the session's
        # transcript hash: what a statement reveals (audit/statement.py).
        wire.Field(3, "envelope", wire.Kind.BYTES, max_len=(1 << 20) + 65536, optional=True),
        wire.Field(4, "key", wire.Kind.BYTES, size=32, optional=True),
        wire.Field(5, "ad", wire.Kind.BYTES, size=32, optional=True),
        # The relay a received envelope came from (for its log receipt).
        wire.Field(6, "relay", wire.Kind.TEXT, max_len=2048, optional=True),
    ),
)
# A session's handshake transcript and the initiator's signature over it,
# kept (sealed, write-once) for statements: they show a third party which
# session a message belongs to (audit/statement.py).
_HANDSHAKE = wire.Schema(
    0x00B3,
    "StoredHandshake",
    (
        wire.Field(1, "transcript", wire.Kind.BYTES, max_len=8192),
        wire.Field(2, "signature", wire.Kind.BYTES, max_len=8192),
    ),
)


@dataclass(frozen=True, slots=True)
class _Sent:
    """One message we sent, as kept in our record."""

    seq: int
    signed: bytes
    envelope: bytes
    key: bytes
    ad: bytes


UnknownPolicy = Literal["refuse", "hold"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Registration:
    relay: str
    relay_key: bytes
    rid: bytes
    sid: bytes
    recipient_seed: bytes
    address_key: bytes

    def address(self) -> ContactAddress:
        return ContactAddress(relay=self.relay, sid=self.sid, key=self.address_key)


_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(10)}


def sanitize_filename(name: str) -> str:
    """A safe file name from a peer-supplied one: one path component of
    letters, digits, ``.``, ``_``, ``-`` and spaces; no leading dot, no
    trailing dot or space; not a Windows device name (with any extension);
    at most 100 characters, keeping a short extension. (magic-wormhole's
    CVE-2026-42448 was a peer-supplied path.)"""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c if (c.isascii() and (c.isalnum() or c in "._- ")) else "_" for c in base)
    stem, dot, ext = clean.strip(" .").rpartition(".")
    if not dot or len(ext) > 10:
        stem, ext = clean.strip(" ."), ""
    stem = stem[: 100 - (len(ext) + 1 if ext else 0)].strip(" .") or "file"
    if stem.split(".", 1)[0].strip(" ").upper() in _DEVICES:
        stem = "_" + stem
    return f"{stem}.{ext}" if ext else stem


# What is held, for how long, and when it is retried is decided by the pure
# machine in securechan/protocol/ordering.py (HoldQueue); the client stores
# its rows (client.db's held / held_keys tables) and does what it decides.
# A message that arrives ahead of its session's first message is held
# EARLY_GRACE seconds for the first message to come, and at most MAX_HELD
# envelopes, MAX_HELD_BYTES in all, are held (held first messages of unknown
# senders included); past that, what would be held is refused at once.
# Work before authentication, per contact queue and receive pass:
# UNAUTH_TRIES failed expensive attempts (a ratchet decryption that could
# involve a decapsulation and up to 2 x MAX_SKIP chain steps, or a first
# message's HPKE open); the rest of the queue waits for the next pass.
HOLD = Bounds()
EARLY_GRACE = HOLD.grace
MAX_HELD = HOLD.count
MAX_HELD_BYTES = HOLD.size
UNAUTH_TRIES = HOLD.tries
# Envelopes set aside after an unexpected failure: the newest kept in client.db.
MAX_PARKED = 64
# Refusals decided by a lookup, per reason, queue and pass: this many are
# audited and reported one by one, the rest in one entry with their count.
AUDIT_EACH = 8


class _Unexpected(Exception):
    """An exception no stage of the receive pipeline expects (a bug, a
    database constraint): the envelope is set aside, the queue moves on."""

    def __init__(self, stage: str, error: Exception) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error

    def describe(self) -> str:
        return f"{type(self.error).__name__}: {str(self.error)[:200]}"


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Name the pipeline stage for anything unexpected raised inside it.
    Refusals (the errors tree; a ValueError from a parser) pass unchanged, as
    does a failing store (sqlite3.OperationalError: the disk, a lock)."""
    try:
        yield
    except (SecurechanError, ValueError, _Unexpected, sqlite3.OperationalError):
        raise
    except Exception as e:
        raise _Unexpected(name, e) from e


@dataclass(slots=True)
class _Pass:
    """One receive pass: its budget of unauthenticated work and what it
    read once."""

    budget: Budget = field(default_factory=lambda: Budget.of(HOLD))
    sessions: dict[bytes, Session] = field(default_factory=dict)
    chains: list[bytes] = field(default_factory=list)  # first messages accepted
    rows: list[SessionRow] | None = None
    prekeys: PrekeyStore | None = None
    guard: ReplayGuard | None = None
    # Envelopes of the queue being read that were decided without any key
    # use: written in one transaction (_flush_quiet), before the ack.
    quiet: list[_Quiet] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Quiet:
    """An envelope decided by a lookup: held until ``key`` (of ``kind``)
    happens, or refused for ``reason``."""

    env: FetchedEnvelope
    kind: str  # "chain" (held) or "refuse"
    key: bytes = b""
    reason: Reason = Reason.ERROR
    error: str = ""


def _ratchet_position(data: bytes) -> tuple[bytes, int] | None:
    """(sender ratchet key, message number) of an envelope's ratchet header,
    without opening it; ``None`` if it has none."""
    try:
        if wire.peek_type(data) == FIRST.type_id:
            data = wire.decode(FIRST, data)["message"]
        rec = wire.decode(MESSAGE, data)
        header = RatchetHeader.from_bytes(rec["header"])
    except MalformedInput:
        return None
    return header.dh, header.n


def _is_first(data: bytes) -> bool:
    try:
        return wire.peek_type(data) == FIRST.type_id
    except MalformedInput:
        return False


class Channel:
    """One unlocked home folder and its relays. Not for concurrent use from
    several tasks; several processes on one home are serialised by the
    database's write lock."""

    def __init__(
        self,
        keystore: Keystore,
        identity: Identity,
        *,
        unknown_senders: UnknownPolicy = "refuse",
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.keystore = keystore
        self.identity = identity
        self.unknown_senders = unknown_senders
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self.db = ClientDB(keystore.home / "client.db", identity.storage_key())
        # The local audit log (docs/AUDIT.md): every event is recorded after
        # the client database committed it, never inside the transaction.
        self.audit = AuditLog.open(keystore.home, identity, clock=lambda: int(self._clock()))
        self._audit_closed = False
        self._relays: dict[str, RelayClient] = {}
        # What we saw of each relay's log (client/logview.py); every
        # checkpoint that passes is offered to the witness policy.
        self._rx = _Pass()  # the receive pass under way (budget, caches)
        self.logs = RelayLogs(
            self.db,
            self.audit,
            self._relay,
            self._pinned_relay_key,
            lambda url, key, note: check_witnessed(self, url, key, note),
        )

    @classmethod
    def open(
        cls,
        home: Path | str,
        passphrase: str | bytes,
        *,
        unknown_senders: UnknownPolicy = "refuse",
        retry: RetryPolicy | None = None,
    ) -> Channel:
        """Unlock the identity in ``home`` (costs one Argon2id run)."""
        keystore = Keystore(home)
        if not keystore.has_identity():
            raise NoIdentity(f"no identity in {home}; run 'securechan init'")
        identity = keystore.unlock(passphrase)
        return cls(keystore, identity, unknown_senders=unknown_senders, retry=retry)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close relay connections and the database."""
        for relay in self._relays.values():
            await relay.close()
        self._relays.clear()
        try:
            # What was received is committed: its generations join the mark.
            self.db.record_generations()
            self._report_rollbacks()
        finally:
            self.db.close()
            if not self._audit_closed:
                self._audit_closed = True
                self.audit.checkpoint()
                self.audit.close()

    def _now(self) -> int:
        return int(self._clock())

    async def _relay(self, url: str) -> RelayClient:
        client = self._relays.get(url)
        if client is None:
            client = RelayClient(url, retry=self._retry, clock=self._clock)
            await client.__aenter__()
            self._relays[url] = client
        return client

    # --- registration -------------------------------------------------------------

    def _pinned_relay_key(self, relay_url: str) -> bytes | None:
        reg = next((r for r in self._registrations() if r.relay == relay_url), None)
        return reg.relay_key if reg is not None else None

    def _registrations(self) -> list[_Registration]:
        loaded = self.db.load_state("registrations", "registration", b"")
        if loaded is None:
            return []
        _, data = loaded
        items = wire.decode(_REGS, data)["items"]
        return [_Registration(**wire.decode(_REG, x)) for x in items]

    def _save_registrations(self, regs: list[_Registration]) -> None:
        data = wire.encode(
            _REGS,
            {
                "items": [
                    wire.encode(
                        _REG,
                        {
                            "relay": r.relay,
                            "relay_key": r.relay_key,
                            "rid": r.rid,
                            "sid": r.sid,
                            "recipient_seed": r.recipient_seed,
                            "address_key": r.address_key,
                        },
                    )
                    for r in regs
                ]
            },
        )
        self.db.save_state("registrations", "registration", b"", None, data)

    def _prekeys(self) -> PrekeyStore:
        loaded = self.db.load_state("prekeys", "prekeys", self.identity.fingerprint.digest)
        if loaded is None:
            return PrekeyStore.new(self.identity)
        return PrekeyStore.from_bytes(loaded[1])

    def _save_prekeys(self, store: PrekeyStore) -> None:
        self.db.save_state(
            "prekeys", "prekeys", self.identity.fingerprint.digest, None, store.to_bytes()
        )

    def _guard(self) -> ReplayGuard:
        loaded = self.db.load_state("replay-guard", "replay-guard", b"")
        return ReplayGuard() if loaded is None else ReplayGuard.from_bytes(loaded[1])

    def _save_guard(self, guard: ReplayGuard) -> None:
        self.db.save_state("replay-guard", "replay-guard", b"", None, guard.to_bytes())

    async def register(
        self,
        relay_url: str,
        *,
        pin_key: bytes | None = None,
        pin_fingerprint: bytes | None = None,
    ) -> ContactCard:
        """Create our contact address at ``relay_url`` and publish prekeys.

        The relay's key is pinned on first use, or checked against
        ``pin_key`` or ``pin_fingerprint`` (SHA-256 of the key, as the relay
        prints it at start): :class:`UntrustedKey` if it differs. Registering
        again at the same relay refreshes prekeys.
        """
        relay = await self._relay(relay_url)
        info = await relay.info()
        try:
            from securechan.protocol.relay_auth import b64d

            relay_key = b64d(str(info["relay_key"]), size=32)
            check_ed25519_public_key(relay_key)
        except (KeyError, MalformedInput):
            raise MalformedInput("the relay sent a bad key") from None
        if pin_key is not None and pin_key != relay_key:
            raise UntrustedKey("the relay's key is not the one you pinned")
        if pin_fingerprint is not None and sha256(relay_key) != pin_fingerprint:
            raise UntrustedKey(f"the key of {relay_url} does not have the fingerprint you gave")
        regs = self._registrations()
        existing = next((r for r in regs if r.relay == relay_url), None)
        if existing is not None and existing.relay_key != relay_key:
            raise UntrustedKey(f"the key of relay {relay_url} changed since you registered")
        if existing is None:
            recipient = Ed25519SigningKey.generate()
            ids = await relay.create_queue(recipient, contact=True)
            existing = _Registration(
                relay=relay_url,
                relay_key=relay_key,
                rid=ids.rid,
                sid=ids.sid,
                recipient_seed=recipient.seed_bytes_secret(),
                address_key=random_bytes(32),
            )
            with self.db.transaction():
                self._save_registrations([*regs, existing])
                self.db.add_queue(ids.rid, relay_url, "contact", None, existing.recipient_seed)
        await self._publish_prekeys(existing, fresh=True)
        return self.card()

    async def _publish_prekeys(self, reg: _Registration, *, fresh: bool) -> None:
        now = self._now()
        with self.db.transaction():
            store = self._prekeys()
            try:
                store.current_signed(now)
                if fresh:
                    store = store.rotate(self.identity, now=now)
            except SecurechanError:
                store = store.rotate(self.identity, now=now)
            # A pool of its own for this relay, replacing the one it holds: a
            # key published to two relays, or again after a relay handed it
            # out, could be handed out twice (PROTOCOL.md §11).
            store, pool = store.new_pool(self.identity, ONE_TIME_BATCH, now=now)
            # Persist the secrets before the public halves leave this machine.
            self._save_prekeys(store)
        signed = seal_prekey_blob(reg.address_key, store.current_signed(now).to_bytes())
        one_time = [seal_prekey_blob(reg.address_key, p.to_bytes()) for p in pool]
        relay = await self._relay(reg.relay)
        await relay.put_prekeys(
            reg.rid,
            Ed25519SigningKey(reg.recipient_seed),
            signed=signed,
            one_time=one_time,
            replace_one_time=True,
        )
        self.audit.prekeys_rotated(relay=reg.relay, count=len(one_time))

    def card(self) -> ContactCard:
        """Our contact card (identity + every registered address)."""
        regs = self._registrations()
        return ContactCard.make(
            self.identity, tuple(r.address() for r in regs), now=self.identity.created
        )

    # --- rollback -------------------------------------------------------------------

    def _report_rollbacks(self) -> None:
        """One audit entry per store found rolled back (client/generations.py)."""
        while self.db.rollbacks:
            name = self.db.rollbacks.pop(0)
            conversation = bytes.fromhex(name[8:]) if name.startswith("session:") else None
            self.audit.rejected(
                Reason.ROLLED_BACK,
                f"stored {name.split(':')[0]} state is older than its high-water mark "
                "(client.db restored from an older copy)",
                conversation=conversation,
            )

    def rolled_back(self) -> list[str]:
        """Names of the contacts whose current session was found rolled back
        (sending to them is refused until :meth:`rekey`)."""
        marked = self.db.generations.rolled_back()
        retired = self.db.retired()
        out: list[str] = []
        for row in self.db.sessions():
            if "session:" + row.conversation.hex() in marked and row.conversation not in retired:
                contact = self.keystore.contacts.find(Fingerprint(row.peer))
                name = contact.name if contact is not None else row.peer.hex()[:16]
                if name not in out:
                    out.append(name)
        return out

    def rekey(self, name: str) -> int:
        """Retire every session with ``name``: none is sent on again, and the
        next send starts a new handshake (fresh keys, a new conversation).
        The old sessions still receive, so the peer's messages sent before it
        sees the new handshake are not lost. Returns how many were retired."""
        contact = self._contact(name)
        now = self._now()
        rows = self.db.sessions(contact.fingerprint.digest)
        with self.db.transaction():
            retired = self.db.retired()
            fresh = [r for r in rows if r.conversation not in retired]
            for row in fresh:
                self.db.retire_session(row.conversation, now)
        for row in fresh:
            self.audit.rejected(
                Reason.REKEYED,
                f"session retired by 'contact rekey {name}'; the next send starts a new one",
                conversation=row.conversation,
                peer=contact.fingerprint,
                at=now,
            )
        return len(fresh)

    # --- sending ------------------------------------------------------------------

    def _contact(self, name: str) -> Contact:
        contact = self.keystore.contacts.get(name)
        return contact

    def _load_session(self, conversation: bytes, *, sending: bool = False) -> Session:
        """A stored session. Loaded for ``sending``, a session older than its
        high-water mark (``state.gen``) raises :class:`RolledBack`: its next
        message would reuse a message key and nonce already used. Receiving
        on it goes on (it never encrypts); it stays marked until re-keyed."""
        loaded = self.db.load_state(
            "session:" + conversation.hex(), "session", conversation, refuse_rolled_back=sending
        )
        if loaded is None:
            raise MalformedInput("unknown conversation")
        return Session.from_bytes(self.identity, loaded[1], now=self._now())

    def _save_session(self, session: Session) -> None:
        conv = session.conversation
        self.db.save_state(
            "session:" + conv.hex(),
            "session",
            conv,
            session.generation,
            session.to_bytes(now=self._now()),
        )

    def _save_handshake(self, session: Session) -> None:
        """Keep a new session's transcript and signature for statements."""
        if session.handshake_proof is None:  # pragma: no cover - new sessions have one
            return
        transcript, signature = session.handshake_proof
        conv = session.conversation
        data = wire.encode(_HANDSHAKE, {"transcript": transcript, "signature": signature})
        self.db.save_state("handshake:" + conv.hex(), "handshake", conv, None, data)

    def _load_handshake(self, conversation: bytes) -> tuple[bytes, bytes]:
        loaded = self.db.load_state("handshake:" + conversation.hex(), "handshake", conversation)
        if loaded is None:
            raise UsageError(
                "this session was started before statements were bound to the handshake; "
                "a statement needs a message of a newer session"
            )
        rec = wire.decode(_HANDSHAKE, loaded[1])
        return rec["transcript"], rec["signature"]

    def _targets(
        self, contact: Contact, row_grant: bytes | None
    ) -> list[tuple[str, bytes, bytes | None]]:
        """(relay, sid, sender seed) to post to: the peer's private queue if it
        granted one, else every address on its contact card."""
        if row_grant is not None:
            g = QueueGrant.from_bytes(row_grant)
            return [(g.relay, g.sid, g.sender_seed)]
        if contact.card is None:
            raise MalformedInput(
                f"{contact.name} has no relay address: add their contact card (from 'id export')"
            )
        card = ContactCard.from_bytes(contact.card)
        if not card.identity.same_key(contact.identity):
            raise UntrustedKey(f"the contact card of {contact.name} is for another key")
        return [(a.relay, a.sid, None) for a in card.addresses]

    async def _fetch_bundle(self, contact: Contact) -> PrekeyBundle:
        if contact.card is None:
            raise MalformedInput(
                f"{contact.name} has no relay address: add their contact card (from 'id export')"
            )
        card = ContactCard.from_bytes(contact.card)
        last: Exception | None = None
        for address in card.addresses:
            try:
                relay = await self._relay(address.relay)
                signed, one_time = await relay.claim_bundle(address.sid)
                bundle = PrekeyBundle(
                    signed_prekey=Prekey.from_bytes(open_prekey_blob(address.key, signed)),
                    one_time_prekey=(
                        Prekey.from_bytes(open_prekey_blob(address.key, one_time))
                        if one_time is not None
                        else None
                    ),
                )
                bundle.verify(contact.identity, now=self._now())
                return bundle
            except (RelayError, VerificationFailed, MalformedInput) as e:
                last = e
        if isinstance(last, VerificationFailed):
            # A substituted or forged bundle: the relay (or the network) is
            # attacking the first contact; it belongs in the audit log.
            self.audit.rejected(Reason.BUNDLE_REJECTED, f"bundle for {contact.name}: {last}")
            raise BundleRejected(f"no valid prekey bundle for {contact.name}: {last}")
        raise last if last is not None else MalformedInput(f"{contact.name} has no address")

    async def _ensure_own_queue(self, session: Session) -> QueueGrant | None:
        """Create our private queue for this conversation at our first relay."""
        regs = self._registrations()
        if not regs:
            return None
        reg = regs[0]
        relay = await self._relay(reg.relay)
        recipient = Ed25519SigningKey.generate()
        sender = Ed25519SigningKey.generate()
        ids = await relay.create_queue(recipient, sender_key=sender.public)
        with self.db.transaction():
            self.db.add_queue(
                ids.rid, reg.relay, "private", session.conversation, recipient.seed_bytes_secret()
            )
        return QueueGrant(relay=reg.relay, sid=ids.sid, sender_seed=sender.seed_bytes_secret())

    async def _send(
        self,
        name: str,
        build: Callable[[Session], list[bytes]],
        records: Callable[[Session, list[int]], list[_Sent]] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SendResult:
        contact = self._contact(name)
        now = self._now()
        retired = self.db.retired()
        rows = [
            r for r in self.db.sessions(contact.fingerprint.digest) if r.conversation not in retired
        ]
        if rows:
            row = rows[0]
            targets = self._targets(contact, row.peer_grant)
            split = await self.logs.refresh(t[0] for t in targets)
            try:
                with self.db.transaction():
                    session = self._load_session(row.conversation, sending=True)
                    session.checkpoints = self.logs.carried(t[0] for t in targets)
                    envelopes, seqs = self._build(session, build)
                    sent = self._commit_send(
                        session, contact, envelopes, seqs, records, targets, now
                    )
            except RolledBack:
                self._report_rollbacks()
                raise RolledBack(
                    f"refused to send to {contact.name}: the conversation's state was restored "
                    "from an older copy and would reuse message keys; start a new session with "
                    f"'securechan contact rekey {contact.name}'"
                ) from None
        else:
            # First contact: the handshake, our queue grant and the message are
            # built in memory and committed together, or not at all.
            bundle = await self._fetch_bundle(contact)
            targets = self._targets(contact, None)
            session, first = Session.initiate(self.identity, contact.identity, bundle, now=now)
            grant = await self._ensure_own_queue(session)
            split = await self.logs.refresh(t[0] for t in targets)
            session.checkpoints = self.logs.carried(t[0] for t in targets)
            envelopes = [first]
            if grant is not None:
                envelopes.append(session.send_grant(grant, now=now))
            more, seqs = self._build(session, build)
            envelopes.extend(more)
            with self.db.transaction():
                self.db.add_session(session.conversation, contact.fingerprint.digest, now)
                self._save_handshake(session)
                if grant is not None:
                    self.db.mark_grant_sent(session.conversation)
                sent = self._commit_send(session, contact, envelopes, seqs, records, targets, now)
            self.audit.session_started(
                conversation=session.conversation,
                peer=contact.fingerprint,
                role="initiator",
                at=now,
            )
        for item in sent:
            self.audit.message_sent(
                conversation=session.conversation,
                seq=item.seq,
                payload_hash=sha256(item.signed),
                peer=contact.fingerprint,
                at=now,
            )
        try:
            delivered, pending = await self.flush_outbox(progress=progress)
        except SplitView as e:
            split = split or e
        if split is not None:
            raise split
        return SendResult(
            contact=contact.name, seqs=tuple(seqs), delivered=delivered, pending=pending
        )

    @staticmethod
    def _build(
        session: Session, build: Callable[[Session], list[bytes]]
    ) -> tuple[list[bytes], list[int]]:
        first_seq = session.sent_count + 1
        envelopes = build(session)
        return envelopes, list(range(first_seq, session.sent_count + 1))

    def _commit_send(
        self,
        session: Session,
        contact: Contact,
        envelopes: list[bytes],
        seqs: list[int],
        records: Callable[[Session, list[int]], list[_Sent]] | None,
        targets: list[tuple[str, bytes, bytes | None]],
        now: int,
    ) -> list[_Sent]:
        """Inside the caller's transaction: the new session state, our record
        of what we sent, and the envelopes in the outbox, all at once.
        Returns (seq, signed payload) of what was recorded, for the audit log."""
        self._save_session(session)
        sent = records(session, seqs) if records else []
        for item in sent:
            self.db.add_message(
                session.conversation,
                contact.fingerprint.digest,
                "out",
                item.seq,
                now,
                self._record(
                    item.signed, contact.name, envelope=item.envelope, key=item.key, ad=item.ad
                ),
            )
        for env in envelopes:
            msg_id = random_bytes(16)
            for relay_url, sid, sender in targets:
                self.db.add_outbox(msg_id, relay_url, sid, sender, env, now)
        return sent

    def _record(
        self,
        signed: bytes,
        contact: str,
        *,
        envelope: bytes | None = None,
        key: bytes | None = None,
        ad: bytes | None = None,
        relay: str | None = None,
    ) -> bytes:
        return wire.encode(
            _RECORD,
            {
                "signed": signed,
                "contact": contact,
                "envelope": envelope,
                "key": key,
                "ad": ad,
                "relay": relay,
            },
        )

    async def send_text(self, name: str, text: str) -> SendResult:
        """Send a text message to the contact ``name``.

        The text is sent in Unicode NFC; a NUL character or more than
        ``MAX_TEXT_BYTES`` of UTF-8 is refused (:class:`MalformedInput`)
        before anything is stored or sent."""
        text = message_text(text)
        holder: list[_Sent] = []

        def build(session: Session) -> list[bytes]:
            msg = session.send_text(text, now=self._now())
            key, ad = session.last_sent_opening
            holder.append(_Sent(0, session.last_sent_record, msg, key, ad))
            return [msg]

        def records(session: Session, seqs: list[int]) -> list[_Sent]:
            return [replace(h, seq=seq) for seq, h in zip(seqs, holder, strict=True)]

        return await self._send(name, build, records)

    async def send_receipt(self, name: str) -> SendResult:
        """Tell ``name`` how far we have received its messages: a signed
        receipt with the hash of the last one, which the peer checks against
        its own record of what it sent (``Received.receipt_matches``)."""
        holder: list[_Sent] = []

        def build(session: Session) -> list[bytes]:
            msg = session.send_receipt(now=self._now())
            # Kept in our record: our signed receipt is what proves delivery
            # in a statement of the peer's message (audit/statement.py).
            key, ad = session.last_sent_opening
            holder.append(_Sent(0, session.last_sent_record, msg, key, ad))
            return [msg]

        def records(session: Session, seqs: list[int]) -> list[_Sent]:
            return [replace(h, seq=seq) for seq, h in zip(seqs, holder, strict=True)]

        return await self._send(name, build, records)

    async def send_file(
        self,
        name: str,
        file_name: str,
        data: bytes,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> SendResult:
        """Send a file (chunked) to the contact ``name``. ``progress(done,
        total)`` is called as envelopes are posted."""
        holder: list[_Sent] = []

        def build(session: Session) -> list[bytes]:
            out = []
            for env in session.send_file(file_name, data, now=self._now()):
                out.append(env)
            key, ad = session.last_sent_opening
            holder.append(_Sent(0, session.last_sent_record, out[-1], key, ad))
            return out

        def records(session: Session, seqs: list[int]) -> list[_Sent]:
            # One stored record per file: the last chunk's signed payload.
            return [replace(holder[-1], seq=seqs[-1])]

        return await self._send(name, build, records, progress)

    async def flush_outbox(
        self, *, progress: Callable[[int, int], None] | None = None
    ) -> tuple[int, int]:
        """Post every pending envelope, oldest first; return (delivered now,
        still pending). After a failed post to a queue, nothing younger goes
        to that queue in this pass: envelopes must reach a queue in the order
        they were made, or the recipient sees a false gap and a late arrival."""
        delivered = pending = 0
        blocked: set[tuple[str, bytes]] = set()
        bad_receipts: list[str] = []
        split: SplitView | None = None
        # The high-water mark first: nothing leaves the machine that a
        # restored client.db could make again unnoticed (client/generations.py).
        self.db.record_generations()
        entries = self.db.outbox()
        for done, entry in enumerate(entries, 1):
            if progress is not None:
                progress(done, len(entries))
            target = (entry.relay, entry.sid)
            if target in blocked:
                pending += 1
                continue
            try:
                relay = await self._relay(entry.relay)
                sender = Ed25519SigningKey(entry.sender) if entry.sender is not None else None
                reply = await relay.send_with_receipt(
                    entry.sid, entry.envelope, entry.msg_id, sender=sender
                )
            except RelayError:
                blocked.add(target)
                pending += 1
                continue
            with self.db.transaction():
                self.db.remove_outbox(entry.id)
            delivered += 1
            # The relay has the envelope; now hold it to its log: the receipt
            # must prove the envelope is in a checkpoint consistent with every
            # checkpoint we saw from this relay before.
            try:
                key = await self.logs.key(entry.relay)
                checkpoint = verify_receipt(reply.receipt, entry.envelope, key)
                await self.logs.accept(entry.relay, key, reply.receipt.checkpoint, checkpoint)
                with self.db.transaction():
                    self.db.add_log_receipt(
                        sha256(entry.envelope),
                        entry.relay,
                        json.dumps(reply.receipt.to_json(), separators=(",", ":")),
                    )
            except SplitView as e:
                split = split or e  # the strongest finding: reported as such
            except (VerificationFailed, MalformedInput) as e:
                self.audit.rejected(reason_of(e), f"receipt from {entry.relay}: {e}")
                bad_receipts.append(f"{entry.relay}: {e}")
        if split is not None:
            raise split
        if bad_receipts:
            raise VerificationFailed(
                "a relay stored the message but its log receipt does not verify: "
                + "; ".join(bad_receipts[:3])
            )
        return delivered, pending

    # --- receiving ----------------------------------------------------------------
    #
    # The pipeline, per envelope: fetch answer -> decode -> first message or
    # session lookup + decrypt -> payload (grants, receipts) -> file assembly
    # -> stored record -> audit -> ack. Two rules hold it together:
    #
    # * No envelope blocks a queue. An expected refusal (a SecurechanError) is
    #   audited and the envelope marked seen; an unexpected exception at any
    #   stage (a bug, a store constraint) rolls the envelope's transaction
    #   back, then the envelope is *set aside*: parked in client.db (the newest
    #   MAX_PARKED, never retried), marked seen, acknowledged to the relay, and
    #   audited as "internal-error" naming the stage. The envelopes behind it
    #   are delivered. Only a failing store (StorageError: the disk, a lock)
    #   stops the pass, without marking anything: that is not the envelope's
    #   fault, and the next pass retries it.
    # * Bounded work before authentication (docs/SECURITY.md, issue 11). A
    #   ratchet message on the contact queue is tried only against sessions
    #   whose state expects its ratchet key (Session.expects: a lookup, no key
    #   use); failed expensive attempts (a decapsulation) are counted per
    #   contact queue and pass, and past UNAUTH_TRIES the rest of that queue
    #   waits for the next pass, unacknowledged. A held envelope is retried
    #   only when what it waits for happens (its chain's first message is
    #   accepted, or its sender is pinned), never on every pass.

    async def receive(self) -> list[Received | Rejected]:
        """One pass over every queue at every relay: fetch, open, store, ack."""
        self._rx = _Pass()
        out: list[Received | Rejected] = self._upgrade_held()
        out += self._expire_held() + self._release_held()
        out.extend(self._release_chains(self._now()))
        await self.flush_outbox()
        for queue in self.db.queues():
            try:
                with _stage("fetch"):
                    relay = await self._relay(queue.relay)
                    envelopes = await relay.fetch(
                        queue.rid, Ed25519SigningKey(queue.secret), after=queue.last_seq, limit=200
                    )
            except RelayError as e:
                out.append(Rejected(reason=Reason.RELAY_ERROR, error=str(e)))
                continue
            except (MalformedInput, ValueError) as e:
                # A relay answering garbage for one queue must not stop the
                # others: report it, record it, go on.
                self.audit.rejected(Reason.MALFORMED_INPUT, f"fetch answer from {queue.relay}: {e}")
                out.append(Rejected(reason=Reason.RELAY_ERROR, error=f"{queue.relay}: {e}"))
                continue
            except _Unexpected as e:
                out.append(self._report_unexpected(e, f"fetch answer from {queue.relay}"))
                continue
            self._rx.budget = Budget.of(HOLD)
            done = 0
            for env in envelopes:
                if queue.kind == "contact" and self._rx.budget.exhausted:
                    break  # the rest waits for the next pass (bounded work per pass)
                out.extend(self._process(queue, env))
                done = env.seq
            out.extend(self._flush_quiet(queue))
            if done:
                out.extend(await self._ack(queue, done))
        out.extend(
            Rejected(
                reason=Reason.SPLIT_VIEW,
                error=f"{e} (the checkpoint came from {peer})",
                evidence=e.evidence,
            )
            for e, peer in await self.logs.check_carried()
        )
        # What follows must not lose what was received above (it is stored
        # and acknowledged already): its failures are reported with it.
        try:
            await self._after_receive()
        except SplitView as e:
            out.append(Rejected(reason=Reason.SPLIT_VIEW, error=str(e), evidence=e.evidence))
        except (RelayError, VerificationFailed, MalformedInput) as e:
            out.append(Rejected(reason=Reason.RELAY_ERROR, error=f"after receiving: {e}"))
        return out

    async def follow(
        self, *, poll: float = 2.0, stop: asyncio.Event | None = None
    ) -> AsyncIterator[Received | Rejected]:
        """Receive continuously: WebSocket push per queue, with polling as the
        fall-back (and every ``poll`` seconds anyway)."""
        stop = stop or asyncio.Event()
        wake = asyncio.Event()

        async def listen(queue: QueueRow) -> None:
            while not stop.is_set():
                try:
                    relay = await self._relay(queue.relay)
                    async for _ in relay.subscribe(queue.rid, Ed25519SigningKey(queue.secret)):
                        wake.set()
                except (RelayError, MalformedInput):
                    pass
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll)

        listeners = [asyncio.create_task(listen(q)) for q in self.db.queues()]
        try:
            while not stop.is_set():
                for item in await self.receive():
                    yield item
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=poll)
        finally:
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)

    def _process(self, queue: QueueRow, env: FetchedEnvelope) -> list[Received | Rejected]:
        now = self._now()
        results: list[Received | Rejected] = []
        try:
            quiet = self._decide_quietly(queue, env, now)
            if quiet is not None:
                self._rx.quiet.append(quiet)
                return []
            # Whatever is decided in its own transaction comes after the
            # quiet ones before it (the queue's position only moves forward).
            results.extend(self._flush_quiet(queue))
            if self.db.seen(env.msg_id):
                with self.db.transaction():
                    self.db.set_last_seq(queue.rid, env.seq)
            else:
                with _stage("refuse"):
                    results.extend(self._open_or_refuse(queue, env, now))
        except _Unexpected as e:
            results.append(self._set_aside(queue, env, now, e))
        except sqlite3.OperationalError as e:
            raise StorageError(f"{self.db.path}: {e}") from None
        results.extend(self._release_chains(now))
        return results

    async def _ack(self, queue: QueueRow, up_to: int) -> list[Received | Rejected]:
        """One acknowledgement per queue and pass, after everything up to
        ``up_to`` is committed locally."""
        try:
            with _stage("ack"):
                relay = await self._relay(queue.relay)
                await relay.ack(queue.rid, Ed25519SigningKey(queue.secret), up_to=up_to)
        except RelayError:
            pass  # acknowledged next time; the message ids are already marked seen
        except _Unexpected as e:
            # Seen already: a later ack (up_to a later seq) covers it.
            return [self._report_unexpected(e, f"ack to {queue.relay}")]
        return []

    def _decide_quietly(self, queue: QueueRow, env: FetchedEnvelope, now: int) -> _Quiet | None:
        """What an envelope on the contact queue is, if a lookup decides it
        (no key used, no transaction): not an envelope; a first message
        naming a prekey we do not hold, or already accepted; a ratchet
        message whose ratchet key no session expects (held for the first
        message of its chain). ``None``: it needs the full path."""
        if queue.kind != "contact":
            return None
        try:
            return self._decide_by_lookup(env, now)
        except (MalformedInput, ValueError) as e:
            return _Quiet(env, "refuse", reason=Reason.MALFORMED_INPUT, error=str(e))

    def _decide_by_lookup(self, env: FetchedEnvelope, now: int) -> _Quiet | None:
        with _stage("decode"):
            try:
                kind = wire.peek_type(env.data)
            except MalformedInput:
                kind = -1
            if kind not in (FIRST.type_id, MESSAGE.type_id):
                return _Quiet(
                    env, "refuse", reason=Reason.MESSAGE_REJECTED, error="not a securechan envelope"
                )
            chain = message_chain(env.data)
            if chain is None:
                return _Quiet(
                    env, "refuse", reason=Reason.MALFORMED_INPUT, error="a malformed envelope"
                )
            if self.db.chain_refused(chain):
                return None  # the unknown-sender path (_open_or_refuse)
        if kind == FIRST.type_id:
            with _stage("first-message"):
                return self._first_by_lookup(env, now)
        with _stage("decrypt"):
            if self._rx.rows is None:
                self._rx.rows = self.db.sessions()
            for row in self._rx.rows:
                if self._expectation(row).expects(env.data, new_chain=row.grant_sent is False):
                    return None
        return _Quiet(env, "chain", key=chain)

    def _first_by_lookup(self, env: FetchedEnvelope, now: int) -> _Quiet | None:
        """Refuse a first message by lookups alone: replayed, or naming a
        prekey we do not hold (before any decapsulation)."""
        try:
            first = FirstMessage.from_bytes(env.data)
        except MalformedInput as e:
            return _Quiet(env, "refuse", reason=Reason.MALFORMED_INPUT, error=str(e))
        if self._rx.prekeys is None:
            self._rx.prekeys = self._prekeys()
            self._rx.guard = self._guard()
        store, guard = self._rx.prekeys, self._rx.guard
        try:
            if guard is not None:
                guard.check(sha256(first.hpke))
            store.signed_key(first.signed_prekey_id, now=now)
            if first.one_time_prekey_id is not None:
                store.take_one_time(first.one_time_prekey_id, now=now)
        except (UnknownPrekey, Replay) as e:
            return _Quiet(env, "refuse", reason=reason_of(e), error=str(e))
        return None

    def _flush_quiet(self, queue: QueueRow) -> list[Received | Rejected]:
        """Write the quietly decided envelopes in one transaction: hold what
        fits under MAX_HELD / MAX_HELD_BYTES, refuse the rest; mark all seen.
        Refusals are audited and reported one by one up to AUDIT_EACH per
        reason, the rest in one entry with a count: a flood costs a bounded
        number of audit entries, not one per envelope."""
        batch, self._rx.quiet = self._rx.quiet, []
        if not batch:
            return []
        now = self._now()
        refused: dict[Reason, list[str]] = {}
        with self.db.transaction():
            order = self._order()
            for q in batch:
                if self.db.seen(q.env.msg_id):
                    continue
                if q.kind == "chain":
                    if not self._hold_as(order, queue, q.env, now, CHAIN, q.key):
                        refused.setdefault(Reason.DECRYPTION_FAILED, []).append(
                            "no session expects its ratchet key and the hold is full"
                        )
                else:
                    refused.setdefault(q.reason, []).append(q.error)
                self.db.mark_seen(q.env.msg_id, now)
            self.db.set_last_seq(queue.rid, max(q.env.seq for q in batch))
        out: list[Received | Rejected] = []
        for reason, errors in refused.items():
            rest = errors[AUDIT_EACH:]
            if len(rest) == 1:
                errors, rest = errors[: AUDIT_EACH + 1], []
            for error in errors[:AUDIT_EACH] + (
                [f"{len(rest)} more envelopes: {rest[0]}"] if rest else []
            ):
                self.audit.rejected(reason, error, at=now)
                out.append(Rejected(reason=reason, error=error))
        return out

    def _report_unexpected(self, e: _Unexpected, what: str) -> Rejected:
        """Audit an unexpected failure (best effort: the audit write may be
        what fails) and say it in one line."""
        detail = f"{what}: {e.stage}: {e.describe()}"
        with contextlib.suppress(Exception):
            self.audit.rejected(Reason.INTERNAL_ERROR, detail)
        return Rejected(reason=Reason.INTERNAL_ERROR, error=detail)

    def _set_aside(
        self, queue: QueueRow, env: FetchedEnvelope, now: int, e: _Unexpected
    ) -> Rejected:
        """An envelope failed in a way no stage expects: its transaction was
        rolled back (state unchanged); park it, mark it seen so it is never
        retried, and let the queue move on."""
        with self.db.transaction():
            self.db.unhold(env.msg_id)
            self.db.park(env.msg_id, queue.relay, e.stage, env.data, now, keep=MAX_PARKED)
            self.db.mark_seen(env.msg_id, now)
            if env.seq:
                self.db.set_last_seq(queue.rid, env.seq)
        return self._report_unexpected(e, f"envelope {env.msg_id.hex()[:16]} set aside")

    def _order(self) -> HoldQueue:
        """The hold's machine, from the rows client.db keeps (read inside the
        caller's transaction, so a rolled-back envelope leaves no trace)."""
        return HoldQueue.from_rows(self.db.held_index(), HOLD)

    def _hold_as(
        self,
        order: HoldQueue,
        queue: QueueRow,
        env: FetchedEnvelope,
        now: int,
        kind: Literal["chain", "sender"],
        key: bytes,
    ) -> bool:
        """Ask the machine whether to hold ``env`` until ``(kind, key)``
        happens and store what it decides, inside the caller's transaction;
        False (not held): the hold is full."""
        decision = order.arrived(env.msg_id, len(env.data), kind, key, now=now)
        if not isinstance(decision, Hold):
            return False
        self.db.hold(env.msg_id, queue.relay, env.data, now)
        self.db.set_held_key(env.msg_id, decision.wait, decision.key)
        return True

    def _hold(
        self,
        queue: QueueRow,
        env: FetchedEnvelope,
        now: int,
        kind: Literal["chain", "sender"],
        key: bytes,
    ) -> bool:
        return self._hold_as(self._order(), queue, env, now, kind, key)

    def _open_or_refuse(
        self, queue: QueueRow, env: FetchedEnvelope, now: int, *, from_hold: bool = False
    ) -> list[Received | Rejected]:
        """Open an envelope, or record why not. A first message from an
        unknown sender refuses (or, with the hold policy, keeps) the messages
        that follow it on the same ratchet chain too, quietly: they are part
        of the same refusal, not separate attacks."""
        chain = message_chain(env.data)
        if chain is not None and self.db.chain_refused(chain) and not from_hold:
            with self.db.transaction():
                if self.unknown_senders == "hold":
                    self._hold(queue, env, now, CHAIN, chain)
                self.db.mark_seen(env.msg_id, now)
                self.db.set_last_seq(queue.rid, env.seq)
            return []
        try:
            return self._open(queue, env, now, reopen=from_hold)
        except StorageError:
            raise  # the disk, not the envelope: nothing is marked, the next pass retries
        except (SecurechanError, ValueError) as e:
            found = self._peer_rollback(env.data, e, now) if isinstance(e, Replay) else None
            if found is not None:
                with self.db.transaction():
                    self.db.mark_seen(env.msg_id, now)
                    self.db.set_last_seq(queue.rid, env.seq)
                return [found]
            if _is_first(env.data) and not isinstance(e, (UnknownPrekey, Replay, MalformedInput)):
                self._rx.budget.spend()  # a decapsulation was spent on it
            if not from_hold and chain is not None and self._early(queue, env.data, e):
                # Possibly ahead of the first message of its session (the
                # relay or the network reordered them): keep it, retried when
                # a first message of its chain is accepted, refused once
                # EARLY_GRACE passed.
                with self.db.transaction():
                    held = self._hold(queue, env, now, CHAIN, chain)
                    if held:
                        self.db.mark_seen(env.msg_id, now)
                        self.db.set_last_seq(queue.rid, env.seq)
                if held:
                    return []
            unknown = isinstance(e, UnknownSender)
            hold = unknown and self.unknown_senders == "hold"
            with self.db.transaction():
                if unknown and chain is not None:
                    self.db.refuse_chain(chain, now)
                if hold and isinstance(e, UnknownSender):
                    who = e.identity
                    fp = who.fingerprint if isinstance(who, PublicIdentity) else None
                    sender = fp.digest if fp is not None else b""
                    if from_hold:
                        order = self._order()
                        if isinstance(order.rewait(env.msg_id, SENDER, sender), Hold):
                            self.db.set_held_key(env.msg_id, SENDER, sender)
                    else:
                        hold = self._hold(queue, env, now, SENDER, sender)
                if from_hold and not hold:
                    self._order().settled(env.msg_id)
                    self.db.unhold(env.msg_id)  # refused for good
                self.db.mark_seen(env.msg_id, now)
                if env.seq:
                    self.db.set_last_seq(queue.rid, env.seq)
            if from_hold and hold:
                return []  # still unknown: stays held, already reported
            self.audit.rejected(reason_of(e), str(e), at=now)
            return [Rejected(reason=reason_of(e), error=str(e), held=hold)]

    def _peer_rollback(self, data: bytes, error: Replay, now: int) -> Rejected | None:
        """A message refused as a replay: at a ratchet position whose message
        we already received, or (once opened) with a sequence number already
        received. The same envelope or signed payload again is a re-delivery
        (a quiet replay: ``None``). A payload the peer validly signed that
        differs from the one we received at that position or sequence number
        is the peer's state rolled back (a restored backup) or equivocation:
        reported, with the hashes of both, never hidden."""
        found = self._payload_at_position(data)
        if found is not None:
            stored, rec, signed_bytes = found
        else:
            # Opened by the session, refused for its sequence number (a
            # rolled-back sender that ratcheted since uses a fresh position):
            # the protocol hands over the verified payload (Replay.signed).
            handed: object = getattr(error, "signed", None)
            if not isinstance(handed, bytes):
                return None
            signed_bytes = handed
            try:
                p = SignedPayload.from_bytes_unverified(signed_bytes).payload
            except MalformedInput:
                return None
            stored_msg = self.db.message(p.conversation, "in", p.seq)
            if stored_msg is None:
                return None
            stored, rec = stored_msg, wire.decode(_RECORD, stored_msg.record)
        contact = self.keystore.contacts.find(Fingerprint(stored.peer))
        first = rec["envelope"]
        if contact is None or first is None or first == data or signed_bytes == rec["signed"]:
            return None
        try:
            signed = SignedPayload.from_bytes_unverified(signed_bytes)
            p = signed.payload
            if (
                p.sender != contact.fingerprint
                or p.recipient != self.identity.fingerprint
                or p.conversation != stored.conversation
            ):
                return None
            signed.verify(contact.identity)
        except (VerificationFailed, MalformedInput):
            return None  # not the peer's: an ordinary (forged or garbled) replay
        evidence = (
            f"received payload sha256 {sha256(rec['signed']).hex()}",
            f"second payload sha256 {sha256(signed_bytes).hex()}",
            f"received envelope sha256 {sha256(first).hex()}",
            f"second envelope sha256 {sha256(data).hex()}",
        )
        error_text = (
            f"{contact.name}'s state was rolled back (or it equivocated): a second, different "
            f"message #{p.seq} signed by {contact.name} takes the place of message "
            f"#{stored.seq} already received; not shown"
        )
        self.audit.rejected(
            Reason.PEER_ROLLED_BACK,
            f"{error_text}; " + "; ".join(evidence),
            conversation=stored.conversation,
            peer=contact.fingerprint,
            at=now,
        )
        return Rejected(reason=Reason.PEER_ROLLED_BACK, error=error_text, evidence=evidence)

    def _payload_at_position(
        self, data: bytes
    ) -> tuple[StoredMessage, dict[str, Any], bytes] | None:
        """The stored message received at ``data``'s ratchet position, its
        record, and ``data`` opened with the message key kept for it (not yet
        checked for a signature); ``None`` if any of that is missing or the
        key does not open it."""
        position = _ratchet_position(data)
        if position is None:
            return None
        hit = self.db.position(self.db.position_key(*position))
        if hit is None:
            return None
        stored = self.db.message(hit[0], "in", hit[1])
        if stored is None:
            return None
        rec = wire.decode(_RECORD, stored.record)
        if rec["key"] is None or rec["ad"] is None or rec["envelope"] == data:
            return None
        try:
            return stored, rec, open_envelope(data, rec["key"], rec["ad"])
        except (VerificationFailed, MalformedInput):
            return None

    def _early(self, queue: QueueRow, data: bytes, error: Exception) -> bool:
        """Could this refused envelope be a message that overtook the first
        message of its session? Only on the contact queue (where a session's
        first messages travel), only a ratchet message that no session could
        decrypt (a replay, reflection or absurd counter is refused at once)."""
        try:
            ratchet = wire.peek_type(data) == MESSAGE.type_id
        except MalformedInput:
            return False
        return may_be_early(
            contact_queue=queue.kind == "contact", ratchet_message=ratchet, error=error
        )

    def _expire_held(self) -> list[Received | Rejected]:
        """Refuse the held messages that waited EARLY_GRACE for their chain's
        first message (a first message waiting for its sender stays)."""
        now = self._now()
        with self.db.transaction():
            expired = self._order().tick(now).ids
            for msg_id in expired:
                self.db.unhold(msg_id)
        if not expired:
            return []
        error = f"held {EARLY_GRACE} s for the first message of its session, which never came"
        if len(expired) > 1:
            error = f"{len(expired)} envelopes: {error}"
        self.audit.rejected(Reason.DECRYPTION_FAILED, error, at=now)
        return [Rejected(reason=Reason.DECRYPTION_FAILED, error=error)]

    def _release_held(self) -> list[Received | Rejected]:
        """Retry the held first messages whose sender has been pinned since
        (a lookup per envelope; the others are not touched). Rows held before
        schema 6 do not say what they wait for: they are tried once and
        labelled."""
        out: list[Received | Rejected] = []
        contact_queues = {q.relay: q for q in self.db.queues() if q.kind == "contact"}
        order = self._order()
        for fp in order.waiting_senders():
            if fp and self.keystore.contacts.find(Fingerprint(fp)) is not None:
                out.extend(self._retry_ids(order.sender_pinned(fp), contact_queues))
        return out

    def _upgrade_held(self) -> list[Received | Rejected]:
        """Rows held before schema 6 do not say what they wait for: a ratchet
        message is given its chain (the machine then expires it as any
        other), a first message is tried once."""
        out: list[Received | Rejected] = []
        legacy = self.db.held_unlabelled()
        if not legacy:
            return out
        contact_queues = {q.relay: q for q in self.db.queues() if q.kind == "contact"}
        for row in legacy:
            if _is_first(row.envelope):
                out.extend(self._retry_held(row, contact_queues))
                continue
            chain = message_chain(row.envelope)
            with self.db.transaction():
                if chain is None:
                    self.db.unhold(row.msg_id)
                else:
                    self.db.set_held_key(row.msg_id, CHAIN, chain)
        return out

    def _retry_ids(
        self, retry: Retry, contact_queues: dict[str, QueueRow]
    ) -> list[Received | Rejected]:
        """Do what the machine decided: try these held envelopes again."""
        out: list[Received | Rejected] = []
        for msg_id in retry.ids:
            row = self.db.held_row(msg_id)
            if row is not None:
                out.extend(self._retry_held(row, contact_queues))
        return out

    def _release_chains(self, now: int) -> list[Received | Rejected]:
        """After a first message was accepted: retry what was held waiting for
        its chain (the messages that overtook it, or followed it while its
        sender was not pinned)."""
        out: list[Received | Rejected] = []
        if not self._rx.chains:
            return out
        contact_queues = {q.relay: q for q in self.db.queues() if q.kind == "contact"}
        while self._rx.chains:
            chain = self._rx.chains.pop(0)
            out.extend(self._retry_ids(self._order().chain_accepted(chain), contact_queues))
        return out

    def _retry_held(
        self, row: HeldRow, contact_queues: dict[str, QueueRow]
    ) -> list[Received | Rejected]:
        queue = contact_queues.get(row.relay)
        if queue is None:
            return []
        now = self._now()
        env = FetchedEnvelope(seq=0, msg_id=row.msg_id, data=row.envelope, received=now)
        try:
            return self._open_or_refuse(queue, env, now, from_hold=True)
        except _Unexpected as e:
            return [self._set_aside(queue, env, now, e)]

    def _open(
        self, queue: QueueRow, env: FetchedEnvelope, now: int, *, reopen: bool = False
    ) -> list[Received | Rejected]:
        with _stage("decode"):
            try:
                kind = wire.peek_type(env.data)
            except MalformedInput:
                raise MessageRejected("not a securechan envelope") from None
        with self.db.transaction():
            if self.db.seen(env.msg_id) and not reopen:
                # Another process on this home took it while we fetched.
                return []
            if kind == FIRST.type_id:
                with _stage("first-message"):
                    session, events = self._accept_first(env.data, now)
            elif kind == MESSAGE.type_id:
                with _stage("decrypt"):
                    session, events = self._open_ratchet(queue, env.data, now)
            else:
                raise MessageRejected("not a securechan envelope")
            with _stage("store"):
                self._save_session(session)
            results = self._events(session, events, now, env.data, queue.relay)
            with _stage("store"):
                self.db.mark_seen(env.msg_id, now)
                if env.seq:
                    self.db.set_last_seq(queue.rid, env.seq)
                if reopen:
                    self.db.unhold(env.msg_id)
        self._rx.sessions.clear()  # a session changed: expectations are stale
        self._rx.rows = None
        if kind == FIRST.type_id:
            chain = message_chain(env.data)
            if chain is not None:
                with self.db.transaction():
                    self.db.unrefuse_chain(chain)
                self._rx.chains.append(chain)
        try:
            with _stage("audit"):
                self._audit_opened(kind, session, events, results, now)
        except _Unexpected as e:
            # Stored and seen already: what was received is still shown.
            results.append(self._report_unexpected(e, "audit log"))
        return results

    def _audit_opened(
        self,
        kind: int,
        session: Session,
        events: list[Event],
        results: list[Received | Rejected],
        now: int,
    ) -> None:
        peer = session.peer.fingerprint
        if kind == FIRST.type_id:
            self.audit.session_started(
                conversation=session.conversation, peer=peer, role="responder", at=now
            )
        for ev in events:
            if isinstance(ev, MessageReceived) and ev.checkpoints:
                self.logs.carry_in(ev.checkpoints, session.peer.name)
            if isinstance(ev, MessageReceived):
                self.audit.message_received(
                    conversation=session.conversation,
                    seq=ev.seq,
                    payload_hash=ev.hash,
                    peer=peer,
                    at=now,
                )
        for item in results:
            if isinstance(item, Rejected):
                self.audit.rejected(
                    item.reason, item.error, conversation=session.conversation, peer=peer, at=now
                )

    def _expectation(self, row: SessionRow) -> Session:
        """The session as last stored, read once per pass for
        :meth:`Session.expects` (never used to decrypt)."""
        cached = self._rx.sessions.get(row.conversation)
        if cached is None:
            cached = self._rx.sessions[row.conversation] = self._load_session(row.conversation)
        return cached

    def _open_ratchet(self, queue: QueueRow, data: bytes, now: int) -> tuple[Session, list[Event]]:
        """Try the sessions this queue can carry: a private queue belongs to
        one conversation (and only its peer holds the sender key); the
        contact queue may carry any initiator's early messages, so there a
        session is tried only if it expects the message's ratchet key: its
        current or a skipped chain, or a new chain while the peer could start
        one and has no private queue of ours to send it to. A failed attempt
        changes nothing (sessions are values) and is counted against the
        pass's UNAUTH_TRIES."""
        rows = self.db.sessions()
        if queue.conversation is not None:
            rows = [r for r in rows if r.conversation == queue.conversation]
        else:
            rows = [
                r
                for r in rows
                if self._expectation(r).expects(data, new_chain=r.grant_sent is False)
            ]
            if not rows:
                raise MessageRejected("no session expects this message's ratchet key")
        last_error: SecurechanError = MessageRejected("no session opens this message")
        for row in rows:
            if queue.conversation is None and self._rx.budget.exhausted:
                break
            candidate = self._load_session(row.conversation)
            try:
                return candidate, candidate.receive(data, now=now)
            except MessageRejected as e:
                last_error = e
                if queue.conversation is None:
                    self._rx.budget.spend()
        raise last_error

    def _accept_first(self, data: bytes, now: int) -> tuple[Session, list[Event]]:
        contacts = {c.fingerprint.digest: c for c in self.keystore.contacts.list()}

        def lookup(fp: Fingerprint) -> PublicIdentity | None:
            c = contacts.get(fp.digest)
            return c.identity if c is not None else None

        session, store, guard, events = Session.accept(
            self.identity, self._prekeys(), self._guard(), data, contact=lookup, now=now
        )
        if self.db.has_session(session.conversation):
            # Issue 11, finding 5: the initiator chose an id already in use.
            # Refused before anything is stored (the existing session and
            # the prekeys are untouched).
            raise ConversationInUse(
                "the first message names the conversation id of an existing session"
            )
        self._save_prekeys(store)
        self._save_guard(guard)
        self.db.add_session(session.conversation, session.peer.fingerprint.digest, now)
        self._save_handshake(session)
        return session, list(events)

    def _events(
        self, session: Session, events: list[Event], now: int, envelope: bytes, relay: str
    ) -> list[Received | Rejected]:
        contact = self.keystore.contacts.find(session.peer.fingerprint)
        name = contact.name if contact is not None else session.peer.name
        verified = contact.verified if contact is not None else False
        out: list[Received | Rejected] = []
        notes: list[str] = []
        for ev in events:
            if isinstance(ev, MessagesMissing):
                notes.append(f"messages {ev.from_seq}..{ev.to_seq} from {name} have not arrived")
            elif isinstance(ev, OutOfOrder):
                notes.append(f"message {ev.seq} arrived late (out of order)")
        for ev in events:
            if isinstance(ev, ReceiptChecked):
                out.append(
                    Received(
                        contact=name,
                        fingerprint=str(session.peer.fingerprint),
                        verified=verified,
                        conversation=session.conversation,
                        seq=0,
                        sent_at=now,
                        content_type=ContentType.RECEIPT,
                        receipt_matches=ev.matches,
                        notes=(f"receipt up to {ev.up_to_seq}",),
                    )
                )
            if not isinstance(ev, MessageReceived):
                continue
            base = {
                "contact": name,
                "fingerprint": str(session.peer.fingerprint),
                "verified": verified,
                "conversation": session.conversation,
                "seq": ev.seq,
                "sent_at": ev.sent_at,
                "content_type": ev.content_type,
                "notes": tuple(notes),
                "hash": ev.hash,
            }
            with _stage("store"):
                self.db.add_message(
                    session.conversation,
                    session.peer.fingerprint.digest,
                    "in",
                    ev.seq,
                    now,
                    self._record(
                        ev.signed,
                        name,
                        envelope=envelope,
                        key=ev.key,
                        ad=session.transcript_hash,
                        relay=relay,
                    ),
                )
                position = _ratchet_position(envelope)
                if position is not None:  # for telling a replay from a rollback
                    self.db.add_position(
                        self.db.position_key(*position), session.conversation, ev.seq
                    )
            content = ev.content
            if isinstance(content, QueueGrant):
                with _stage("payload"):
                    self.db.set_peer_grant(session.conversation, content.to_bytes())
                continue
            if isinstance(content, FileChunk):
                with _stage("file"):
                    held = self.db.add_chunk(
                        session.conversation, content.file_id, content.index, content.data
                    )
                    data = None
                    if held == content.count:
                        data = b"".join(self.db.take_chunks(session.conversation, content.file_id))
                if data is not None:
                    if len(data) != content.size or sha512(data) != content.sha512:
                        out.append(
                            Rejected(
                                reason=Reason.FILE_CORRUPT,
                                error=f"file {content.name!r} does not match its hash",
                            )
                        )
                        continue
                    out.append(Received(**base, file_name=content.name, file_data=data))  # type: ignore[arg-type]
                continue
            with _stage("payload"):
                if isinstance(content, Receipt):
                    out.append(Received(**base, receipt=content))  # type: ignore[arg-type]
                    continue
                out.append(Received(**base, text=content if isinstance(content, str) else None))  # type: ignore[arg-type]
        return out

    async def _after_receive(self) -> None:
        """Grant our private queue to peers who granted theirs; top up prekeys."""
        retired = self.db.retired()
        for row in self.db.sessions():
            if row.grant_sent or row.peer_grant is None or row.conversation in retired:
                continue
            try:
                session = self._load_session(row.conversation, sending=True)
            except RolledBack:
                continue  # never sends again; reported by close()
            try:
                grant = await self._ensure_own_queue(session)
            except RelayError:
                continue  # our relay is down: the grant goes out on a later pass
            if grant is None:
                continue
            contact = self.keystore.contacts.find(Fingerprint(row.peer))
            if contact is None:
                continue
            target = QueueGrant.from_bytes(row.peer_grant)
            with self.db.transaction():
                session = self._load_session(row.conversation, sending=True)
                env = session.send_grant(grant, now=self._now())
                self._save_session(session)
                self.db.mark_grant_sent(row.conversation)
                self.db.add_outbox(
                    random_bytes(16), target.relay, target.sid, target.sender_seed, env, self._now()
                )
        await self.flush_outbox()
        for reg in self._registrations():
            try:
                relay = await self._relay(reg.relay)
                left = await relay.prekey_count(reg.rid, Ed25519SigningKey(reg.recipient_seed))
            except RelayError:
                continue
            if left < ONE_TIME_LOW:
                with contextlib.suppress(RelayError):
                    await self._publish_prekeys(reg, fresh=False)

    # --- reading the record ---------------------------------------------------------

    def history(self, name: str | None = None) -> list[tuple[str, str, int, int, str, str]]:
        """Stored messages: (contact, direction, seq, time, summary, message id).

        The message id is the same on both sides (:func:`message_id`)."""
        from securechan.protocol.payload import SignedPayload

        peer = None
        if name is not None:
            contact = self.keystore.contacts.get(name)
            peer = contact.fingerprint.digest
        out = []
        for m in self.db.messages(peer):
            rec = wire.decode(_RECORD, m.record)
            payload = SignedPayload.from_bytes_unverified(rec["signed"]).payload
            content = payload.content()
            if isinstance(content, QueueGrant) or payload.content_type is ContentType.HELLO:
                continue  # protocol housekeeping, kept in the store, not shown
            if isinstance(content, str):
                summary = content
            elif isinstance(content, FileChunk):
                if content.index != content.count - 1:
                    continue  # a file is shown once, at its last chunk
                summary = f"[file {content.name}, {content.size} bytes]"
            elif isinstance(content, Receipt):
                summary = f"[receipt up to {content.up_to_seq}]"
            else:
                summary = "[empty]"
            out.append(
                (
                    rec["contact"],
                    m.direction,
                    m.seq,
                    payload.sent_at,
                    summary,
                    message_id(rec["signed"]),
                )
            )
        return out

    def _find_message(self, message_id: str) -> tuple[StoredMessage, dict[str, Any]]:
        wanted = message_id.strip().lower()
        if not 8 <= len(wanted) <= 64 or any(c not in "0123456789abcdef" for c in wanted):
            raise UsageError("a message id is 8 to 64 hex digits")
        found = []
        for m in self.db.messages(limit=1 << 40):
            rec = wire.decode(_RECORD, m.record)
            if sha256(rec["signed"]).hex().startswith(wanted):
                found.append((m, rec))
        if not found:
            raise NotFound(f"no stored message has the id {wanted}")
        if len(found) > 1:
            raise UsageError(f"the id {wanted} is ambiguous: give more digits")
        return found[0]

    async def fetch_receipt(self, message_id: str) -> bool:
        """For a message we received: ask the relay it came through for the
        log receipt of its envelope (``GET /v1/log/proof/leaf``), verify it
        and hold it to everything we saw of that log, and keep it for
        statements. Returns whether a receipt is now kept; False when the
        relay does not hold the leaf or cannot be reached. Raises
        :class:`SplitView` or :class:`VerificationFailed` for a bad one."""
        _, rec = self._find_message(message_id)
        envelope, relay_url = rec["envelope"], rec["relay"]
        if envelope is None or relay_url is None:
            return False
        if self.db.log_receipts(sha256(envelope)):
            return True
        try:
            key = await self.logs.key(relay_url)
            receipt = await (await self._relay(relay_url)).leaf_receipt(
                envelope_leaf_hash(envelope)
            )
            if receipt is None:
                return False
            checkpoint = verify_receipt(receipt, envelope, key)
            await self.logs.accept(relay_url, key, receipt.checkpoint, checkpoint)
        except RelayError:
            return False
        with self.db.transaction():
            self.db.add_log_receipt(
                sha256(envelope),
                relay_url,
                json.dumps(receipt.to_json(), separators=(",", ":")),
            )
        return True

    def statement(self, message_id: str) -> Statement:
        """The statement of one stored message (``docs/AUDIT.md``, Statements).

        ``message_id`` is the id ``history`` shows (a prefix of at least 8 hex
        digits will do if it is unique). The statement reveals that message's
        key, and only that message's. It carries the relay's log receipt when
        one is kept (every send's; a received message's once
        :meth:`fetch_receipt` got it); the checkpoint keeps only the
        relay's own signature (cosignatures by keys the file does not name
        would make it unverifiable). Raises :class:`NotFound` for an
        unknown id and :class:`UsageError` for a message stored before
        statements existed.
        """
        m, rec = self._find_message(message_id)
        if rec["envelope"] is None or rec["key"] is None or rec["ad"] is None:
            raise UsageError("this message was stored without what a statement needs")
        peer = self.keystore.contacts.find(Fingerprint(m.peer))
        if peer is None:
            raise ContactNotFound("the message's contact is no longer pinned")
        transcript, signature = self._load_handshake(m.conversation)
        me, them = self.identity.public.to_bytes(), peer.identity.to_bytes()
        placement = None
        for relay_url, text in self.db.log_receipts(sha256(rec["envelope"])):
            known = self.db.relay_log(relay_url)
            if known is None:
                continue
            receipt = LogReceipt.from_json_text(text)
            key = VerifierKey.from_text(known[0])
            own = keep_signatures(receipt.checkpoint, [key])
            if own is None:
                continue
            placement = LogPlacement(
                log_key=known[0],
                leaf_index=receipt.leaf_index,
                checkpoint=own,
                inclusion_proof=receipt.inclusion_proof,
            )
            break
        return Statement(
            signed=rec["signed"],
            sender=me if m.direction == "out" else them,
            recipient=them if m.direction == "out" else me,
            envelope=rec["envelope"],
            message_key=rec["key"],
            transcript=transcript,
            transcript_signature=signature,
            placement=placement,
            receipt=self._receipt_for(m, rec["signed"]),
        )

    def _receipt_for(self, m: StoredMessage, signed: bytes) -> bytes | None:
        """The recipient's signed receipt (ours for a received message, the
        peer's for a sent one) covering exactly message ``m``: up to its
        sequence number, with its hash. Only an exact one: a later receipt
        would need the messages in between revealed to link the chain."""
        from securechan.protocol.payload import SignedPayload

        digest = sha256(signed)
        for other in self.db.messages(m.peer, limit=1 << 40):
            if other.conversation != m.conversation or other.direction == m.direction:
                continue
            candidate = wire.decode(_RECORD, other.record)["signed"]
            payload = SignedPayload.from_bytes_unverified(candidate).payload
            content = payload.content()
            if (
                isinstance(content, Receipt)
                and content.up_to_seq == m.seq
                and content.chain_hash == digest
            ):
                return bytes(candidate)
        return None

    def relays(self) -> list[str]:
        """The relays we are registered at, as registered."""
        return [r.relay for r in self._registrations()]

    def relay_fingerprints(self) -> dict[str, str]:
        """Each relay we are registered at: SHA-256 of its pinned key, in hex
        (what ``relay serve`` prints as its fingerprint)."""
        return {r.relay: sha256(r.relay_key).hex() for r in self._registrations()}

    def known_logs(self) -> list[str]:
        """Every relay whose log key we pinned (ours, and our contacts')."""
        return [relay for relay, _, _ in self.db.relay_logs()]

    def status(self) -> dict[str, object]:
        """Relays, queues, sessions and pending envelopes."""
        regs = self._registrations()
        return {
            "identity": self.identity.name,
            "relays": [r.relay for r in regs],
            "queues": len(self.db.queues()),
            "sessions": len(self.db.sessions()),
            "outbox": len(self.db.outbox()),
            # First messages from senders not yet pinned (their later envelopes
            # are held behind them and not counted).
            "held": sum(1 for _, _, data, _ in self.db.held() if _is_first(data)),
            # Contacts whose conversation was restored from an older copy:
            # sending to them is refused until 'contact rekey'.
            "rolled_back": self.rolled_back(),
        }


def _unused() -> None:  # pragma: no cover - keeps imports honest for linters
    _ = (ContactNotFound,)
