"""One way to open every securechan SQLite file: settings, then a versioned schema.

Five stores keep SQLite files: the client's ``client.db``, the audit log's
``audit.db``, the relay's ``relay.db`` and ``tlog.db``, and a standalone
Merkle tree (:class:`~securechan.audit.tree.TreeStore`). Each opens its
connections with :func:`connect` and brings the file to its schema with
:meth:`Schema.apply` (or checks it with :meth:`Schema.check` when read-only).

**Schema files** live in the package, ``securechan/schema/<store>/``, in the
manner of magic-wormhole's mailbox server (``db-schemas/``):

* ``vN.sql`` — the whole schema at version N, run on a new file. Only the
  newest is needed; N is the store's current version.
* ``upgrade-to-vN.sql`` — turns a version N-1 file into version N. A first
  line ``-- from-version: K`` lets one file upgrade every version K..N-1
  (the client's old scripts were idempotent, so one step covers them all);
  ``-- from-version: 0`` makes it the new files' schema too, in place of a
  ``vN.sql`` (the client's: one idempotent script, one file).
* A line ``-- include: <store>/vN.sql`` stands for that whole file: the
  relay's log includes the Merkle tree's tables (``tree/v2.sql``).

The version is SQLite's ``PRAGMA user_version``; ``PRAGMA application_id``
names the store, so a ``relay.db`` opened as a client database is refused
instead of "upgraded". Each step (the new schema, or one upgrade file) runs
in ONE ``BEGIN IMMEDIATE`` transaction together with the new version number:
a crash, a full disk or a failing statement mid-upgrade leaves the file at
its old version, unchanged, and the next open tries again. The version is
read inside the transaction, so two processes opening one file at once never
both upgrade it. A file of a version newer than the code is refused
(:class:`~securechan.errors.StorageError`), never downgraded or guessed at.

Files from before this scheme that kept their version elsewhere (a version
table) have ``user_version`` 0 and tables; a store's ``legacy`` hook reads
their version, and the upgrade steps take them from there (``docs/STORAGE.md``).

Only fixed strings reach SQLite here: PRAGMA values are checked against
allow-lists or are integers this module computed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Self

from securechan.errors import StorageError

__all__ = ["SCHEMA_ROOT", "OwnsConnection", "Schema", "connect", "prepare_file", "split_statements"]

SCHEMA_ROOT: Traversable = resources.files("securechan") / "schema"
"""Where the stores' ``.sql`` files are installed (package data)."""

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_FULL = re.compile(r"v([1-9][0-9]*)\.sql")
_UPGRADE = re.compile(r"upgrade-to-v([1-9][0-9]*)\.sql")
_FROM = re.compile(r"--\s*from-version:\s*([0-9]+)\s*$")
_INCLUDE = re.compile(r"--\s*include:\s*([a-z_]+/v[1-9][0-9]*\.sql)\s*$")


def prepare_file(path: Path) -> None:
    """Create ``path`` with mode 0600 if absent (refusing a symlink or a
    non-file), and take away group/other access from an existing one, before
    SQLite opens it: SQLite gives ``-wal`` and ``-shm`` the same mode.

    Raises :class:`StorageError`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StorageError(f"cannot create {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def connect(
    path: Path,
    *,
    read_only: bool = False,
    synchronous: str = "FULL",
    secure_delete: bool = True,
    foreign_keys: bool = True,
    incremental_vacuum: bool = False,
    journal_size_limit: int | None = None,
    timeout: float = 30.0,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection to ``path`` with the settings every store relies on.

    Writers: WAL journal (checked: a file system without it is refused, as
    the stores' durability and concurrent readers depend on it),
    ``synchronous`` (``FULL`` unless a caller states otherwise: a commit
    survives power loss), ``secure_delete`` (checked when asked for: deleted
    rows are overwritten in the file), ``foreign_keys``, and with
    ``incremental_vacuum`` ``auto_vacuum=INCREMENTAL`` (effective on a new
    file only, so it comes before WAL). Readers open the file ``mode=ro``
    and ``query_only``. Both: ``trusted_schema=OFF`` (a damaged or hostile
    file's schema cannot call functions with side effects),
    ``isolation_level=None`` (transactions are the caller's
    ``BEGIN IMMEDIATE`` ... ``COMMIT``).

    The caller creates the file first (:func:`prepare_file`). Raises
    ``sqlite3.Error`` (mapped by each store to its errors) and
    :class:`StorageError` for a missing WAL or secure-delete.
    """
    if synchronous not in _SYNCHRONOUS:
        raise ValueError(f"synchronous is one of {', '.join(_SYNCHRONOUS)}")
    if read_only:
        conn = sqlite3.connect(
            Path(path).resolve().as_uri() + "?mode=ro",
            uri=True,
            timeout=timeout,
            isolation_level=None,
            check_same_thread=check_same_thread,
        )
    else:
        conn = sqlite3.connect(
            path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread
        )
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
            return conn
        if incremental_vacuum:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StorageError(f"{path}: this file system does not support SQLite's WAL mode")
        conn.execute(f"PRAGMA synchronous = {synchronous}")  # from the allow-list above
        if secure_delete:
            conn.execute("PRAGMA secure_delete = ON")
            if conn.execute("PRAGMA secure_delete").fetchone()[0] != 1:
                raise StorageError("this SQLite cannot overwrite deleted data")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
        if journal_size_limit is not None:
            conn.execute(f"PRAGMA journal_size_limit = {int(journal_size_limit)}")
    except BaseException:
        conn.close()
        raise
    return conn


class OwnsConnection:
    """A store that owns one connection: :meth:`close`, and ``with`` closes it."""

    _db: sqlite3.Connection

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, each complete (``sqlite3.complete_statement``
    knows triggers' ``BEGIN ... END`` and ``;`` inside strings and comments).

    ``executescript`` is not used: it commits any open transaction first, and
    a step must share one transaction with its new version number."""
    statements: list[str] = []
    buf = ""
    *pieces, last = script.split(";")
    for piece in pieces:
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    rest = "\n".join(
        line
        for line in (buf + last).splitlines()
        if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"an SQL script ends inside a statement: {rest[:60]!r}")
    return statements


def _with_includes(script: str) -> str:
    """``script`` with each line ``-- include: <store>/vN.sql`` replaced by
    that store's schema file (one level: an included file's own include lines
    stay comments), so that one file can hold another store's tables whole
    (``tlog.db`` holds a Merkle tree's)."""
    lines = []
    for line in script.splitlines():
        if m := _INCLUDE.fullmatch(line.strip()):
            lines.append((SCHEMA_ROOT / m[1]).read_text(encoding="utf-8"))
        else:
            lines.append(line)
    return "\n".join(lines)


@dataclass(frozen=True)
class _Step:
    target: int
    first: int  # the lowest version this step upgrades (0: it makes new files)
    name: str
    upgrades: bool = True  # False: a vN.sql, for new files only


@dataclass(frozen=True)
class Schema:
    """The versioned schema of one store (``securechan/schema/<name>/``).

    ``application_id`` goes into the file's header (``PRAGMA
    application_id``). ``legacy`` reads the version of a file from before
    ``user_version`` was used (``user_version`` 0 but tables present); it
    raises :class:`StorageError` (or the store's own error) for a file it
    does not recognise. ``folder`` overrides where the ``.sql`` files are
    read from (tests).
    """

    name: str
    application_id: int
    title: str
    legacy: Callable[[sqlite3.Connection], int] | None = None
    folder: Traversable | None = field(default=None, compare=False)

    @property
    def _dir(self) -> Traversable:
        return self.folder if self.folder is not None else SCHEMA_ROOT / self.name

    @cached_property
    def _files(self) -> tuple[int, tuple[_Step, ...]]:
        full: list[int] = []
        steps: list[_Step] = []
        for entry in self._dir.iterdir():
            if m := _FULL.fullmatch(entry.name):
                full.append(int(m[1]))
            elif m := _UPGRADE.fullmatch(entry.name):
                target = int(m[1])
                first_line = entry.read_text(encoding="utf-8").split("\n", 1)[0]
                start = _FROM.fullmatch(first_line.strip())
                first = int(start[1]) if start else target - 1
                if not 0 <= first < target:
                    raise ValueError(f"{entry.name}: from-version must be 0 .. {target - 1}")
                steps.append(_Step(target, first, entry.name))
        if full:
            steps.append(_Step(max(full), 0, f"v{max(full)}.sql", upgrades=False))
        current = max((s.target for s in steps if s.first == 0), default=0)
        if not current:
            raise ValueError(
                f"no vN.sql schema (or upgrade from version 0) for the {self.name} store"
            )
        if any(s.target > current for s in steps):
            raise ValueError(f"an upgrade of the {self.name} store goes past version {current}")
        if sum(1 for s in steps if s.first == 0 and s.target == current) != 1:
            raise ValueError(f"two schemas make a new {self.name} store of version {current}")
        return current, tuple(sorted(steps, key=lambda s: (s.target, s.first)))

    @property
    def version(self) -> int:
        """The current version: this code's newest ``vN.sql``."""
        return self._files[0]

    def _script(self, name: str) -> list[str]:
        return split_statements(_with_includes((self._dir / name).read_text(encoding="utf-8")))

    def _step_from(self, version: int) -> _Step | None:
        if version == 0:  # a new file: straight to the current version
            return next(s for s in self._files[1] if s.first == 0 and s.target == self.version)
        for step in self._files[1]:
            if step.upgrades and step.first <= version < step.target:
                return step
        return None

    def _read(self, conn: sqlite3.Connection, path: Path) -> int:
        """The file's version in this scheme (0: an empty new file)."""
        (app,) = conn.execute("PRAGMA application_id").fetchone()
        if app not in (0, self.application_id):
            raise StorageError(f"{path} is not {self.title}")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if type(version) is not int or version < 0:
            raise StorageError(f"{path}: the database header is damaged")
        if version == 0:
            tables = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 1"
            ).fetchone()
            if tables is not None:
                if self.legacy is None:
                    raise StorageError(f"{path} has tables but no schema version: not {self.title}")
                version = self.legacy(conn)
        if version > self.version:
            raise StorageError(
                f"{path} has schema version {version}, newer than this securechan knows "
                f"({self.version}): refusing to use it; run a newer securechan or restore a backup"
            )
        return version

    def check(self, conn: sqlite3.Connection, path: Path) -> int:
        """For a read-only connection: the file's version, which must be the
        current one or 0 (no schema yet: the caller says what that means).
        An older file raises :class:`StorageError` (a writer upgrades it)."""
        version = self._read(conn, path)
        if 0 < version < self.version:
            raise StorageError(
                f"{path} uses schema {version}; any command that writes it upgrades it"
            )
        return version

    def apply(self, conn: sqlite3.Connection, path: Path) -> int:
        """Create the schema in a new file or upgrade an older one, one step
        per transaction; return the version found (0 for a new file).

        Raises :class:`StorageError` for a newer, foreign or unknown file,
        and ``sqlite3.Error`` when SQLite fails (that step is rolled back:
        the file stays at the version before it).
        """
        # The common case, a file at the current version, needs no write lock:
        # a version only ever grows, so a current file stays current.
        found: int | None = self._read(conn, path)
        if found == self.version:
            return found
        found = None
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._read(conn, path)
                if found is None:
                    found = version
                if version == self.version:
                    conn.execute("COMMIT")
                    return found
                step = self._step_from(version)
                if step is None:
                    raise StorageError(
                        f"{path}: no upgrade from schema version {version} of {self.title}"
                    )
                target, script = step.target, step.name
                for statement in self._script(script):
                    conn.execute(statement)
                # PRAGMAs take no parameters; both values are ints of ours.
                conn.execute(f"PRAGMA application_id = {int(self.application_id)}")
                conn.execute(f"PRAGMA user_version = {int(target)}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
