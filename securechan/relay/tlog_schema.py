"""The schema of the relay's transparency log file (``tlog.db``): the tree's
tables and the relay's, in ``securechan/schema/relay_log/`` (docs/STORAGE.md).
Shared by the log's writer (:mod:`securechan.relay.tlog`) and its reader
thread (:mod:`securechan.relay.tlog_reader`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from securechan.audit.tree import legacy_version
from securechan.errors import StorageError
from securechan.sqlite_schema import Schema

__all__ = ["SCHEMA", "synced_transaction"]


def _legacy_version(db: sqlite3.Connection) -> int:
    # Version 1 kept the tree's version in schema_version and the relay
    # tables' in relay_log_schema (absent if the first start stopped between
    # the two): both 1.
    version = legacy_version(db)
    has = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'relay_log_schema'").fetchone()
    if has and db.execute("SELECT version FROM relay_log_schema").fetchall() != [(1,)]:
        raise StorageError("tlog.db: damaged relay_log_schema table")
    return version


SCHEMA: Final = Schema(
    "relay_log",
    application_id=0x7363544C,
    title="a securechan relay log (tlog.db)",
    legacy=_legacy_version,
)
"""``securechan/schema/relay_log/``: the tree's tables and the relay's."""


@contextmanager
def synced_transaction(index: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` of the (otherwise NORMAL) index
    connection, synced with ``synchronous=FULL``: durable before the caller
    goes on. Rolled back if the block raises; NORMAL again after."""
    index.execute("PRAGMA synchronous = FULL")
    try:
        index.execute("BEGIN IMMEDIATE")
        try:
            yield
            index.execute("COMMIT")
        except BaseException:
            if index.in_transaction:
                index.execute("ROLLBACK")
            raise
    finally:
        index.execute("PRAGMA synchronous = NORMAL")
