"""PostgreSQL plumbing for the relay (psycopg 3): connections, transactions
with retries, the versioned schema, the wake-up channel, a DSN fit to print.

Used by :class:`~securechan.relay.pg_store.PgStorage`; importing this
module imports psycopg (an optional dependency: ``securechan[postgres]``),
so nothing else in the relay imports it unless ``--db postgresql://...``
was asked for.

**Transactions.** Every storage operation runs in one transaction on a
connection of a small pool (:class:`Pool`); a transaction PostgreSQL aborts
to break a deadlock or a serialization conflict (SQLSTATE class 40) is run
again from the start, up to :data:`RETRIES` times. Any other database
failure (server gone, disk full, a connection lost mid-commit) raises
:class:`~securechan.errors.StorageError`, which the relay answers with 503;
the caller may retry (a send is idempotent on its ``msg_id``).

**Schema** (:class:`PgSchema`): ``securechan/schema/<name>/vN.sql`` makes a
new database, ``upgrade-to-vN.sql`` upgrades from N-1; the table
``schema_version (component, version)`` holds each component's version.
Each step runs in one transaction that first takes a transaction-level
advisory lock, so relay processes starting together migrate once; a
database at a newer version than this code knows is refused.

**Wake-ups** (:class:`WakeListener`, :mod:`securechan.relay.wake`): a send commits ``NOTIFY
securechan_envelope, '<tag> <seq> <origin>'`` in its own transaction, so
the notification is delivered if and only if the envelope is committed.
``tag`` is :func:`queue_tag` (a hash of the queue id: the payload never
carries an id or content), ``origin`` a random id of the sending storage
instance (an instance ignores its own notifications: it already told its
own WebSockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.abc import Traversable
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncConnection, conninfo, errors

from securechan.errors import StorageError
from securechan.relay.wake import WAKE_CHANNEL, parse_wake
from securechan.sqlite_schema import SCHEMA_ROOT

__all__ = [
    "RETRIES",
    "SCHEMA_LOCK",
    "SENDER_LOCK_CLASS",
    "PgSchema",
    "Pool",
    "WakeListener",
    "one",
    "redact_dsn",
]

T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]
log = logging.getLogger("securechan.relay")

RETRIES: Final = 8
"""Runs of one transaction that PostgreSQL aborted as a deadlock or conflict."""
SCHEMA_LOCK: Final = (0x5EC0, 1)
"""Advisory lock (two-int form: class, object) held while a schema step runs."""
SENDER_LOCK_CLASS: Final = 0x5EC1
"""Advisory lock class of the sender byte quota (object: a hash of the key)."""


def redact_dsn(dsn: str) -> str:
    """``dsn`` fit for a log line: ``postgresql://user@host:port/dbname``,
    never the password (nor any other parameter, which may hold one)."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql://(unparsable connection string)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "")
    port = f":{parts['port']}" if parts.get("port") else ""
    name = str(parts.get("dbname") or "")
    return f"postgresql://{user}{host}{port}/{name}"


def _why(exc: BaseException) -> str:
    """A database error's first line (psycopg's messages carry no password)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def one(conn: Conn, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The first row of ``sql``, or ``None``."""
    return await (await conn.execute(sql, args)).fetchone()


async def connect(dsn: str) -> Conn:
    """One autocommit connection (transactions are explicit) with
    ``synchronous_commit = on``: a commit returns once its WAL is flushed."""
    try:
        conn = await AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute("SET synchronous_commit = on")
    except psycopg.Error as e:
        raise StorageError(f"cannot connect to {redact_dsn(dsn)}: {_why(e)}") from None
    return conn


@dataclass
class Pool:
    """At most ``size`` connections to ``dsn``, opened as needed."""

    dsn: str
    size: int = 8
    _idle: list[Conn] = field(default_factory=list)
    _open: int = 0
    _freed: asyncio.Condition = field(default_factory=asyncio.Condition)
    commits: int = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        async with self._freed:
            while not self._idle and self._open >= self.size:
                await self._freed.wait()
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                self._open += 1
        if conn is None:
            try:
                conn = await connect(self.dsn)
            except BaseException:
                await self._release(None)
                raise
        try:
            yield conn
        finally:
            await self._release(None if conn.broken or conn.closed else conn)

    async def _release(self, conn: Conn | None) -> None:
        async with self._freed:
            if conn is None:
                self._open -= 1
            else:
                self._idle.append(conn)
            self._freed.notify()

    async def run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` in one transaction, run again if PostgreSQL aborted it as a
        deadlock or serialization conflict; database failures raise
        :class:`StorageError`, ``fn``'s own exceptions pass through (after
        the rollback)."""
        for attempt in range(RETRIES):
            try:
                async with self.connection() as conn, conn.transaction():
                    result = await fn(conn)
                self.commits += 1
                return result
            except errors.TransactionRollback:
                # The two transactions' losers wait a little, differently.
                await asyncio.sleep(0.001 * (attempt + 1) * (1 + secrets.randbelow(4)))
            except psycopg.Error as e:
                raise StorageError(f"PostgreSQL: {_why(e)}") from None
        raise StorageError("PostgreSQL: a transaction kept conflicting; try again")

    async def close(self) -> None:
        async with self._freed:
            idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (component text PRIMARY KEY, version integer NOT NULL CHECK (version >= 1))"
)


@dataclass(frozen=True)
class PgSchema:
    """The versioned PostgreSQL schema ``securechan/schema/<name>/`` of one component."""

    name: str
    title: str
    folder: Traversable | None = None

    @property
    def _dir(self) -> Traversable:
        return self.folder if self.folder is not None else SCHEMA_ROOT / self.name

    @property
    def version(self) -> int:
        """This code's newest ``vN.sql``."""
        found = [
            int(e.name[1:-4])
            for e in self._dir.iterdir()
            if e.name.startswith("v") and e.name.endswith(".sql") and e.name[1:-4].isdigit()
        ]
        if not found:
            raise ValueError(f"no vN.sql schema for {self.name}")
        return max(found)

    async def apply(self, pool: Pool, where: str) -> int:
        """Create or upgrade, one step per transaction; return the version
        found (0: a new database). :class:`StorageError` for a newer one."""
        found: int | None = None
        while True:
            step = await pool.run(lambda conn: self._step(conn, where))
            if found is None:
                found = step[0]
            if step[1]:
                return found

    async def _step(self, conn: Conn, where: str) -> tuple[int, bool]:
        """One step: ``(version before, done)``."""
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", SCHEMA_LOCK)
        await conn.execute(_VERSION_TABLE)
        row = await (
            await conn.execute(
                "SELECT version FROM schema_version WHERE component = %s", (self.name,)
            )
        ).fetchone()
        version = 0 if row is None else int(str(row[0]))
        current = self.version
        if version > current:
            raise StorageError(
                f"{where} has {self.title} schema version {version}, newer than this"
                f" securechan knows ({current}): refusing to use it; run a newer securechan"
            )
        if version == current:
            return version, True
        script = f"v{current}.sql" if version == 0 else f"upgrade-to-v{version + 1}.sql"
        try:
            text = (self._dir / script).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StorageError(f"{where}: no upgrade from {self.title} schema {version}") from None
        await conn.execute(text.encode())  # no parameters: several statements at once
        target = current if version == 0 else version + 1
        await conn.execute(
            "INSERT INTO schema_version (component, version) VALUES (%s, %s)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (self.name, target),
        )
        return version, False


class WakeListener:
    """``LISTEN securechan_envelope`` on a connection of its own; calls
    ``on_wake(tag, seq)`` for each envelope another instance committed.
    A lost connection is opened again (with a warning), every few seconds."""

    def __init__(self, dsn: str, origin: str, on_wake: Callable[[str, int], None]) -> None:
        self._dsn = dsn
        self._origin = origin
        self._on_wake = on_wake
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                conn = await connect(self._dsn)
                try:
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    self.listening.set()
                    async for note in conn.notifies():
                        wake = parse_wake(note.payload)
                        if wake is not None and wake[2] != self._origin:
                            self._on_wake(wake[0], wake[1])
                finally:
                    self.listening.clear()
                    await conn.close()
            except (StorageError, psycopg.Error) as e:
                log.warning("PostgreSQL wake-ups: %s; listening again in 2 s", _why(e))
                await asyncio.sleep(2)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
