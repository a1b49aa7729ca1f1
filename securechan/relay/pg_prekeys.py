"""The prekey operations of :class:`~securechan.relay.pg_store.PgStorage`:
the sealed signed-prekey blob and the sealed one-time blobs of each contact
address, on PostgreSQL. A claim takes its one-time blob with ``FOR UPDATE
SKIP LOCKED``, so concurrent claims in any processes each get a different
blob (handed out once); uploads lock the queue row, so the count they check
holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from securechan.relay.pg_pool import Conn, one
from securechan.relay.sqlite_checks import check_bytes, check_id
from securechan.relay.sqlite_prekeys import MAX_ONE_TIME_HELD, MAX_PREKEY_BLOB

__all__ = ["PgPrekeys"]

T = TypeVar("T")


class PgPrekeys:
    """Sealed prekey blobs by queue (a base of :class:`PgStorage`)."""

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError  # PgStorage runs it in a transaction

    # --- prekeys --------------------------------------------------------------------

    async def put_prekeys(
        self, rid: bytes, *, signed: bytes, one_time: list[bytes], replace_one_time: bool
    ) -> int:
        """Store the signed blob, add (or replace) one-time blobs; return how
        many are held. ``ValueError`` if there is no such queue or it would
        hold more than ``MAX_ONE_TIME_HELD`` one-time blobs (nothing changes)."""
        check_id(rid, "rid")
        check_bytes(signed, "signed", max_size=MAX_PREKEY_BLOB)
        if not isinstance(one_time, list):
            raise TypeError("one_time must be a list")
        if len(one_time) > MAX_ONE_TIME_HELD:
            raise ValueError(f"a queue holds at most {MAX_ONE_TIME_HELD} one-time prekeys")
        blobs = [(rid, check_bytes(b, "one_time blob", max_size=MAX_PREKEY_BLOB)) for b in one_time]
        if not isinstance(replace_one_time, bool):
            raise TypeError("replace_one_time must be a bool")

        async def job(conn: Conn) -> int:
            # The queue's lock serialises uploads, so the count below holds.
            if await one(conn, "SELECT 1 FROM queues WHERE rid = %s FOR UPDATE", (rid,)) is None:
                raise ValueError("no such queue")
            if replace_one_time:
                await conn.execute("DELETE FROM one_time_prekeys WHERE rid = %s", (rid,))
            row = await one(conn, "SELECT count(*) FROM one_time_prekeys WHERE rid = %s", (rid,))
            held = 0 if row is None else int(row[0])
            if held + len(blobs) > MAX_ONE_TIME_HELD:
                raise ValueError(f"a queue holds at most {MAX_ONE_TIME_HELD} one-time prekeys")
            await conn.execute(
                "INSERT INTO signed_prekeys (rid, blob) VALUES (%s, %s)"
                " ON CONFLICT (rid) DO UPDATE SET blob = excluded.blob",
                (rid, signed),
            )
            if blobs:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO one_time_prekeys (rid, blob) VALUES (%s, %s)", blobs
                    )
            return held + len(blobs)

        return await self._run(job)

    async def claim_bundle(self, rid: bytes) -> tuple[bytes, bytes | None, int] | None:
        """The signed blob, the oldest one-time blob no other claim holds
        (removed: handed out once), how many remain."""
        check_id(rid, "rid")

        async def job(conn: Conn) -> tuple[bytes, bytes | None, int] | None:
            row = await one(conn, "SELECT blob FROM signed_prekeys WHERE rid = %s", (rid,))
            if row is None:
                return None
            taken = await one(
                conn,
                "DELETE FROM one_time_prekeys WHERE id = (SELECT id FROM one_time_prekeys"
                " WHERE rid = %s ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING blob",
                (rid,),
            )
            left = await one(conn, "SELECT count(*) FROM one_time_prekeys WHERE rid = %s", (rid,))
            return (
                bytes(row[0]),
                None if taken is None else bytes(taken[0]),
                int(left[0] if left else 0),
            )

        return await self._run(job)

    async def prekey_count(self, rid: bytes) -> int:
        """How many one-time blobs remain."""
        args = (check_id(rid, "rid"),)

        async def job(conn: Conn) -> int:
            row = await one(conn, "SELECT count(*) FROM one_time_prekeys WHERE rid = %s", args)
            return 0 if row is None else int(row[0])

        return await self._run(job)
