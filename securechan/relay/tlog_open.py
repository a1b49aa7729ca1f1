"""Open the relay's transparency log on the backend the deployment names:
``DATA/tlog.db`` (SQLite, the default) or a PostgreSQL database shared by
several relay processes (:mod:`securechan.relay.pg_tlog`). The one call
``relay serve`` makes; both return a :class:`~securechan.relay.tlog.RelayLog`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from securechan.audit.note import VerifierKey
from securechan.primitives import Ed25519SigningKey
from securechan.relay.pg_tlog_store import is_postgres_url
from securechan.relay.tlog import DEFAULT_COSIGN_WINDOW, RelayLog
from securechan.relay.writer_thread import open_in_thread

__all__ = ["open_relay_log"]


async def open_relay_log(
    data: Path,
    key: Ed25519SigningKey,
    *,
    db: str | None = None,
    origin: str | None = None,
    witnesses: Sequence[VerifierKey] = (),
    synchronous: str = "FULL",
    cosign_window: float = DEFAULT_COSIGN_WINDOW,
    clock: Callable[[], float] = time.time,
) -> RelayLog:
    """The log in ``db`` when it is a ``postgresql://`` URL (``synchronous``
    does not apply: PostgreSQL commits are synchronous), else ``data/tlog.db``.
    Raises as the backends' constructors do."""
    if db is not None and is_postgres_url(db):
        from securechan.relay.pg_tlog import PgRelayLog

        return await open_in_thread(
            PgRelayLog,
            db,
            key,
            origin=origin,
            witnesses=witnesses,
            cosign_window=cosign_window,
            clock=clock,
        )
    return await open_in_thread(
        RelayLog,
        data / "tlog.db",
        key,
        origin=origin,
        witnesses=witnesses,
        synchronous=synchronous,
        cosign_window=cosign_window,
        clock=clock,
    )
