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
  depth and queue byte quota hold exactly. The whole send is one call of
  the schema's ``securechan_put_envelope`` function: one round trip, its
  own transaction;
* the sender byte quota (all queues secured with one key) takes a
  transaction advisory lock on the key when it is checked;
* a group-stream post locks its stream row the same way
  (:mod:`~securechan.relay.pg_streams`): gapless positions across processes;
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

**Wake-ups.** Once a send committed, a ``NOTIFY`` announces it (batched,
after the commit: :class:`~securechan.relay.pg_pool.WakeSender` says why);
:meth:`PgStorage.on_wake` registers who is told when another
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

import psycopg

from securechan.errors import StorageError
from securechan.relay.pg_pool import (
    Conn,
    PgSchema,
    Pool,
    WakeListener,
    WakeSender,
    one,
    redact_dsn,
)
from securechan.relay.pg_prekeys import PgPrekeys
from securechan.relay.pg_streams import PgStreams
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
from securechan.relay.wake import format_wake

__all__ = ["SCHEMA", "PgStorage", "is_postgres_url"]

T = TypeVar("T")

SCHEMA: Final = PgSchema("relay_pg", title="securechan relay")
_COLUMNS = "rid, sid, recipient_key, sender_key, contact, created"
_ENVELOPE = "seq, msg_id, data, received"
_PUT = "SELECT status, seq FROM securechan_put_envelope(" + ", ".join(["%s"] * 12) + ")"  # noqa: S608


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


class PgStorage(PgPrekeys, PgStreams):
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
        self._wakes_out = WakeSender(self._pool)
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

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        if self._closed or self._close_started:
            raise StorageClosed("the relay storage is closed")
        self._busy += 1
        try:
            return await self._pool.run(fn, transaction=transaction)
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
        await self._wakes_out.close()
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

        if not await self._run(job, transaction=False):
            raise ValueError("a queue with this rid or sid exists")

    async def _queue_by(self, column: str, value: bytes) -> QueueRecord | None:
        sql = f"SELECT {_COLUMNS} FROM queues WHERE {column} = %s"  # noqa: S608 (constants)

        async def job(conn: Conn) -> QueueRecord | None:
            row = await one(conn, sql, (value,))
            return None if row is None else _queue(row)

        return await self._run(job, transaction=False)

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

        if await self._run(job, transaction=False) != 1:
            raise ValueError("no such queue")

    async def delete_queue(self, rid: bytes) -> None:
        """Delete a queue with its envelopes and prekeys (no error if absent)."""
        args = (check_id(rid, "rid"),)

        async def job(conn: Conn) -> None:
            await conn.execute("DELETE FROM queues WHERE rid = %s", args)  # cascades

        await self._run(job, transaction=False)

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
        :meth:`RelayStorage.put_envelope`), under the queue row's lock: one
        call of ``securechan_put_envelope`` (``schema/relay_pg/v2.sql``)."""
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

        limits = quota or Quota()
        args = (
            *(rid, msg_id, data, now, max_depth),
            *(request[:3] if request else (None, None, None)),
            request[3] if request else None,
            *(limits.queue_bytes, limits.sender_bytes, limits.storage_bytes),
        )

        async def job(conn: Conn) -> tuple[str, int | None]:
            try:
                row = await one(conn, _PUT, args)
            except psycopg.Error as e:
                if e.sqlstate == "SC404":
                    raise ValueError("no such queue") from None
                raise
            if row is None:  # a function call always answers one row
                raise StorageError("PostgreSQL: securechan_put_envelope answered nothing")
            return str(row[0]), None if row[1] is None else int(row[1])

        # One statement: its own transaction, one round trip.
        status, seq = await self._run(job, transaction=False)
        if status in ("stored", "duplicate") and seq is not None:
            if status == "stored":
                self._wakes_out.add(format_wake(rid, seq, self.origin))
            return PutResult(seq=seq, duplicate=status == "duplicate")
        if status == "nonce_reused":
            raise NonceReused("this request nonce was already used")
        if status == "full":
            raise QueueFull("the queue is full")
        if status in ("queue", "sender", "storage"):
            raise QuotaExceeded(status)
        raise StorageError(f"PostgreSQL: unexpected send status {status!r}")

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

        return await self._run(job, transaction=False)

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

        return await self._run(job, transaction=False)

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

        return await self._run(job, transaction=False)

    # --- nonces ---------------------------------------------------------------------

    async def use_nonce(self, key: bytes, nonce: bytes, *, now: int, expires: int) -> bool:
        """Record a nonce until ``expires``; ``False`` if it is already recorded
        (by any instance). Expired entries are forgotten on the way."""
        args = Nonces.args(NonceUse(key=key, nonce=nonce, now=now, expires=expires))
        await self._purge_nonces(now)

        async def job(conn: Conn) -> bool:
            return await _record_nonce(conn, *args)

        return await self._run(job, transaction=False)

    async def _purge_nonces(self, now: int) -> None:
        """Expired nonces go, at most once a second per instance, in a
        transaction of their own (a send does not wait on the purge's locks)."""
        if now < self._next_purge:
            return
        self._next_purge = now + 1

        async def job(conn: Conn) -> None:
            await conn.execute("DELETE FROM nonces WHERE expires < %s", (now,))

        await self._run(job, transaction=False)


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
