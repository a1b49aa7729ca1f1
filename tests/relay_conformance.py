"""The contract every relay storage backend must meet (securechan.relay.storage).

A backend's test module subclasses :class:`StorageConformance` and provides
the ``open_storage`` fixture: an async callable that returns a new, empty,
open storage each time it is called (a fresh file, a fresh schema...). Each
test runs in its own ``asyncio.run`` (no async test plug-in needed) and
closes what it opened.

Beyond the docstrings of :class:`~securechan.relay.storage.RelayStorage`, the
suite pins down what the relay relies on:

* ids (``rid``, ``sid``, ``msg_id``) are exactly 16 bytes and keys 32 bytes;
  other sizes raise ``ValueError``, other types ``TypeError``, naming the
  argument, and change nothing;
* writes to a queue that does not exist (send, secure, publish prekeys) raise
  ``ValueError``; reads of one answer empty (``None``, ``[]``, ``0``);
  deleting one is a no-op;
* a failed call (``QueueFull``, a duplicate id) changes nothing and consumes
  no sequence number, and never fails the calls running at the same time;
* ``close`` finishes the writes already submitted and may be called twice;
  every other method then raises ``StorageClosed``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan.relay.storage import (
    STREAM_ITEM_OVERHEAD,
    Envelope,
    NonceReused,
    NonceUse,
    PutResult,
    QueueFull,
    QueueRecord,
    QuotaExceeded,
    RelayStorage,
    StorageClosed,
    StreamFull,
    StreamLimits,
    StreamPut,
)

__all__ = ["NOW", "OpenStorage", "StorageConformance", "make_queue", "msg_id"]

OpenStorage = Callable[[], Awaitable[RelayStorage]]
Body = Callable[[RelayStorage], Awaitable[None]]

NOW = 1_790_000_000
DEPTH = 10_000


def _b(label: str, size: int) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:size]


def make_queue(name: str, *, contact: bool = False, sender: bool = False) -> QueueRecord:
    """A queue whose ids and keys are derived from ``name``."""
    return QueueRecord(
        rid=_b(f"rid {name}", 16),
        sid=_b(f"sid {name}", 16),
        recipient_key=_b(f"recipient {name}", 32),
        sender_key=_b(f"sender {name}", 32) if sender else None,
        contact=contact,
        created=NOW,
    )


def msg_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def run(open_storage: OpenStorage, body: Body) -> None:
    """Open a fresh storage, run ``body`` on it, close it, in one event loop."""

    async def main() -> None:
        storage = await open_storage()
        try:
            await body(storage)
        finally:
            await storage.close()

    asyncio.run(main())


async def _fetch_all(s: RelayStorage, rid: bytes) -> list[Envelope]:
    out: list[Envelope] = []
    after = 0
    while batch := await s.fetch(rid, after=after, limit=500):
        out += batch
        after = batch[-1].seq
    return out


# A pure model of the contract, for the property test.
@dataclass
class _ModelQueue:
    next_seq: int = 1
    held: dict[int, tuple[bytes, bytes, int]] = field(default_factory=dict)  # seq -> envelope


_op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 1), st.integers(0, 6), st.integers(0, 3)),
    st.tuples(st.just("ack"), st.integers(0, 1), st.integers(0, 12)),
    st.tuples(st.just("fetch"), st.integers(0, 1), st.integers(0, 12), st.integers(1, 4)),
    st.tuples(st.just("expire"), st.integers(0, 4)),
)


def stream_id(name: str) -> bytes:
    """A 32-byte group stream id derived from ``name``."""
    return _b(f"stream {name}", 32)


class StorageConformance:
    """Tests every backend must pass; subclasses provide ``open_storage``."""

    @pytest.fixture
    def open_storage(self) -> OpenStorage:
        raise NotImplementedError("a backend's test module provides open_storage")

    # --- queues ---------------------------------------------------------------

    def test_create_and_look_up(self, open_storage: OpenStorage) -> None:
        q, c = make_queue("a", sender=True), make_queue("contact", contact=True)

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            await s.create_queue(c)
            assert await s.queue_by_rid(q.rid) == q
            assert await s.queue_by_sid(q.sid) == q
            assert await s.queue_by_rid(c.rid) == c
            assert await s.queue_by_sid(c.sid) == c
            # The capabilities are separate: a sid is not a rid and vice versa.
            assert await s.queue_by_rid(q.sid) is None
            assert await s.queue_by_sid(q.rid) is None

        run(open_storage, body)

    def test_unknown_queue_reads_are_empty(self, open_storage: OpenStorage) -> None:
        rid = make_queue("nobody").rid

        async def body(s: RelayStorage) -> None:
            assert await s.queue_by_rid(rid) is None
            assert await s.queue_by_sid(rid) is None
            assert await s.fetch(rid, after=0, limit=10) == []
            assert await s.depth(rid) == 0
            assert await s.ack(rid, up_to=100) == 0
            assert await s.prekey_count(rid) == 0
            assert await s.claim_bundle(rid) is None
            await s.delete_queue(rid)  # a no-op

        run(open_storage, body)

    def test_writes_to_unknown_queue_are_refused(self, open_storage: OpenStorage) -> None:
        rid = make_queue("nobody").rid

        async def body(s: RelayStorage) -> None:
            with pytest.raises(ValueError, match="no such queue"):
                await s.put_envelope(rid, msg_id(1), b"x", now=NOW, max_depth=DEPTH)
            with pytest.raises(ValueError, match="no such queue"):
                await s.set_sender_key(rid, bytes(32))
            with pytest.raises(ValueError, match="no such queue"):
                await s.put_prekeys(rid, signed=b"s", one_time=[b"o"], replace_one_time=False)
            assert await s.claim_bundle(rid) is None
            assert await s.queue_by_rid(rid) is None

        run(open_storage, body)

    def test_duplicate_rid_or_sid_is_refused_and_changes_nothing(
        self, open_storage: OpenStorage
    ) -> None:
        q = make_queue("a")
        same_rid = QueueRecord(
            rid=q.rid,
            sid=make_queue("b").sid,
            recipient_key=bytes(32),
            sender_key=None,
            contact=True,
            created=NOW + 1,
        )
        same_sid = QueueRecord(
            rid=make_queue("c").rid,
            sid=q.sid,
            recipient_key=bytes(32),
            sender_key=None,
            contact=True,
            created=NOW + 1,
        )

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            for dup in (q, same_rid, same_sid):
                with pytest.raises(ValueError, match="exists"):
                    await s.create_queue(dup)
            assert await s.queue_by_rid(q.rid) == q
            assert await s.queue_by_sid(q.sid) == q
            assert await s.queue_by_sid(same_rid.sid) is None
            assert await s.queue_by_rid(same_sid.rid) is None

        run(open_storage, body)

    def test_hostile_id_bytes_are_stored_verbatim(self, open_storage: OpenStorage) -> None:
        # Ids are opaque bytes: quotes, NUL, path pieces and SQL are just data.
        q = QueueRecord(
            rid=b"'; DROP TABLE--\x00",
            sid=b"../../etc/passwd",
            recipient_key=b"\x00" * 31 + b"'",
            sender_key=None,
            contact=False,
            created=NOW,
        )

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            assert await s.queue_by_rid(q.rid) == q
            assert await s.queue_by_sid(q.sid) == q
            r = await s.put_envelope(q.rid, b"\x00" * 16, b"\x00'\"", now=NOW, max_depth=DEPTH)
            [e] = await s.fetch(q.rid, after=0, limit=5)
            assert (e.seq, e.msg_id, e.data) == (r.seq, b"\x00" * 16, b"\x00'\"")
            assert await s.queue_by_rid(b"'; DROP TABLE--\x01") is None

        run(open_storage, body)

    def test_misuse_is_refused_and_changes_nothing(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            for bad_id in (b"", q.rid[:15], q.rid + b"\x00"):
                with pytest.raises(ValueError, match="rid"):
                    await s.queue_by_rid(bad_id)
                with pytest.raises(ValueError, match="sid"):
                    await s.queue_by_sid(bad_id)
                with pytest.raises(ValueError, match="msg_id"):
                    await s.put_envelope(q.rid, bad_id, b"x", now=NOW, max_depth=DEPTH)
                with pytest.raises(ValueError, match="rid"):
                    await s.put_envelope(bad_id, msg_id(1), b"x", now=NOW, max_depth=DEPTH)
            with pytest.raises(TypeError, match="rid"):
                await s.queue_by_rid(q.rid.hex())  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="sender_key"):
                await s.set_sender_key(q.rid, bytes(31))
            with pytest.raises(ValueError, match="key"):
                await s.use_nonce(bytes(33), b"n", now=NOW, expires=NOW + 1)
            with pytest.raises(ValueError, match="recipient_key"):
                await s.create_queue(
                    QueueRecord(
                        rid=bytes(16),
                        sid=bytes(16),
                        recipient_key=bytes(16),
                        sender_key=None,
                        contact=False,
                        created=NOW,
                    )
                )
            with pytest.raises(ValueError, match="max_depth"):
                await s.put_envelope(q.rid, msg_id(1), b"x", now=NOW, max_depth=0)
            with pytest.raises(ValueError, match="limit"):
                await s.fetch(q.rid, after=0, limit=0)
            assert await s.depth(q.rid) == 0
            assert await s.queue_by_rid(bytes(16)) is None
            assert await s.queue_by_rid(q.rid) == q
            assert (await s.put_envelope(q.rid, msg_id(1), b"x", now=NOW, max_depth=1)).seq == 1

        run(open_storage, body)

    def test_set_sender_key_secures_the_queue(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")
        key = _b("the sender", 32)

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            await s.set_sender_key(q.rid, key)
            for found in (await s.queue_by_rid(q.rid), await s.queue_by_sid(q.sid)):
                assert found is not None
                assert found.sender_key == key
                assert (found.rid, found.sid, found.recipient_key) == (
                    q.rid,
                    q.sid,
                    q.recipient_key,
                )

        run(open_storage, body)

    def test_delete_queue_takes_everything_with_it(self, open_storage: OpenStorage) -> None:
        q, other = make_queue("a", contact=True), make_queue("b", contact=True)

        async def body(s: RelayStorage) -> None:
            for x in (q, other):
                await s.create_queue(x)
                await s.put_envelope(x.rid, msg_id(1), b"one", now=NOW, max_depth=DEPTH)
                await s.put_prekeys(x.rid, signed=b"S", one_time=[b"o1"], replace_one_time=False)
            await s.delete_queue(q.rid)
            assert await s.queue_by_rid(q.rid) is None
            assert await s.queue_by_sid(q.sid) is None
            assert await s.fetch(q.rid, after=0, limit=10) == []
            assert await s.depth(q.rid) == 0
            assert await s.prekey_count(q.rid) == 0
            assert await s.claim_bundle(q.rid) is None
            # The other queue is untouched.
            assert await s.depth(other.rid) == 1
            assert await s.claim_bundle(other.rid) == (b"S", b"o1", 0)
            # The ids are free again, and the new queue starts empty.
            await s.create_queue(q)
            assert await s.fetch(q.rid, after=0, limit=10) == []
            assert await s.claim_bundle(q.rid) is None

        run(open_storage, body)

    # --- envelopes --------------------------------------------------------------

    def test_put_fetch_in_order(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            seqs = [
                (await s.put_envelope(q.rid, msg_id(i), b"m%d" % i, now=NOW + i, max_depth=DEPTH))
                for i in range(10)
            ]
            assert [r.duplicate for r in seqs] == [False] * 10
            assert [r.seq for r in seqs] == sorted({r.seq for r in seqs})  # increasing
            got = await s.fetch(q.rid, after=0, limit=100)
            assert [(e.seq, e.msg_id, e.data, e.received) for e in got] == [
                (r.seq, msg_id(i), b"m%d" % i, NOW + i) for i, r in enumerate(seqs)
            ]
            assert await s.fetch(q.rid, after=seqs[3].seq, limit=2) == got[4:6]
            assert await s.fetch(q.rid, after=seqs[-1].seq, limit=5) == []
            assert await s.depth(q.rid) == 10

        run(open_storage, body)

    def test_envelopes_stay_in_their_queue(self, open_storage: OpenStorage) -> None:
        a, b = make_queue("a"), make_queue("b")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(a)
            await s.create_queue(b)
            await s.put_envelope(a.rid, msg_id(1), b"for a", now=NOW, max_depth=DEPTH)
            # The same message id in another queue is another message.
            r = await s.put_envelope(b.rid, msg_id(1), b"for b", now=NOW, max_depth=DEPTH)
            assert not r.duplicate
            assert [e.data for e in await s.fetch(a.rid, after=0, limit=9)] == [b"for a"]
            assert [e.data for e in await s.fetch(b.rid, after=0, limit=9)] == [b"for b"]
            assert await s.ack(a.rid, up_to=100) == 1
            assert await s.depth(b.rid) == 1

        run(open_storage, body)

    def test_ack_deletes_up_to_and_counts(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            for i in range(5):
                await s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
            assert await s.ack(q.rid, up_to=0) == 0
            assert await s.ack(q.rid, up_to=2) == 2
            assert [e.seq for e in await s.fetch(q.rid, after=0, limit=9)] == [3, 4, 5]
            assert await s.ack(q.rid, up_to=2) == 0  # acking again is harmless
            assert await s.ack(q.rid, up_to=100) == 3
            assert await s.depth(q.rid) == 0

        run(open_storage, body)

    def test_seq_is_never_reused(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            put = [
                await s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
                for i in range(3)
            ]
            assert [r.seq for r in put] == [1, 2, 3]
            await s.ack(q.rid, up_to=3)
            assert (await s.put_envelope(q.rid, msg_id(3), b"y", now=NOW, max_depth=DEPTH)).seq == 4
            await s.expire(older_than=NOW + 1)
            assert await s.depth(q.rid) == 0
            # Even a resent msg_id, once acknowledged, gets a new number.
            assert (await s.put_envelope(q.rid, msg_id(0), b"z", now=NOW, max_depth=DEPTH)).seq == 5

        run(open_storage, body)

    def test_put_is_idempotent_on_msg_id(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            first = await s.put_envelope(q.rid, msg_id(7), b"original", now=NOW, max_depth=DEPTH)
            again = await s.put_envelope(q.rid, msg_id(7), b"resent", now=NOW + 5, max_depth=DEPTH)
            assert first == PutResult(seq=1, duplicate=False)
            assert again == PutResult(seq=1, duplicate=True)
            [e] = await s.fetch(q.rid, after=0, limit=10)
            assert (e.data, e.received) == (b"original", NOW)
            assert await s.depth(q.rid) == 1
            # The duplicate did not consume a sequence number.
            assert (await s.put_envelope(q.rid, msg_id(8), b"x", now=NOW, max_depth=DEPTH)).seq == 2

        run(open_storage, body)

    def test_queue_full(self, open_storage: OpenStorage) -> None:
        q, other = make_queue("full"), make_queue("other")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            await s.create_queue(other)
            for i in range(3):
                await s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=3)
            with pytest.raises(QueueFull):
                await s.put_envelope(q.rid, msg_id(99), b"x", now=NOW, max_depth=3)
            assert await s.depth(q.rid) == 3
            # A resend of a held envelope is still a duplicate, not a refusal.
            assert await s.put_envelope(q.rid, msg_id(1), b"x", now=NOW, max_depth=3) == (
                PutResult(seq=2, duplicate=True)
            )
            # Other queues are not affected.
            r = await s.put_envelope(other.rid, msg_id(99), b"y", now=NOW, max_depth=3)
            assert r == PutResult(seq=1, duplicate=False)
            # Room again after an ack; the refused put used no number.
            await s.ack(q.rid, up_to=1)
            r = await s.put_envelope(q.rid, msg_id(99), b"x", now=NOW, max_depth=3)
            assert r == PutResult(seq=4, duplicate=False)

        run(open_storage, body)

    def test_expire(self, open_storage: OpenStorage) -> None:
        a, b = make_queue("a"), make_queue("b")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(a)
            await s.create_queue(b)
            for i, t in enumerate((NOW, NOW + 10, NOW + 20)):
                await s.put_envelope(a.rid, msg_id(i), b"a", now=t, max_depth=DEPTH)
                await s.put_envelope(b.rid, msg_id(i), b"b", now=t, max_depth=DEPTH)
            assert await s.expire(older_than=NOW) == 0  # strictly older
            assert await s.expire(older_than=NOW + 11) == 4
            assert [e.received for e in await s.fetch(a.rid, after=0, limit=9)] == [NOW + 20]
            assert [e.received for e in await s.fetch(b.rid, after=0, limit=9)] == [NOW + 20]
            assert await s.expire(older_than=NOW + 11) == 0

        run(open_storage, body)

    def test_held_since_pages_through_every_queue(self, open_storage: OpenStorage) -> None:
        a, b = make_queue("a"), make_queue("b")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(a)
            await s.create_queue(b)
            for i, t in enumerate((NOW, NOW + 10, NOW + 10, NOW + 20)):
                await s.put_envelope(a.rid, msg_id(i), b"a%d" % i, now=t, max_depth=DEPTH)
                await s.put_envelope(b.rid, msg_id(i), b"b%d" % i, now=t, max_depth=DEPTH)
            await s.ack(a.rid, up_to=1)  # a's first envelope is gone
            want = sorted(
                [(NOW + 10, q.rid, seq) for q in (a, b) for seq in (2, 3)]
                + [(NOW + 20, a.rid, 4), (NOW + 20, b.rid, 4)]
            )
            seen: list[tuple[int, bytes, int]] = []
            after = None
            for _ in range(10):  # bounded: pages of two
                page = await s.held_since(received=NOW + 10, after=after, limit=2)
                if not page:
                    break
                assert len(page) <= 2
                for held in page:
                    e = held.envelope
                    assert e.data == (b"a" if held.rid == a.rid else b"b") + b"%d" % (e.seq - 1)
                    assert e.msg_id == msg_id(e.seq - 1)
                seen += [h.cursor for h in page]
                after = page[-1].cursor
            assert seen == want
            assert await s.held_since(received=NOW + 21, after=None, limit=5) == []
            assert len(await s.held_since(received=0, after=None, limit=100)) == 7

        run(open_storage, body)

    # --- prekeys ----------------------------------------------------------------

    def test_prekeys_claimed_once_each(self, open_storage: OpenStorage) -> None:
        q = make_queue("c", contact=True)
        blobs = [b"one-time %d" % i for i in range(3)]

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            assert await s.claim_bundle(q.rid) is None  # nothing published yet
            assert (
                await s.put_prekeys(q.rid, signed=b"S1", one_time=blobs, replace_one_time=False)
                == 3
            )
            assert await s.prekey_count(q.rid) == 3
            claimed = []
            for left in (2, 1, 0):
                bundle = await s.claim_bundle(q.rid)
                assert bundle is not None
                signed, one, n = bundle
                assert (signed, n) == (b"S1", left)
                assert one is not None
                claimed.append(one)
            assert sorted(claimed) == sorted(blobs)
            # Exhausted: the signed prekey still works, without a one-time blob.
            assert await s.claim_bundle(q.rid) == (b"S1", None, 0)
            assert await s.prekey_count(q.rid) == 0

        run(open_storage, body)

    def test_put_prekeys_adds_or_replaces(self, open_storage: OpenStorage) -> None:
        q = make_queue("c", contact=True)

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            assert (
                await s.put_prekeys(q.rid, signed=b"S1", one_time=[b"a"], replace_one_time=False)
                == 1
            )
            assert (
                await s.put_prekeys(q.rid, signed=b"S2", one_time=[b"b"], replace_one_time=False)
                == 2
            )
            assert (
                await s.put_prekeys(q.rid, signed=b"S3", one_time=[b"c"], replace_one_time=True)
                == 1
            )
            assert await s.claim_bundle(q.rid) == (b"S3", b"c", 0)
            # A new signed blob with no one-time blobs keeps the count.
            assert (
                await s.put_prekeys(q.rid, signed=b"S4", one_time=[], replace_one_time=False) == 0
            )
            assert await s.claim_bundle(q.rid) == (b"S4", None, 0)

        run(open_storage, body)

    # --- nonces -----------------------------------------------------------------

    def test_nonce_replay_is_refused(self, open_storage: OpenStorage) -> None:
        k1, k2 = _b("key 1", 32), _b("key 2", 32)

        async def body(s: RelayStorage) -> None:
            assert await s.use_nonce(k1, b"nonce-1", now=NOW, expires=NOW + 60)
            assert not await s.use_nonce(k1, b"nonce-1", now=NOW, expires=NOW + 60)
            assert not await s.use_nonce(k1, b"nonce-1", now=NOW + 59, expires=NOW + 119)
            assert not await s.use_nonce(k1, b"nonce-1", now=NOW + 60, expires=NOW + 120)
            assert await s.use_nonce(k1, b"nonce-2", now=NOW, expires=NOW + 60)
            assert await s.use_nonce(k2, b"nonce-1", now=NOW, expires=NOW + 60)

        run(open_storage, body)

    # --- put_envelope(nonce=) ---------------------------------------------------

    def test_put_records_its_nonce(self, open_storage: OpenStorage) -> None:
        q, key = make_queue("n", sender=True), _b("sender key", 32)
        use = NonceUse(key=key, nonce=b"nonce-1", now=NOW, expires=NOW + 600)

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            r = await s.put_envelope(q.rid, msg_id(1), b"one", now=NOW, max_depth=DEPTH, nonce=use)
            assert r == PutResult(seq=1, duplicate=False)
            # The same nonce again: refused, nothing stored, no number used,
            # even for another msg_id or another queue's write.
            with pytest.raises(NonceReused):
                await s.put_envelope(q.rid, msg_id(2), b"two", now=NOW, max_depth=DEPTH, nonce=use)
            with pytest.raises(NonceReused):
                await s.put_envelope(q.rid, msg_id(1), b"one", now=NOW, max_depth=DEPTH, nonce=use)
            assert not await s.use_nonce(key, b"nonce-1", now=NOW, expires=NOW + 600)
            assert [e.data for e in await s.fetch(q.rid, after=0, limit=10)] == [b"one"]
            assert await s.depth(q.rid) == 1
            # A nonce recorded by use_nonce is refused here too.
            assert await s.use_nonce(key, b"nonce-2", now=NOW, expires=NOW + 600)
            other = NonceUse(key=key, nonce=b"nonce-2", now=NOW, expires=NOW + 600)
            with pytest.raises(NonceReused):
                await s.put_envelope(q.rid, msg_id(3), b"x", now=NOW, max_depth=DEPTH, nonce=other)
            fresh = NonceUse(key=key, nonce=b"nonce-3", now=NOW, expires=NOW + 600)
            r = await s.put_envelope(q.rid, msg_id(3), b"x", now=NOW, max_depth=DEPTH, nonce=fresh)
            assert r == PutResult(seq=2, duplicate=False)

        run(open_storage, body)

    def test_put_nonce_with_a_full_queue_or_a_duplicate_or_no_queue(
        self, open_storage: OpenStorage
    ) -> None:
        q, key = make_queue("nf", sender=True), _b("sender key", 32)

        def use(n: int) -> NonceUse:
            return NonceUse(key=key, nonce=b"n%d" % n, now=NOW, expires=NOW + 600)

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            await s.put_envelope(q.rid, msg_id(1), b"x", now=NOW, max_depth=1, nonce=use(1))
            # Refused for fullness: the nonce is still recorded (docstring).
            with pytest.raises(QueueFull):
                await s.put_envelope(q.rid, msg_id(2), b"y", now=NOW, max_depth=1, nonce=use(2))
            assert not await s.use_nonce(key, b"n2", now=NOW, expires=NOW + 600)
            # A resend answers duplicate and records its nonce.
            r = await s.put_envelope(q.rid, msg_id(1), b"x", now=NOW, max_depth=1, nonce=use(3))
            assert r == PutResult(seq=1, duplicate=True)
            assert not await s.use_nonce(key, b"n3", now=NOW, expires=NOW + 600)
            # No such queue: ValueError, and the nonce is not kept.
            with pytest.raises(ValueError, match="queue"):
                await s.put_envelope(
                    make_queue("none").rid, msg_id(1), b"z", now=NOW, max_depth=9, nonce=use(4)
                )
            assert await s.use_nonce(key, b"n4", now=NOW, expires=NOW + 600)

        run(open_storage, body)

    def test_put_nonce_is_checked_type(self, open_storage: OpenStorage) -> None:
        q = make_queue("nt")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            with pytest.raises(TypeError):
                await s.put_envelope(
                    q.rid,
                    msg_id(1),
                    b"x",
                    now=NOW,
                    max_depth=DEPTH,
                    nonce=b"not a NonceUse",  # type: ignore[arg-type]
                )
            assert await s.depth(q.rid) == 0

        run(open_storage, body)

    def test_concurrent_puts_get_distinct_seqs(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            results = await asyncio.gather(
                *(
                    s.put_envelope(q.rid, msg_id(i), b"m%d" % i, now=NOW, max_depth=DEPTH)
                    for i in range(200)
                )
            )
            assert sorted(r.seq for r in results) == list(range(1, 201))
            assert not any(r.duplicate for r in results)
            stored = {e.seq: e for e in await _fetch_all(s, q.rid)}
            for i, r in enumerate(results):
                assert (stored[r.seq].msg_id, stored[r.seq].data) == (msg_id(i), b"m%d" % i)

        run(open_storage, body)

    def test_concurrent_puts_respect_max_depth(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            results = await asyncio.gather(
                *(
                    s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=100)
                    for i in range(150)
                ),
                return_exceptions=True,
            )
            ok = [r for r in results if isinstance(r, PutResult)]
            full = [r for r in results if isinstance(r, QueueFull)]
            assert (len(ok), len(full)) == (100, 50)
            assert sorted(r.seq for r in ok) == list(range(1, 101))
            assert await s.depth(q.rid) == 100

        run(open_storage, body)

    def test_concurrent_resends_store_once(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            results = await asyncio.gather(
                *(
                    s.put_envelope(q.rid, msg_id(5), b"x", now=NOW, max_depth=DEPTH)
                    for _ in range(20)
                )
            )
            assert {r.seq for r in results} == {1}
            assert sum(not r.duplicate for r in results) == 1
            assert await s.depth(q.rid) == 1

        run(open_storage, body)

    def test_a_failing_call_does_not_fail_its_neighbours(self, open_storage: OpenStorage) -> None:
        q, full, dup = make_queue("a"), make_queue("full"), make_queue("dup")
        nobody = make_queue("nobody")

        async def body(s: RelayStorage) -> None:
            for x in (q, full, dup):
                await s.create_queue(x)
            await s.put_envelope(full.rid, msg_id(0), b"x", now=NOW, max_depth=1)
            good = [
                s.put_envelope(q.rid, msg_id(i), b"g", now=NOW, max_depth=DEPTH) for i in range(60)
            ]
            bad = [
                s.create_queue(dup),
                s.put_envelope(full.rid, msg_id(1), b"x", now=NOW, max_depth=1),
                s.put_envelope(nobody.rid, msg_id(1), b"x", now=NOW, max_depth=DEPTH),
                s.set_sender_key(nobody.rid, bytes(32)),
            ]
            # Interleave the failing calls with the good ones so they share batches.
            calls = good[:20] + bad[:2] + good[20:40] + bad[2:] + good[40:]
            results = await asyncio.gather(*calls, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert [type(e) for e in errors] == [ValueError, QueueFull, ValueError, ValueError]
            assert sorted(r.seq for r in results if isinstance(r, PutResult)) == list(range(1, 61))
            assert await s.depth(q.rid) == 60
            assert await s.depth(full.rid) == 1
            assert await s.queue_by_rid(nobody.rid) is None

        run(open_storage, body)

    def test_concurrent_claims_hand_each_blob_out_once(self, open_storage: OpenStorage) -> None:
        q = make_queue("c", contact=True)
        blobs = [b"otk %d" % i for i in range(10)]

        async def body(s: RelayStorage) -> None:
            await s.create_queue(q)
            await s.put_prekeys(q.rid, signed=b"S", one_time=blobs, replace_one_time=False)
            bundles = await asyncio.gather(*(s.claim_bundle(q.rid) for _ in range(25)))
            handed = [b[1] for b in bundles if b is not None and b[1] is not None]
            assert sorted(handed) == sorted(blobs)
            assert all(b is not None and b[0] == b"S" for b in bundles)
            assert await s.prekey_count(q.rid) == 0

        run(open_storage, body)

    def test_concurrent_nonces_accept_once(self, open_storage: OpenStorage) -> None:
        key = _b("key", 32)

        async def body(s: RelayStorage) -> None:
            used = await asyncio.gather(
                *(s.use_nonce(key, b"same", now=NOW, expires=NOW + 60) for _ in range(30))
            )
            assert sorted(used) == [False] * 29 + [True]

        run(open_storage, body)

    # --- close ------------------------------------------------------------------

    def test_close_finishes_pending_writes_then_refuses(self, open_storage: OpenStorage) -> None:
        q = make_queue("a")

        async def main() -> None:
            s = await open_storage()
            await s.create_queue(q)
            puts = [
                asyncio.ensure_future(
                    s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
                )
                for i in range(50)
            ]
            await asyncio.sleep(0)  # every put has started
            await s.close()
            # A put that started before close either finished or was refused as
            # closed; none failed otherwise. (A backend's own tests may demand
            # that all finished: SQLite's do.)
            results = await asyncio.gather(*puts, return_exceptions=True)
            done = [r.seq for r in results if isinstance(r, PutResult)]
            assert len(done) + sum(isinstance(r, StorageClosed) for r in results) == 50
            assert sorted(done) == list(range(1, len(done) + 1))
            await s.close()  # a second close is harmless
            calls: list[Awaitable[object]] = [
                s.create_queue(make_queue("b")),
                s.queue_by_rid(q.rid),
                s.queue_by_sid(q.sid),
                s.set_sender_key(q.rid, bytes(32)),
                s.put_envelope(q.rid, msg_id(99), b"x", now=NOW, max_depth=DEPTH),
                s.fetch(q.rid, after=0, limit=1),
                s.ack(q.rid, up_to=1),
                s.depth(q.rid),
                s.expire(older_than=NOW),
                s.put_prekeys(q.rid, signed=b"s", one_time=[], replace_one_time=False),
                s.claim_bundle(q.rid),
                s.prekey_count(q.rid),
                s.use_nonce(bytes(32), b"n", now=NOW, expires=NOW),
                s.delete_queue(q.rid),
            ]
            for call in calls:
                with pytest.raises(StorageClosed):
                    await call

        asyncio.run(main())

    # --- the whole contract against a model -----------------------------------

    @settings(
        max_examples=25,
        deadline=None,
        # open_storage hands out a fresh, empty storage on every call; each
        # backend's subclass is another executor of this one contract.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(ops=st.lists(_op, max_size=30))
    def test_matches_a_model(
        self, open_storage: OpenStorage, ops: list[tuple[str | int, ...]]
    ) -> None:
        queues = [make_queue("m0"), make_queue("m1")]
        max_depth = 4

        async def body(s: RelayStorage) -> None:
            model = [_ModelQueue(), _ModelQueue()]
            for x in queues:
                await s.create_queue(x)
            for op in ops:
                name, args = op[0], [int(a) for a in op[1:]]
                if name == "put":
                    qi, m, t = args
                    mq, mid, data = model[qi], msg_id(m), b"data %d" % m
                    held = [seq for seq, e in mq.held.items() if e[0] == mid]
                    want: PutResult | type[QueueFull]
                    if held:
                        want = PutResult(seq=held[0], duplicate=True)
                    elif len(mq.held) >= max_depth:
                        want = QueueFull
                    else:
                        want = PutResult(seq=mq.next_seq, duplicate=False)
                        mq.held[mq.next_seq] = (mid, data, NOW + t)
                        mq.next_seq += 1
                    try:
                        got: PutResult | type[QueueFull] = await s.put_envelope(
                            queues[qi].rid, mid, data, now=NOW + t, max_depth=max_depth
                        )
                    except QueueFull:
                        got = QueueFull
                    assert got == want, op
                elif name == "ack":
                    qi, up_to = args
                    gone = [seq for seq in model[qi].held if seq <= up_to]
                    for seq in gone:
                        del model[qi].held[seq]
                    assert await s.ack(queues[qi].rid, up_to=up_to) == len(gone), op
                elif name == "fetch":
                    qi, after, limit = args
                    want_env = [
                        (seq, *model[qi].held[seq]) for seq in sorted(model[qi].held) if seq > after
                    ][:limit]
                    got_env = await s.fetch(queues[qi].rid, after=after, limit=limit)
                    assert [(e.seq, e.msg_id, e.data, e.received) for e in got_env] == want_env
                else:
                    (t,) = args
                    n = 0
                    for mq in model:
                        old = [seq for seq, e in mq.held.items() if e[2] < NOW + t]
                        n += len(old)
                        for seq in old:
                            del mq.held[seq]
                    assert await s.expire(older_than=NOW + t) == n, op
                for qi, x in enumerate(queues):
                    assert await s.depth(x.rid) == len(model[qi].held)

        run(open_storage, body)


class StreamConformance:
    """The group-stream part of the contract (docs/RELAY.md, "Group
    streams"): positions 1, 2, 3... with no gap or repeat (concurrent posts
    included), idempotent on the blob, a full stream refused for good, an
    unknown stream empty, bad arguments refused with nothing stored.
    Backends' test modules mix it into their conformance class."""

    @pytest.fixture
    def open_storage(self) -> OpenStorage:
        raise NotImplementedError("a backend's test module provides open_storage")

    def test_stream_positions_are_gapless_and_resends_are_held_once(
        self, open_storage: OpenStorage
    ) -> None:
        a, b = stream_id("a"), stream_id("b")

        async def body(s: RelayStorage) -> None:
            assert await s.put_stream_item(a, b"one", log_index=7, now=NOW, max_items=10) == (
                StreamPut(position=1, log_index=7, duplicate=False)
            )
            assert (await s.put_stream_item(a, b"two", log_index=9, now=NOW, max_items=10)) == (
                StreamPut(position=2, log_index=9, duplicate=False)
            )
            # Another stream counts from 1 on its own; the same bytes may be there.
            put = await s.put_stream_item(b, b"one", log_index=7, now=NOW, max_items=10)
            assert (put.position, put.duplicate) == (1, False)
            # A resend of "one" to a: the held item (its log index too), nothing new.
            again = await s.put_stream_item(a, b"one", log_index=99, now=NOW + 5, max_items=10)
            assert again == StreamPut(position=1, log_index=7, duplicate=True)
            assert await s.stream_length(a) == 2
            items = await s.fetch_stream(a, after=0, limit=10)
            assert [(i.position, i.data, i.log_index, i.received) for i in items] == [
                (1, b"one", 7, NOW),
                (2, b"two", 9, NOW),
            ]
            assert [i.position for i in await s.fetch_stream(a, after=1, limit=10)] == [2]
            assert [i.position for i in await s.fetch_stream(a, after=0, limit=1)] == [1]
            assert await s.fetch_stream(a, after=2, limit=10) == []

        run(open_storage, body)

    def test_unknown_stream_is_empty(self, open_storage: OpenStorage) -> None:
        async def body(s: RelayStorage) -> None:
            assert await s.fetch_stream(stream_id("none"), after=0, limit=10) == []
            assert await s.stream_length(stream_id("none")) == 0

        run(open_storage, body)

    def test_a_full_stream_refuses_new_items_but_answers_resends(
        self, open_storage: OpenStorage
    ) -> None:
        a = stream_id("full")

        async def body(s: RelayStorage) -> None:
            for n in range(3):
                await s.put_stream_item(a, b"%d" % n, log_index=n, now=NOW, max_items=3)
            with pytest.raises(StreamFull):
                await s.put_stream_item(a, b"new", log_index=5, now=NOW, max_items=3)
            again = await s.put_stream_item(a, b"1", log_index=0, now=NOW, max_items=3)
            assert again == StreamPut(position=2, log_index=1, duplicate=True)
            assert await s.stream_length(a) == 3
            # The refused post took no position: a larger limit goes on at 4.
            put = await s.put_stream_item(a, b"new", log_index=5, now=NOW, max_items=4)
            assert put.position == 4

        run(open_storage, body)

    def test_stream_byte_and_count_bounds_refuse_and_answer_resends(
        self, open_storage: OpenStorage
    ) -> None:
        """A stream's byte quota (409-style :class:`StreamFull`, for good),
        the relay's most streams (only a new stream is refused) and the
        stream bytes of all streams (:class:`QuotaExceeded`), each item
        charged its blob and STREAM_ITEM_OVERHEAD; a resend of a held item
        is answered whatever the bounds; a refused post stores nothing."""
        a, b, c = stream_id("quota a"), stream_id("quota b"), stream_id("quota c")
        item = 100 + STREAM_ITEM_OVERHEAD  # what one 100-byte blob is charged
        per_stream = StreamLimits(max_items=1000, max_bytes=3 * item)

        async def put(s: RelayStorage, sid: bytes, n: int, limits: StreamLimits) -> StreamPut:
            blob = b"%03d" % n + bytes(97)
            return await s.put_stream_item(
                sid, blob, log_index=n, now=NOW, max_items=limits.max_items, limits=limits
            )

        async def body(s: RelayStorage) -> None:
            assert await s.stream_usage(a) == await s.stream_usage(b)
            for n in range(3):
                assert (await put(s, a, n, per_stream)).position == n + 1
            usage = await s.stream_usage(a)
            assert (usage.items, usage.bytes) == (3, 3 * item)
            with pytest.raises(StreamFull, match="byte quota"):
                await put(s, a, 3, per_stream)
            assert (await put(s, a, 1, per_stream)).duplicate  # a resend: answered
            assert await s.held_stream_item(a, b"%03d" % 1 + bytes(97)) == StreamPut(
                position=2, log_index=1, duplicate=True
            )
            assert await s.held_stream_item(a, b"not held") is None
            assert await s.stream_length(a) == 3
            # Two streams at most: a third is refused, the held ones go on.
            two = StreamLimits(max_items=1000, max_streams=2)
            assert (await put(s, b, 10, two)).position == 1
            with pytest.raises(QuotaExceeded) as info:
                await put(s, c, 20, two)
            assert info.value.kind == "streams"
            assert (await put(s, b, 11, two)).position == 2
            assert await s.fetch_stream(c, after=0, limit=5) == []
            # All streams together: 5 items held; room for one more, not two.
            total = StreamLimits(max_items=1000, total_bytes=6 * item)
            usage = await s.stream_usage(b)
            assert (usage.streams, usage.total_bytes) == (2, 5 * item)
            assert (await put(s, b, 12, total)).position == 3
            with pytest.raises(QuotaExceeded) as info:
                await put(s, a, 13, total)
            assert info.value.kind == "stream_bytes"
            assert await s.stream_length(a) == 3

        run(open_storage, body)

    def test_bad_stream_arguments_are_refused_and_store_nothing(
        self, open_storage: OpenStorage
    ) -> None:
        good = stream_id("good")

        async def body(s: RelayStorage) -> None:
            for bad_id in (b"", bytes(16), bytes(31), bytes(33)):
                with pytest.raises(ValueError, match="stream_id"):
                    await s.put_stream_item(bad_id, b"x", log_index=0, now=NOW, max_items=9)
                with pytest.raises(ValueError, match="stream_id"):
                    await s.fetch_stream(bad_id, after=0, limit=1)
            with pytest.raises(TypeError, match="stream_id"):
                await s.fetch_stream("x" * 32, after=0, limit=1)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="data"):
                await s.put_stream_item(good, b"", log_index=0, now=NOW, max_items=9)
            with pytest.raises(ValueError, match="log_index"):
                await s.put_stream_item(good, b"x", log_index=-1, now=NOW, max_items=9)
            with pytest.raises(ValueError, match="max_items"):
                await s.put_stream_item(good, b"x", log_index=0, now=NOW, max_items=0)
            with pytest.raises(ValueError, match="limit"):
                await s.fetch_stream(good, after=0, limit=0)
            assert await s.stream_length(good) == 0

        run(open_storage, body)

    def test_concurrent_posts_take_distinct_consecutive_positions(
        self, open_storage: OpenStorage
    ) -> None:
        a = stream_id("busy")
        blobs = [b"item %d" % n for n in range(60)]

        async def body(s: RelayStorage) -> None:
            # Each blob posted twice at once: stored once, both answers agree.
            puts = await asyncio.gather(
                *(
                    s.put_stream_item(a, blob, log_index=n, now=NOW, max_items=1000)
                    for n, blob in [*enumerate(blobs), *enumerate(blobs)]
                )
            )
            first, second = puts[: len(blobs)], puts[len(blobs) :]
            assert [p.position for p in first] == [p.position for p in second]
            assert sorted(p.position for p in first) == list(range(1, len(blobs) + 1))
            assert sum(not p.duplicate for p in puts) == len(blobs)
            held = await s.fetch_stream(a, after=0, limit=1000)
            assert [i.position for i in held] == list(range(1, len(blobs) + 1))
            where = {p.position: blob for p, blob in zip(first, blobs, strict=True)}
            assert {i.position: i.data for i in held} == where

        run(open_storage, body)
