"""The relay's storage on PostgreSQL (psycopg 3), shared by several relay processes.

Open with ``storage = await PgStorage.open("postgresql://user@host/db")``
and finish with ``await storage.close()``. It implements
:class:`~securechan.relay.storage.RelayStorage` and passes the same
conformance suite as SQLite (``tests/relay_conformance.py``); the tables
are ``securechan/schema/relay_pg/`` (:class:`~securechan.relay.pg_pool.PgSchema`).

**Several processes, one database.** Nothing is cached in a process:
every operation reads and writes the database in one transaction
(``READ COMMITTED``), so a queue secured or deleted through one process is
seen by all. What must not race is serialised by row locks:

* a send locks its queue row (``SELECT ... FOR UPDATE``) before it reads
  the queue's ``next_seq``, depth and bytes and looks for its ``msg_id``,
  and inserts under that lock: two processes sending to one queue take
  distinct, consecutive sequence numbers, a resend is stored once, and the
  depth and queue byte quota hold exactly;
* the sender byte quota (all queues secured with one key) takes a
  transaction advisory lock on the key when it is checked;
* acks and expiry lock the queue rows before deleting (in ``rid`` order,
  the order sends lock them in: no deadlock), prekey claims take a one-time
  blob with ``FOR UPDATE SKIP LOCKED`` (each handed out once), nonces are
  recorded with ``INSERT ... ON CONFLICT`` (one request wins).

A transaction PostgreSQL still aborts as a deadlock or conflict is run
again (:meth:`~securechan.relay.pg_pool.Pool.run`).

**Durability.** ``synchronous_commit = on`` on every connection: a send
returns once PostgreSQL has flushed its commit, so a 2xx survives a
SIGKILL of the relay or of PostgreSQL (concurrent commits share a flush,
PostgreSQL's own group commit).

**Wake-ups.** A send's transaction also sends ``NOTIFY`` (delivered at its
commit); :meth:`PgStorage.on_wake` registers who is told when another
instance stored an envelope: the relay's push (WebSocket) delivery, so a
receiver connected to process A hears of a send taken by process B.

**Quotas** (:class:`~securechan.relay.storage.Quota`): ``queue_bytes`` and
``sender_bytes`` as in SQLite; ``storage_bytes`` against
``pg_database_size`` (approximate: several processes may each pass it by
one envelope); ``free_bytes`` is not checked (the database server's disk
is not visible from here: PostgreSQL refuses writes on a full disk, which
the relay answers 503).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, Self, TypeVar

from securechan.relay.pg_pool import (
    SENDER_LOCK_CLASS,
    Conn,
    PgSchema,
    Pool,
    WakeListener,
    one,
    redact_dsn,
)
from securechan.relay.pg_prekeys import PgPrekeys
from securechan.relay.sqlite_checks import Nonces, check_bytes, check_id, check_int, check_key
from securechan.relay.sqlite_envelopes import MAX_ENVELOPE_BYTES, MAX_FETCH
from securechan.relay.storage import (
    Envelope,
    HeldEnvelope,
    NonceReused,
    NonceUse,
    PutResult,
    QueueFull,
    QueueRecord,
    Quota,
    QuotaExceeded,
    StorageClosed,
)
from securechan.relay.wake import WAKE_CHANNEL, format_wake

__all__ = ["SCHEMA", "PgStorage", "is_postgres_url"]

T = TypeVar("T")

SCHEMA: Final = PgSchema("relay_pg", title="securechan relay")
_COLUMNS = "rid, sid, recipient_key, sender_key, contact, created"
_ENVELOPE = "seq, msg_id, data, received"
_FULL: Final = object()


def is_postgres_url(value: str) -> bool:
    """Whether ``value`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return value.startswith(("postgresql://", "postgres://"))


def _queue(row: tuple[Any, ...]) -> QueueRecord:
    rid, sid, recipient_key, sender_key, contact, created = row
    return QueueRecord(
        rid=rid,
        sid=sid,
        recipient_key=recipient_key,
        sender_key=sender_key,
        contact=bool(contact),
        created=int(created),
    )


def _envelope(row: tuple[Any, ...]) -> Envelope:
    seq, mid, data, received = row
    return Envelope(seq=int(seq), msg_id=bytes(mid), data=bytes(data), received=int(received))


class PgStorage(PgPrekeys):
    """:class:`~securechan.relay.storage.RelayStorage` on a PostgreSQL database.

    Methods raise :class:`StorageClosed` after :meth:`close`,
    :class:`~securechan.errors.StorageError` when PostgreSQL fails, and
    ``TypeError``/``ValueError`` on misuse, as :class:`SqliteStorage` does.
    """

    def __init__(self, dsn: str, *, pool_size: int = 8) -> None:
        """Not connected yet: use :meth:`open`."""
        if not 1 <= pool_size <= 100:
            raise ValueError("pool_size must be 1 to 100")
        self._dsn = dsn
        self.where = redact_dsn(dsn)
        self._pool = Pool(dsn, size=pool_size)
        self.origin = secrets.token_hex(8)
        self._nonces = Nonces()
        self._next_purge = -(2**63)
        self._listener: WakeListener | None = None
        self._wakes: list[Callable[[str, int], None]] = []
        self._busy = 0
        self._closed = False
        self._close_started = False
        self.schema_version = 0

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 8, listen: bool = True) -> Self:
        """Connect, create or upgrade the schema, and (``listen``) start
        hearing other instances' sends. :class:`StorageError` if the server
        cannot be reached or the database has a newer schema."""
        self = cls(dsn, pool_size=pool_size)
        try:
            await SCHEMA.apply(self._pool, self.where)
            self.schema_version = SCHEMA.version
            if listen:
                self._listener = WakeListener(dsn, self.origin, self._woken)
                self._listener.start()
        except BaseException:
            await self._pool.close()
            raise
        return self

    # --- plumbing -----------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Transactions committed so far by this instance."""
        return self._pool.commits

    write_jobs = commits

    def on_wake(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(queue_tag, seq)`` (:func:`~securechan.relay.wake.queue_tag`)
        whenever another instance commits a new envelope (not a duplicate)."""
        self._wakes.append(callback)

    async def listening(self) -> None:
        """Wait until this instance hears other instances' sends."""
        if self._listener is not None:
            await self._listener.listening.wait()

    def _woken(self, tag: str, seq: int) -> None:
        for callback in self._wakes:
            callback(tag, seq)

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed or self._close_started:
            raise StorageClosed("the relay storage is closed")
        self._busy += 1
        try:
            return await self._pool.run(fn)
        finally:
            self._busy -= 1

    async def close(self) -> None:
        """Let the operations already started finish, then close; every
        later call raises :class:`StorageClosed`. A second call is harmless."""
        self._close_started = True
        while self._busy:
            await asyncio.sleep(0.005)
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            await self._listener.close()
        await self._pool.close()

    # --- queues ---------------------------------------------------------------------

    async def create_queue(self, queue: QueueRecord) -> None:
        """Store a new queue; ``ValueError`` if its rid or sid exists."""
        if not isinstance(queue, QueueRecord) or not isinstance(queue.contact, bool):
            raise TypeError("queue must be a QueueRecord")
        row = (
            check_id(queue.rid, "rid"),
            check_id(queue.sid, "sid"),
            check_key(queue.recipient_key, "recipient_key"),
            None if queue.sender_key is None else check_key(queue.sender_key, "sender_key"),
            queue.contact,
            check_int(queue.created, "created"),
        )

        async def job(conn: Conn) -> bool:
            sql = f"INSERT INTO queues ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"  # noqa: S608
            sql += " ON CONFLICT DO NOTHING"
            return (await conn.execute(sql, row)).rowcount == 1

        if not await self._run(job):
            raise ValueError("a queue with this rid or sid exists")

    async def _queue_by(self, column: str, value: bytes) -> QueueRecord | None:
        sql = f"SELECT {_COLUMNS} FROM queues WHERE {column} = %s"  # noqa: S608 (constants)

        async def job(conn: Conn) -> QueueRecord | None:
            row = await one(conn, sql, (value,))
            return None if row is None else _queue(row)

        return await self._run(job)

    async def queue_by_rid(self, rid: bytes) -> QueueRecord | None:
        """The queue with receive id ``rid``, or ``None``."""
        return await self._queue_by("rid", check_id(rid, "rid"))

    async def queue_by_sid(self, sid: bytes) -> QueueRecord | None:
        """The queue with send id ``sid``, or ``None``."""
        return await self._queue_by("sid", check_id(sid, "sid"))

    async def set_sender_key(self, rid: bytes, sender_key: bytes) -> None:
        """Secure a queue; ``ValueError`` if there is no such queue."""
        args = (check_key(sender_key, "sender_key"), check_id(rid, "rid"))

        async def job(conn: Conn) -> int:
            sql = "UPDATE queues SET sender_key = %s WHERE rid = %s"
            return (await conn.execute(sql, args)).rowcount

        if await self._run(job) != 1:
            raise ValueError("no such queue")

    async def delete_queue(self, rid: bytes) -> None:
        """Delete a queue with its envelopes and prekeys (no error if absent)."""
        args = (check_id(rid, "rid"),)

        async def job(conn: Conn) -> None:
            await conn.execute("DELETE FROM queues WHERE rid = %s", args)  # cascades

        await self._run(job)

    # --- envelopes ------------------------------------------------------------------

    async def put_envelope(
        self,
        rid: bytes,
        msg_id: bytes,
        data: bytes,
        *,
        now: int,
        max_depth: int,
        nonce: NonceUse | None = None,
        quota: Quota | None = None,
    ) -> PutResult:
        """Append durably, idempotent on ``msg_id`` while held (see
        :meth:`RelayStorage.put_envelope`), under the queue row's lock."""
        check_id(rid, "rid")
        check_id(msg_id, "msg_id")
        check_bytes(data, "data", max_size=MAX_ENVELOPE_BYTES)
        check_int(now, "now")
        check_int(max_depth, "max_depth", low=1)
        if nonce is not None and not isinstance(nonce, NonceUse):
            raise TypeError("nonce must be a NonceUse")
        if quota is not None and not isinstance(quota, Quota):
            raise TypeError("quota must be a Quota")
        request = None if nonce is None else Nonces.args(nonce)
        if request is not None:
            await self._purge_nonces(request[3])

        async def job(conn: Conn) -> PutResult | object:
            if request is not None and not await _record_nonce(conn, *request):
                raise NonceReused("this request nonce was already used")
            row = await one(
                conn,
                "SELECT next_seq, depth, bytes, sender_key FROM queues WHERE rid = %s FOR UPDATE",
                (rid,),
            )
            if row is None:
                raise ValueError("no such queue")
            seq, depth, queue_bytes, sender_key = row
            # A new statement, so a new snapshot: it sees what the last
            # holder of the queue's lock committed.
            held = await one(
                conn, "SELECT seq FROM envelopes WHERE rid = %s AND msg_id = %s", (rid, msg_id)
            )
            if held is not None:  # checked before fullness: a resend is never refused
                return PutResult(seq=int(held[0]), duplicate=True)
            if depth >= max_depth:
                return _FULL  # not raised: the nonce stays recorded
            if quota is not None:
                over = await _over_quota(conn, quota, len(data), queue_bytes, sender_key)
                if over is not None:
                    return over  # not raised either
            # The envelope_added trigger moves next_seq on and counts the depth.
            await conn.execute(
                "WITH ins AS (INSERT INTO envelopes (rid, seq, msg_id, data, received)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING seq)"
                " SELECT pg_notify(%s, %s) FROM ins",
                (rid, seq, msg_id, data, now, WAKE_CHANNEL, format_wake(rid, seq, self.origin)),
            )
            return PutResult(seq=int(seq), duplicate=False)

        result = await self._run(job)
        if result is _FULL:
            raise QueueFull("the queue is full")
        if isinstance(result, QuotaExceeded):
            raise result
        if not isinstance(result, PutResult):
            raise TypeError("put_envelope: unexpected job result")  # unreachable
        return result

    async def fetch(
        self, rid: bytes, *, after: int, limit: int, max_bytes: int | None = None
    ) -> list[Envelope]:
        """Envelopes with ``seq > after``, oldest first, at most ``min(limit,
        MAX_FETCH)``; with ``max_bytes``, cut (on the server) before the
        envelope that would pass it, the first one always included."""
        args = (
            check_id(rid, "rid"),
            check_int(after, "after"),
            min(check_int(limit, "limit", low=1), MAX_FETCH),
        )
        budget = None if max_bytes is None else check_int(max_bytes, "max_bytes", low=1)
        if budget is None:
            sql = (
                f"SELECT {_ENVELOPE} FROM envelopes WHERE rid = %s AND seq > %s"  # noqa: S608
                " ORDER BY seq LIMIT %s"
            )
            params: tuple[Any, ...] = args
        else:
            sql = (
                f"SELECT {_ENVELOPE} FROM (SELECT {_ENVELOPE},"  # noqa: S608 (constants)
                " sum(octet_length(data)) OVER (ORDER BY seq) AS total,"
                " row_number() OVER (ORDER BY seq) AS n FROM (SELECT * FROM envelopes"
                " WHERE rid = %s AND seq > %s ORDER BY seq LIMIT %s) AS page) AS counted"
                " WHERE n = 1 OR total <= %s ORDER BY seq"
            )
            params = (*args, budget)

        async def job(conn: Conn) -> list[Envelope]:
            cur = await conn.execute(sql, params, binary=True)
            return [_envelope(r) for r in await cur.fetchall()]

        return await self._run(job)

    async def ack(self, rid: bytes, *, up_to: int) -> int:
        """Delete envelopes with ``seq <= up_to``; return how many."""
        args = (check_id(rid, "rid"), check_int(up_to, "up_to"))

        async def job(conn: Conn) -> int:
            await conn.execute("SELECT 1 FROM queues WHERE rid = %s FOR UPDATE", args[:1])
            cur = await conn.execute("DELETE FROM envelopes WHERE rid = %s AND seq <= %s", args)
            return cur.rowcount

        return await self._run(job)

    async def depth(self, rid: bytes) -> int:
        """How many envelopes the queue holds."""
        args = (check_id(rid, "rid"),)

        async def job(conn: Conn) -> int:
            row = await one(conn, "SELECT depth FROM queues WHERE rid = %s", args)
            return 0 if row is None else int(row[0])

        return await self._run(job)

    async def expire(self, *, older_than: int) -> int:
        """Delete envelopes received before ``older_than``; return how many."""
        args = (check_int(older_than, "older_than"),)

        async def job(conn: Conn) -> int:
            await conn.execute(
                "SELECT 1 FROM queues WHERE rid IN"
                " (SELECT rid FROM envelopes WHERE received < %s) ORDER BY rid FOR UPDATE",
                args,
            )
            cur = await conn.execute("DELETE FROM envelopes WHERE received < %s", args)
            return cur.rowcount

        return await self._run(job)

    async def held_since(
        self, *, received: int, after: tuple[int, bytes, int] | None, limit: int
    ) -> list[HeldEnvelope]:
        """Held envelopes received at or after ``received``, by ``(received,
        rid, seq)``, strictly after the cursor ``after``; at most
        ``min(limit, MAX_FETCH)``."""
        since = check_int(received, "received")
        count = min(check_int(limit, "limit", low=1), MAX_FETCH)
        where = "received >= %s"
        args: tuple[Any, ...] = (since,)
        if after is not None:
            if not isinstance(after, tuple) or len(after) != 3:
                raise TypeError("after must be a (received, rid, seq) tuple")
            where += " AND (received, rid, seq) > (%s, %s, %s)"
            args += (
                check_int(after[0], "after"),
                check_id(after[1], "after"),
                check_int(after[2], "after"),
            )
        sql = (
            f"SELECT rid, {_ENVELOPE} FROM envelopes WHERE {where}"  # noqa: S608 (constants)
            " ORDER BY received, rid, seq LIMIT %s"
        )

        async def job(conn: Conn) -> list[HeldEnvelope]:
            cur = await conn.execute(sql, (*args, count), binary=True)
            return [
                HeldEnvelope(rid=bytes(r[0]), envelope=_envelope(r[1:]))
                for r in await cur.fetchall()
            ]

        return await self._run(job)

    # --- nonces ---------------------------------------------------------------------

    async def use_nonce(self, key: bytes, nonce: bytes, *, now: int, expires: int) -> bool:
        """Record a nonce until ``expires``; ``False`` if it is already recorded
        (by any instance). Expired entries are forgotten on the way."""
        args = Nonces.args(NonceUse(key=key, nonce=nonce, now=now, expires=expires))
        await self._purge_nonces(now)

        async def job(conn: Conn) -> bool:
            return await _record_nonce(conn, *args)

        return await self._run(job)

    async def _purge_nonces(self, now: int) -> None:
        """Expired nonces go, at most once a second per instance, in a
        transaction of their own (a send does not wait on the purge's locks)."""
        if now < self._next_purge:
            return
        self._next_purge = now + 1

        async def job(conn: Conn) -> None:
            await conn.execute("DELETE FROM nonces WHERE expires < %s", (now,))

        await self._run(job)


async def _record_nonce(conn: Conn, key: bytes, nonce: bytes, expires: int, now: int) -> bool:
    # A nonce past its expiry may be used again: the row is then renewed;
    # otherwise nothing changes and rowcount is 0. ON CONFLICT makes two
    # concurrent uses of one nonce (in any processes) record it once.
    cur = await conn.execute(
        "INSERT INTO nonces (key, nonce, expires) VALUES (%s, %s, %s)"
        " ON CONFLICT (key, nonce) DO UPDATE SET expires = excluded.expires"
        " WHERE nonces.expires < %s",
        (key, nonce, expires, now),
    )
    return cur.rowcount == 1


async def _over_quota(
    conn: Conn, quota: Quota, size: int, queue_bytes: int, sender_key: bytes | None
) -> QuotaExceeded | None:
    """The first limit of ``quota`` that ``size`` more bytes would pass."""
    if quota.queue_bytes is not None and queue_bytes + size > quota.queue_bytes:
        return QuotaExceeded("queue")
    if quota.sender_bytes is not None and sender_key is not None:
        # The queue locks of one sender's queues do not serialise its sends
        # to different queues: this lock does, so the sum below holds.
        lock = int.from_bytes(sender_key[:4], "big", signed=True)
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (SENDER_LOCK_CLASS, lock))
        row = await one(
            conn, "SELECT coalesce(sum(bytes), 0) FROM queues WHERE sender_key = %s", (sender_key,)
        )
        if row is not None and int(row[0]) + size > quota.sender_bytes:
            return QuotaExceeded("sender")
    if quota.storage_bytes is not None:
        row = await one(conn, "SELECT pg_database_size(current_database())")
        if row is not None and int(row[0]) + size > quota.storage_bytes:
            return QuotaExceeded("storage")
    return None
