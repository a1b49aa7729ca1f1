"""The client database's tables of relay transparency logs: pinned log keys,
newest checkpoints, witness policies and kept log receipts.

A part of :class:`~securechan.client.db.ClientDB` (which inherits these
methods). Everything here is public (the relay serves the same keys, notes
and proofs), so nothing is sealed.
"""

from __future__ import annotations

import sqlite3

__all__ = ["LogTables"]


class LogTables:
    """``relay_logs``, ``witness_policy`` and ``log_receipts``."""

    _db: sqlite3.Connection

    def relay_log(self, relay: str) -> tuple[str, str | None] | None:
        """The pinned log verifier key of a relay and the newest checkpoint
        (signed note text) we verified from it."""
        row = self._db.execute(
            "SELECT verifier_key, checkpoint FROM relay_logs WHERE relay = ?", (relay,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def relay_logs(self) -> list[tuple[str, str, str | None]]:
        """(relay, log verifier key, newest checkpoint) of every pinned relay log."""
        rows = self._db.execute(
            "SELECT relay, verifier_key, checkpoint FROM relay_logs ORDER BY relay"
        ).fetchall()
        return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    def set_witness_policy(self, relay: str, witnesses: list[str], required: int) -> None:
        """The witnesses (verifier key lines) whose cosignatures a checkpoint of
        ``relay`` needs, and how many of them; an empty list removes it."""
        if not witnesses:
            self._db.execute("DELETE FROM witness_policy WHERE relay = ?", (relay,))
            return
        self._db.execute(
            "INSERT INTO witness_policy (relay, witnesses, required) VALUES (?, ?, ?) "
            "ON CONFLICT(relay) DO UPDATE SET witnesses = excluded.witnesses, "
            "required = excluded.required, witnessed = NULL",
            (relay, "\n".join(witnesses), required),
        )

    def witness_policy(self, relay: str) -> tuple[list[str], int, str | None] | None:
        """(witness keys, required, newest checkpoint that met the policy)."""
        row = self._db.execute(
            "SELECT witnesses, required, witnessed FROM witness_policy WHERE relay = ?", (relay,)
        ).fetchone()
        return None if row is None else (str(row[0]).split("\n"), int(row[1]), row[2])

    def set_witnessed(self, relay: str, checkpoint: str) -> None:
        """Keep the newest checkpoint of ``relay`` that met its witness policy."""
        self._db.execute(
            "UPDATE witness_policy SET witnessed = ? WHERE relay = ?", (checkpoint, relay)
        )

    def add_log_receipt(self, envelope_hash: bytes, relay: str, receipt: str) -> None:
        """Keep a verified log receipt (JSON text) of an envelope we sent, for
        statements. Receipts are public (the relay serves the same proofs)."""
        self._db.execute(
            "INSERT OR REPLACE INTO log_receipts (envelope_hash, relay, receipt) VALUES (?, ?, ?)",
            (envelope_hash, relay, receipt),
        )

    def log_receipts(self, envelope_hash: bytes) -> list[tuple[str, str]]:
        """(relay, receipt JSON) of every receipt kept for an envelope."""
        rows = self._db.execute(
            "SELECT relay, receipt FROM log_receipts WHERE envelope_hash = ? ORDER BY relay",
            (envelope_hash,),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def set_relay_log(self, relay: str, verifier_key: str, checkpoint: str | None) -> None:
        """Pin a relay's log key (first use) or advance its newest checkpoint."""
        self._db.execute(
            "INSERT INTO relay_logs (relay, verifier_key, checkpoint) VALUES (?, ?, ?) "
            "ON CONFLICT(relay) DO UPDATE SET checkpoint = excluded.checkpoint",
            (relay, verifier_key, checkpoint),
        )
