"""Careful file I/O for the home folder: atomic writes, bounded reads, a lock.

A write goes to a fresh temporary file in the same folder (``O_EXCL``, mode
0600), is fsync'ed, then renamed over the target (or hard-linked, when the
target must not be replaced, which fails atomically if it exists), and the
folder is fsync'ed. A crash at any point leaves either the old file or the
new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from securechan.errors import StorageError

__all__ = ["atomic_write", "ensure_private_dir", "home_lock", "read_bounded"]


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 if it does not exist."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        raise StorageError(f"cannot create {path}: {e.strerror}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, replace: bool, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically.

    With ``replace=False`` an existing file is never touched and
    :class:`FileExistsError` is raised. Other failures raise
    :class:`StorageError`; the target is unchanged in every failure.
    """
    folder = path.parent
    tmp = folder / f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as e:
        raise StorageError(f"cannot write in {folder}: {e.strerror}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with EEXIST, atomically, if path exists
            os.unlink(tmp)
        _fsync_dir(folder)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {e.strerror}") from None


def read_bounded(path: Path, max_size: int) -> bytes:
    """Read a whole file of at most ``max_size`` bytes.

    Raises :class:`FileNotFoundError` if it is missing and
    :class:`StorageError` if it is too large or unreadable.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_size + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > max_size:
        raise StorageError(f"{path} is larger than {max_size} bytes")
    return data


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold an exclusive lock on the home folder (for read-modify-write)."""
    ensure_private_dir(home)
    try:
        fd = os.open(home / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StorageError(f"cannot lock {home}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise StorageError(f"cannot lock {home}: {e.strerror}") from None
            raise
        yield
    finally:
        os.close(fd)
