"""Copy a stopped relay's ``DATA/relay.db`` into the PostgreSQL storage
(``securechan relay migrate``; docs/RELAY.md, "Moving a relay to PostgreSQL").

Queues, envelopes, signed and one-time prekeys, group streams and their
items, and the request nonces not yet expired are copied in ONE
PostgreSQL transaction from ONE SQLite read snapshot, into a database
whose storage is empty (a database that already holds a queue or a group
stream is refused: nothing is written). The tables have the same
names and columns on both sides; queues go first with ``depth`` and
``bytes`` at 0 and their ``next_seq``, and the envelope triggers count the
depth and bytes again as the envelopes go in (streams likewise: ``items``
and ``bytes`` at 0, counted again by their trigger). Before the commit every
queue's ``next_seq``, depth and bytes, every stream's item count and bytes,
and every table's row count, are compared with the source: any difference
rolls the copy back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from securechan.errors import StorageError
from securechan.relay.pg_pool import Pool, redact_dsn
from securechan.relay.pg_store import SCHEMA
from securechan.relay.sqlite_store import SCHEMA as SQLITE_SCHEMA
from securechan.sqlite_schema import connect as sqlite_connect

if TYPE_CHECKING:
    import sqlite3

    from securechan.relay.pg_pool import Conn

__all__ = ["copy_storage"]

_TABLES = (
    "queues",
    "envelopes",
    "signed_prekeys",
    "one_time_prekeys",
    "nonces",
    "streams",
    "stream_items",
)


def _read(path: Path, now: int) -> tuple[sqlite3.Connection, dict[str, list[tuple[object, ...]]]]:
    if not path.is_file():
        raise StorageError(f"{path}: no relay database there")
    conn = sqlite_connect(path, read_only=True, secure_delete=False, foreign_keys=False)
    try:
        if SQLITE_SCHEMA.check(conn, path) == 0:
            raise StorageError(f"{path}: not a relay database")
        conn.execute("BEGIN")  # one snapshot for everything read below
        rows = {
            "queues": conn.execute(
                "SELECT rid, sid, recipient_key, sender_key, contact, created, next_seq,"
                " depth, bytes FROM queues ORDER BY rid"
            ).fetchall(),
            "envelopes": conn.execute(
                "SELECT rid, seq, msg_id, data, received FROM envelopes ORDER BY rid, seq"
            ).fetchall(),
            "signed_prekeys": conn.execute("SELECT rid, blob FROM signed_prekeys").fetchall(),
            "one_time_prekeys": conn.execute(
                "SELECT id, rid, blob FROM one_time_prekeys ORDER BY id"
            ).fetchall(),
            "nonces": conn.execute(
                "SELECT key, nonce, expires FROM nonces WHERE expires >= ?", (now,)
            ).fetchall(),
            "streams": conn.execute(
                "SELECT stream_id, created, items, bytes FROM streams ORDER BY stream_id"
            ).fetchall(),
            "stream_items": conn.execute(
                "SELECT stream_id, position, digest, data, log_index, received"
                " FROM stream_items ORDER BY stream_id, position"
            ).fetchall(),
        }
    except BaseException:
        conn.close()
        raise
    return conn, rows


async def copy_storage(data_dir: Path, url: str, *, now: int | None = None) -> str:
    """Copy ``data_dir/relay.db`` into the PostgreSQL storage at ``url``;
    return a one-line summary. Raises :class:`StorageError` (nothing is
    written then)."""
    import time

    src, rows = _read(data_dir / "relay.db", int(time.time()) if now is None else now)
    src.close()
    pool = Pool(url, size=1)
    try:
        await SCHEMA.apply(pool, redact_dsn(url))

        async def copy(conn: Conn) -> None:
            held = await (
                await conn.execute("SELECT (SELECT count(*) FROM queues), count(*) FROM streams")
            ).fetchone()
            if held is None or held[0] != 0:
                raise StorageError(f"{redact_dsn(url)} already holds relay queues")
            if held[1] != 0:
                raise StorageError(f"{redact_dsn(url)} already holds group streams")
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO queues (rid, sid, recipient_key, sender_key, contact, created,"
                    " next_seq, depth, bytes) VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 0)",
                    [(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows["queues"]],
                )
                await cur.executemany(
                    "INSERT INTO envelopes (rid, seq, msg_id, data, received)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    rows["envelopes"],
                )
                await cur.executemany(
                    "INSERT INTO signed_prekeys (rid, blob) VALUES (%s, %s)",
                    rows["signed_prekeys"],
                )
                await cur.executemany(
                    "INSERT INTO one_time_prekeys (id, rid, blob) OVERRIDING SYSTEM VALUE"
                    " VALUES (%s, %s, %s)",
                    rows["one_time_prekeys"],
                )
                # The identity goes on after the copied ids.
                await cur.execute(
                    "SELECT setval(pg_get_serial_sequence('one_time_prekeys', 'id'),"
                    " greatest((SELECT max(id) FROM one_time_prekeys), 1))"
                )
                await cur.executemany(
                    "INSERT INTO nonces (key, nonce, expires) VALUES (%s, %s, %s)",
                    rows["nonces"],
                )
                await cur.executemany(
                    "INSERT INTO streams (stream_id, created) VALUES (%s, %s)",
                    [r[:2] for r in rows["streams"]],
                )
                await cur.executemany(
                    "INSERT INTO stream_items (stream_id, position, digest, data, log_index,"
                    " received) VALUES (%s, %s, %s, %s, %s, %s)",
                    rows["stream_items"],
                )
            # Checked before the commit: the triggers' counts and every table.
            copied = await (
                await conn.execute("SELECT rid, next_seq, depth, bytes FROM queues ORDER BY rid")
            ).fetchall()
            want = [(r[0], r[6], r[7], r[8]) for r in rows["queues"]]
            got = [(bytes(r[0]), r[1], r[2], r[3]) for r in copied]
            if got != want:
                raise StorageError("the copied queues' next_seq, depth or bytes differ")
            copied = await (
                await conn.execute("SELECT stream_id, items, bytes FROM streams ORDER BY stream_id")
            ).fetchall()
            if [(bytes(r[0]), r[1], r[2]) for r in copied] != [
                (r[0], r[2], r[3]) for r in rows["streams"]
            ]:
                raise StorageError("the copied streams' item counts or bytes differ")
            for table in _TABLES:
                query = f"SELECT count(*) FROM {table}"  # noqa: S608 - a name from _TABLES
                count = await (await conn.execute(query)).fetchone()
                if count is None or count[0] != len(rows[table]):
                    raise StorageError(f"the copied {table} table differs from relay.db's")

        await pool.run(copy)
    finally:
        await pool.close()
    return (
        f"storage copied: {len(rows['queues'])} queues, {len(rows['envelopes'])} envelopes, "
        f"{len(rows['signed_prekeys'])} signed and {len(rows['one_time_prekeys'])} one-time "
        f"prekeys, {len(rows['nonces'])} nonces, {len(rows['streams'])} group streams with "
        f"{len(rows['stream_items'])} items (counts and positions checked)"
    )
