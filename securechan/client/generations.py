"""The state-generation high-water mark, kept outside ``client.db``.

Every protocol store sealed in ``client.db`` (sessions, the prekey store,
the replay guard, the registrations) carries a generation that grows with
each write (``protocol/sealed.py``). A copy of ``client.db`` restored from a
backup holds older generations. To notice, the highest generation each store
reached is kept in a second file, ``state.gen`` in the home folder::

    state.gen = XChaCha20-Poly1305(storage_key, random nonce,
                                   StateGenerations record,
                                   aad = "securechan/v1/state-generations")

``StateGenerations`` (0x00B9) lists ``StateGeneration`` records (0x00B8):
the store's name, its highest generation, and whether a rollback of it was
detected (a session stays marked until ``contact rekey`` discards it, so the
generations a rolled-back session gains by receiving never clear it).

Why a separate file and not the audit chain (``audit.db``): the check runs
on every load, and this file is a few hundred bytes read in one go, where the
audit chain would have to be scanned for the newest entry of each store; and
it is written with one atomic rename, where an audit entry per state write
would double the audit log. The audit log still records every rollback found.

The file is authenticated (sealed under the storage key, which only the
unlocked identity has): it cannot be forged or edited, only deleted or
replaced by an older copy of itself. A restored ``client.db`` alone is then
detected; restoring the whole home folder, ``state.gen`` with it, is not (no
local file can tell an old home from the current one). The peer reports that
case instead (``docs/CLI.md``, Backups).

Writers serialise on the database's write lock (``ClientDB.transaction``);
the mark is raised *after* the state is committed and *before* anything made
from it leaves the machine (``Channel.flush_outbox``), so a crash in between
leaves the mark behind the state (harmless), never ahead (which would look
like a rollback).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from securechan import wire
from securechan.errors import MalformedInput, StorageError, VerificationFailed
from securechan.identity._files import atomic_write, read_bounded
from securechan.primitives import aead_decrypt, aead_encrypt

__all__ = ["GENERATIONS_FILE", "Generations"]

GENERATIONS_FILE = "state.gen"
_AAD = b"securechan/v1/state-generations"
_MAX_FILE = 4 << 20
_MAX_ITEMS = 100_000


@wire.record(0x00B8, "StateGeneration")
@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry(wire.Record):
    name: Annotated[str, wire.text(1, max_len=128)]
    generation: Annotated[int, wire.uint(2)]
    rolled_back: Annotated[bool, wire.boolean(3)]


@wire.record(0x00B9, "StateGenerations")
@dataclass(frozen=True, slots=True, kw_only=True)
class _File(wire.Record):
    items: Annotated[tuple[_Entry, ...], wire.list_(1, max_len=_MAX_FILE, max_items=_MAX_ITEMS)]


_ENTRY = wire.schema_of(_Entry)
_FILE = wire.schema_of(_File)


@dataclass(slots=True)
class _Marks:
    high: dict[str, int] = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)


class Generations:
    """``state.gen``: the highest generation of every store, and the stores
    found rolled back. Callers hold the database's write lock while changing it."""

    def __init__(self, path: Path, storage_key: bytes) -> None:
        self.path = path
        self._key = storage_key
        # The last file read, by (inode, mtime, size), for the checks made on
        # every load (every write replaces the file: a new inode). Changes
        # always re-read the file under the database's write lock.
        self._cached: tuple[tuple[int, int, int], _Marks] | None = None

    def _read(self) -> _Marks:
        """The marks as stored, for reading only (possibly the cached copy)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return _Marks()
        except OSError as e:
            raise StorageError(f"cannot read {self.path}: {e.strerror}") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cached is None or self._cached[0] != stamp:
            self._cached = (stamp, self._parse())
        return self._cached[1]

    def _parse(self) -> _Marks:
        try:
            blob = read_bounded(self.path, _MAX_FILE)
        except FileNotFoundError:
            return _Marks()
        try:
            data = aead_decrypt(self._key, blob, _AAD)
            marks = _Marks()
            for rec in _File.from_bytes(data).items:
                marks.high[rec.name] = rec.generation
                if rec.rolled_back:
                    marks.rolled_back.add(rec.name)
            return marks
        except (VerificationFailed, MalformedInput):
            # Refusing to go on is the only safe answer: without the mark a
            # restored client.db would pass unnoticed.
            raise StorageError(
                f"{self.path} was altered or is not this identity's; "
                "move it aside only if you know no backup was restored"
            ) from None

    def _write(self, marks: _Marks) -> None:
        items = tuple(
            _Entry(name=name, generation=gen, rolled_back=name in marks.rolled_back)
            for name, gen in sorted(marks.high.items())
        )
        data = _File(items=items).to_bytes()
        atomic_write(self.path, aead_encrypt(self._key, data, _AAD), replace=True)

    def high(self, name: str) -> int:
        """The highest generation ``name`` reached (0 if never recorded)."""
        return self._read().high.get(name, 0)

    def is_rolled_back(self, name: str, generation: int) -> bool:
        """Is a stored ``name`` at ``generation`` older than one already
        used, or was it found rolled back before?"""
        marks = self._read()
        return name in marks.rolled_back or generation < marks.high.get(name, 0)

    def raise_to(self, generations: dict[str, int]) -> None:
        """Raise the mark of each store to at least the given generation
        (never lower it); write (fsync'ed, atomic) only if something changed."""
        marks = self._parse()  # never the cache: a stale copy would lower marks
        changed = False
        for name, gen in generations.items():
            if gen > marks.high.get(name, 0):
                marks.high[name] = gen
                changed = True
        if changed or not self.path.exists():
            self._write(marks)

    def mark_rolled_back(self, name: str) -> None:
        """Remember that ``name`` was found rolled back (until :meth:`forget`)."""
        marks = self._parse()
        if name in marks.rolled_back:
            return
        marks.rolled_back.add(name)
        marks.high.setdefault(name, 0)
        self._write(marks)

    def forget(self, name: str) -> None:
        """``name`` was discarded (a session re-keyed): clear its rollback
        mark. Its high-water mark stays, so the old state can never return."""
        marks = self._parse()
        if name in marks.rolled_back:
            marks.rolled_back.discard(name)
            self._write(marks)

    def rolled_back(self) -> set[str]:
        """The names of every store found rolled back and not yet discarded."""
        return set(self._read().rolled_back)
