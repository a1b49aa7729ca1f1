"""A conversation between two identities: handshake, ratchet, signed order.

:class:`Session` is the sans-I/O core of securechan (in the style of h11):
bytes and a clock value in, bytes and events out; no sockets, files or global
time. It composes the handshake (``handshake.py``), the hybrid Double Ratchet
(``ratchet.py``), signed payloads (``payload.py``) and Padmé padding.

Sending (``docs/PROTOCOL.md`` §15): build the payload with the next sequence
number and the hash of our previous message, sign it, pad it, ratchet-encrypt
it. Every ``send_*`` returns an :class:`Outgoing` holding everything the
caller keeps of that message (envelope, signed record, message key,
associated data). **The caller must persist the session (``to_bytes``)
before it releases the envelope**; then a crash can at worst lose a message that was never
sent, and never reuses a message key.

Receiving: ratchet-decrypt, unpad, parse, and check, in this order, that the
message is addressed to us, from our peer, for this conversation, correctly
signed, not a duplicate, and consistent with the sender's hash chain. Only
then is anything returned and the state advanced; **the caller persists the
new state before it shows the plaintext**. A refused message leaves the
session exactly as it was (every step works on new values), and raises one
:class:`MessageRejected` subclass naming the reason, for the local audit log.

Gaps and reordering: messages carry the sender's sequence number. A message
beyond the next expected one is accepted and a :class:`MessagesMissing` event
names the hole; when a missing message arrives later (within the ratchet's
skip window) it is accepted too and :class:`OutOfOrder` reports it.

Where the parts live: the send's two pure steps (sign, then seal) and the
wire form of a ratchet message in ``session_send.py`` (the batch send,
:meth:`Session.send_group_batch`, signs every copy first); the hash-chain
placement and its events in ``peer_chain.py`` (pure), the state value and
its stored form (0x0080) in ``session_state.py``, the ratchet in ``ratchet.py`` (stored form in
``ratchet_record.py``, in-memory cache in ``ratchet_cache.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from securechan import wire
from securechan.errors import (
    BadSignature,
    MalformedInput,
    MessageRejected,
    Misaddressed,
    Reflected,
    Replay,
    WrongConversation,
)
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity
from securechan.primitives import random_bytes, sha256, sha512
from securechan.protocol import handshake as hs
from securechan.protocol.address import QueueGrant
from securechan.protocol.padding import unpad
from securechan.protocol.payload import (
    CHUNK_SIZE,
    ZERO_HASH,
    Content,
    ContentType,
    FileChunk,
    Receipt,
    SignedPayload,
    text_body,
)
from securechan.protocol.peer_chain import GapAbandoned, MessagesMissing, OutOfOrder, place
from securechan.protocol.prekeys import PrekeyBundle, PrekeyStore
from securechan.protocol.ratchet import (
    Random,
    RatchetHeader,
    RatchetState,
    chain_commitment,
    ratchet_decrypt,
)
from securechan.protocol.ratchet_cache import RatchetCache
from securechan.protocol.session_send import (
    MESSAGE,
    Outgoing,
    RatchetMessage,
    Signed,
    seal,
    sign_next,
)
from securechan.protocol.session_state import (
    SENT_HASHES_KEPT,
    SESSION,
    Role,
    SessionState,
    session_from_bytes,
    session_to_bytes,
)

__all__ = [
    "MESSAGE",
    "SESSION",
    "Event",
    "GapAbandoned",
    "MessageReceived",
    "MessagesMissing",
    "OutOfOrder",
    "Outgoing",
    "RatchetMessage",
    "ReceiptChecked",
    "Role",
    "Session",
    "message_chain",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A verified message from the peer."""

    seq: int
    sent_at: int
    content_type: ContentType
    content: Content
    hash: bytes
    signed: bytes = field(repr=False)  # the SignedPayload record, for the record
    # The message key that opened it (this message only), for statements, and
    # the ratchet position it belongs to (the sender's ratchet key and n):
    # keep the key by position to examine a later Replay of that position.
    key: bytes = field(default=b"", repr=False)
    chain: bytes = b""
    n: int = 0
    # Relay checkpoints the sender says it verified (unverified here).
    checkpoints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptChecked:
    """The peer's receipt: does its view of our messages match ours?"""

    up_to_seq: int
    matches: bool


Event = MessageReceived | MessagesMissing | OutOfOrder | ReceiptChecked | GapAbandoned


class Session:
    """One conversation with one peer. Not thread-safe; one owner at a time."""

    def __init__(
        self,
        me: Identity,
        state: SessionState,
        sent: tuple[bytes, ...] = (),
        *,
        rand: Random = random_bytes,
    ) -> None:
        self._me = me
        self._st = state
        # Hashes of our last messages, oldest first, for checking receipts.
        # Kept outside the immutable state: appending must not copy 4096 hashes.
        self._sent: deque[bytes] = deque(sent, maxlen=SENT_HASHES_KEPT)
        self._cache = RatchetCache()
        # The session's one source of randomness (ratchet key material,
        # reuse guards, file ids), given like the clock: the OS CSPRNG unless
        # a test or a vector injects a seeded one. Not part of the state.
        self._rand = rand
        # Relay checkpoints to carry in the payloads we send (the client's
        # newest verified ones; see payload.py). Not part of the state.
        self.checkpoints: tuple[str, ...] = ()
        # The handshake transcript record and the initiator's signature, set
        # only on a session just made by initiate/accept (not persisted here:
        # the client keeps them for statements, docs/AUDIT.md).
        self.handshake_proof: tuple[bytes, bytes] | None = None

    # --- creation -----------------------------------------------------------

    @classmethod
    def initiate(
        cls,
        me: Identity,
        peer: PublicIdentity,
        bundle: PrekeyBundle,
        *,
        now: int,
        text: str | None = None,
        rand: Random = random_bytes,
    ) -> tuple[Session, bytes]:
        """Start a session with the pinned contact ``peer``.

        Returns the session and the first message (handshake plus the first
        ratchet message, carrying ``text`` or an empty hello). Persist the
        session before sending the first message. ``rand`` is the session's
        source of randomness (the OS CSPRNG unless a test injects one).
        """
        shake, first = hs.initiate(me, peer, bundle, now=now, rand=rand)
        if shake.first_step is None:
            raise ValueError("initiator handshake without its first step")  # unreachable
        ratchet = RatchetState.initiator(
            shake.root_key, peer_dh=shake.peer_dh, peer_kem=shake.peer_kem, first=shake.first_step
        )
        session = cls(
            me,
            SessionState(
                role=Role.INITIATOR,
                conversation=shake.conversation,
                peer=peer,
                transcript_hash=shake.transcript_hash,
                ratchet=ratchet,
            ),
            rand=rand,
        )
        session.handshake_proof = (shake.transcript, shake.signature)
        if text is None:
            inner = session._send(ContentType.HELLO, b"", now=now)
        else:
            inner = session._send(ContentType.TEXT, text_body(text), now=now)
        return session, replace(first, message=inner.envelope).to_bytes()

    @classmethod
    def accept(
        cls,
        me: Identity,
        store: PrekeyStore,
        guard: hs.ReplayGuard,
        data: bytes,
        *,
        contact: Callable[[Fingerprint], PublicIdentity | None],
        now: int,
        rand: Random = random_bytes,
    ) -> tuple[Session, PrekeyStore, hs.ReplayGuard, list[Event]]:
        """Accept a first message. Returns the session, the new prekey store
        and replay guard (persist all three, then show the events).

        Nothing is consumed unless the whole first message, including the
        ratchet message inside, is valid.
        """
        first = hs.FirstMessage.from_bytes(data)
        inner = RatchetHeader.from_bytes(RatchetMessage.from_bytes(first.message).header)
        shake, new_store, new_guard = hs.accept(
            me,
            store,
            guard,
            first,
            contact=contact,
            first_chain=chain_commitment(inner.dh, inner.kem_pub, inner.root_ct),
            now=now,
        )
        if shake.dh_secret is None or shake.kem_seed is None:
            raise ValueError("responder handshake without prekey secrets")  # unreachable
        ratchet = RatchetState.responder(
            shake.root_key, dh_secret=shake.dh_secret, kem_seed=shake.kem_seed
        )
        session = cls(
            me,
            SessionState(
                role=Role.RESPONDER,
                conversation=shake.conversation,
                peer=shake.initiator,
                transcript_hash=shake.transcript_hash,
                ratchet=ratchet,
            ),
            rand=rand,
        )
        session.handshake_proof = (shake.transcript, shake.signature)
        events = session.receive(first.message, now=now)
        return session, new_store, new_guard, events

    # --- properties -----------------------------------------------------------

    @property
    def peer(self) -> PublicIdentity:
        """The other party (a pinned contact)."""
        return self._st.peer

    @property
    def conversation(self) -> bytes:
        """The 16-byte conversation id, derived from the handshake transcript
        (:func:`~securechan.protocol.handshake.conversation_id`): no party
        chooses it. Every payload is signed for it (Payload field 3)."""
        return self._st.conversation

    @property
    def role(self) -> Role:
        """Initiator or responder."""
        return self._st.role

    @property
    def generation(self) -> int:
        """Counts every change of state; a stored copy with a lower
        generation than one already used is a rollback."""
        return self._st.generation

    @property
    def transcript_hash(self) -> bytes:
        """The handshake transcript hash: the associated-data prefix of every
        message of this session (public to both parties)."""
        return self._st.transcript_hash

    @property
    def sent_count(self) -> int:
        """How many messages we have sent."""
        return self._st.send_seq

    @property
    def received_through(self) -> int:
        """Every peer message up to this sequence number has arrived."""
        return self._st.received.contiguous

    # --- sending --------------------------------------------------------------

    def send_text(self, text: str, *, now: int) -> Outgoing:
        """Encrypt a text message. Persist the session (and what the caller
        keeps of the :class:`Outgoing`) before sending its envelope."""
        return self._send(ContentType.TEXT, text_body(text), now=now)

    def send_receipt(self, *, now: int) -> Outgoing:
        """Tell the peer how far we have received its messages, and the hash."""
        r = self._st.received
        body = Receipt(up_to_seq=r.contiguous, chain_hash=r.last_hash).to_bytes()
        return self._send(ContentType.RECEIPT, body, now=now)

    def send_grant(self, grant: QueueGrant, *, now: int) -> Outgoing:
        """Tell the peer to send to our private queue from now on."""
        return self._send(ContentType.QUEUE, grant.to_bytes(), now=now)

    def send_file(self, name: str, data: bytes, *, now: int) -> list[Outgoing]:
        """Encrypt a file as chunks of 32 KiB (one message each, in order)."""
        file_id = self._rand(16)
        digest = sha512(data)
        count = max(1, -(-len(data) // CHUNK_SIZE))
        out = []
        for i in range(count):
            chunk = FileChunk(
                file_id=file_id,
                name=name,
                size=len(data),
                sha512=digest,
                index=i,
                count=count,
                data=data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE],
            )
            FileChunk.from_bytes(chunk.to_bytes())  # the name must be valid
            out.append(self._send(ContentType.FILE, chunk.to_bytes(), now=now))
        return out

    def send_group(self, content_type: ContentType, body: bytes, *, now: int) -> Outgoing:
        """Carry a group payload (a ``GroupDelivery`` or ``GroupWelcome``
        encoding, docs/PROTOCOL.md §20) to the peer."""
        if content_type not in (ContentType.GROUP_MESSAGE, ContentType.GROUP_WELCOME):
            raise ValueError("send_group carries GROUP_MESSAGE or GROUP_WELCOME only")
        return self._send(content_type, body, now=now)

    def _send(self, content_type: ContentType, body: bytes, *, now: int) -> Outgoing:
        signed = sign_next(self._me, self._st, self.checkpoints, content_type, body, now=now)
        state, out = seal(self._st, signed, cache=self._cache, rand=self._rand)
        self._commit(state, signed)
        return out

    def _commit(self, state: SessionState, signed: Signed) -> None:
        self._st = state
        self._sent.append(signed.digest)

    @staticmethod
    def send_group_batch(
        sends: Sequence[tuple[Session, ContentType, bytes]], *, now: int
    ) -> list[Outgoing]:
        """One group payload to each of several sessions (a group message's
        or a change's fan-out, docs/PROTOCOL.md §20.5): the same messages,
        byte for byte in format, as :meth:`send_group` on each in turn.

        All or nothing: every pairwise payload is signed first, then each is
        ratchet-encrypted on its session's current state, and only when
        every copy has been made are the sessions' new states committed. A
        failure at any step (a signing error, a session whose state cannot
        send) raises and leaves every session as it was (a root step's
        fresh key pairs may stay in a session's in-memory RatchetCache:
        never persisted, never needed for correctness). Each copy is one
        RatchetEncrypt of the Double Ratchet (Signal's specification,
        §3.4) on its own session, as a single send makes it; signing all
        first keeps the signer's working set warm across the signatures
        instead of evicting it with AEAD work between them (§20.8). Each
        session at most once per batch. Persist every session before
        releasing any envelope, as for one send (§15)."""
        if len({id(s) for s, _, _ in sends}) != len(sends):
            raise ValueError("a session appears twice in one batch")
        for _, content_type, _ in sends:
            if content_type not in (ContentType.GROUP_MESSAGE, ContentType.GROUP_WELCOME):
                raise ValueError("send_group_batch carries GROUP_MESSAGE or GROUP_WELCOME only")
        signed = [
            sign_next(s._me, s._st, s.checkpoints, ct, body, now=now) for s, ct, body in sends
        ]
        sealed = [
            seal(s._st, x, cache=s._cache, rand=s._rand)
            for (s, _, _), x in zip(sends, signed, strict=True)
        ]
        for (s, _, _), x, (state, _) in zip(sends, signed, sealed, strict=True):
            s._commit(state, x)
        return [out for _, out in sealed]

    # --- receiving ------------------------------------------------------------

    def receive(self, data: bytes, *, now: int) -> list[Event]:
        """Open one message from the peer; return what it means.

        Raises a :class:`MessageRejected` subclass (or :class:`MalformedInput`)
        and leaves the session unchanged if anything is wrong.
        """
        st = self._st
        rec = RatchetMessage.from_bytes(data)
        header = RatchetHeader.from_bytes(rec.header)
        ratchet, padded, key = ratchet_decrypt(
            st.ratchet,
            header,
            rec.ciphertext,
            st.transcript_hash,
            now=now,
            cache=self._cache,
        )
        try:
            signed_bytes = unpad(padded)
            signed = SignedPayload.from_bytes_unverified(signed_bytes)
        except MalformedInput as e:
            # Authenticated by the ratchet yet malformed: the peer misbehaves.
            raise MessageRejected(f"a malformed payload from the peer: {e}") from None
        p = signed.payload
        if p.recipient != self._me.fingerprint:
            raise Misaddressed("the message was signed for another recipient")
        if p.sender == self._me.fingerprint:
            raise Reflected("our own message came back to us")
        if p.sender != st.peer.fingerprint:
            raise Misaddressed("the message was signed by someone other than the peer")
        if p.conversation != st.conversation:
            raise WrongConversation("the message was signed for another conversation")
        try:
            signed.verify(st.peer)
        except BadSignature:
            raise MessageRejected("the message's signature does not verify") from None
        digest = sha256(signed_bytes)
        try:
            received, chain_events = place(st.received, p.seq, digest, p.prev_hash)
        except Replay as e:
            # A fresh ratchet position but a used sequence number: a sender
            # restored from a backup (or equivocating). The payload is
            # verified: hand it over for comparison with the one we kept.
            raise Replay(
                str(e), chain=header.dh, n=header.n, seq=p.seq, signed=signed_bytes
            ) from None
        content = p.content()
        events: list[Event] = [
            MessageReceived(
                seq=p.seq,
                sent_at=p.sent_at,
                content_type=p.content_type,
                content=content,
                hash=digest,
                signed=signed_bytes,
                key=key,
                chain=header.dh,
                n=header.n,
                checkpoints=p.checkpoints,
            ),
            *chain_events,
        ]
        if isinstance(content, Receipt):
            events.append(self._check_receipt(content))
        self._st = replace(st, ratchet=ratchet, received=received, generation=st.generation + 1)
        return events

    def expects(self, data: bytes, *, new_chain: bool = True) -> bool:
        """Could ``data`` (a ratchet message) belong to this session? A cheap
        test before any key is used (no KDF step, no key agreement, no
        decapsulation), for refusing unauthenticated junk by a lookup.

        True when its ratchet key is the peer's current chain, a chain we
        hold skipped keys for, or a key :meth:`receive` refuses cheaply (our
        own, or a chain the peer already left); and, when ``new_chain``,
        when a new chain is possible at all: the peer can only start one in
        answer to a ratchet key of ours it has not answered yet (Double
        Ratchet §3.5: a sending step follows the receipt of a new key), so
        not while our next send is still pending. With ``new_chain`` True,
        False means :meth:`receive` would refuse the message from an honest
        peer's session; with it False, new chains are left to the caller
        (who may know where the peer would send one). True promises
        nothing. Nothing is changed."""
        try:
            rec = RatchetMessage.from_bytes(data)
            header = RatchetHeader.from_bytes(rec.header)
        except MalformedInput:
            return False
        r = self._st.ratchet
        if header.dh == r.dh_remote or header.dh in r.own_dh_recent:
            return True
        if header.dh in r.remote_dh_recent or any(s.dh == header.dh for s in r.skipped):
            return True
        return new_chain and not r.send_pending and r.dh_self is not None

    def _check_receipt(self, r: Receipt) -> ReceiptChecked:
        st = self._st
        if r.up_to_seq == 0:
            return ReceiptChecked(up_to_seq=0, matches=r.chain_hash == ZERO_HASH)
        if r.up_to_seq > st.send_seq:
            return ReceiptChecked(up_to_seq=r.up_to_seq, matches=False)
        back = st.send_seq - r.up_to_seq
        if back >= len(self._sent):
            # Older than what we keep: cannot be checked here (the audit log can).
            return ReceiptChecked(up_to_seq=r.up_to_seq, matches=False)
        ours = self._sent[len(self._sent) - 1 - back]
        return ReceiptChecked(up_to_seq=r.up_to_seq, matches=ours == r.chain_hash)

    # --- state ----------------------------------------------------------------

    def to_bytes(self, *, now: int) -> bytes:
        """Secret: the whole session state (encrypt it at rest).

        Skipped message keys older than 30 days are pruned first, here and
        in memory (``now`` is the caller's clock): no expired key is ever
        written (review 2026-12, finding 6)."""
        self._st, data = session_to_bytes(
            self._st, own=self._me.fingerprint.digest, sent=self._sent, now=now
        )
        return data

    @classmethod
    def from_bytes(
        cls, me: Identity, data: bytes, *, now: int, rand: Random = random_bytes
    ) -> Session:
        """Load a session of ``me``; raise :class:`MalformedInput`. Skipped
        message keys older than 30 days at ``now`` are dropped on load.
        ``rand`` as for :meth:`initiate`."""
        state, sent = session_from_bytes(data, own=me.fingerprint.digest, now=now)
        return cls(me, state, sent, rand=rand)


def message_chain(data: bytes) -> bytes | None:
    """The sender's ratchet key of an envelope (a ratchet message's, or the
    inner message's of a first message), without opening it; ``None`` if the
    bytes are neither. Used only to group envelopes of one refused sender."""
    try:
        kind = wire.peek_type(data)
        if kind == hs.FIRST.type_id:
            data = hs.FirstMessage.from_bytes(data).message
        return RatchetHeader.from_bytes(RatchetMessage.from_bytes(data).header).dh
    except MalformedInput:
        return None
