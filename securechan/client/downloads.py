"""Writing a received file to disk: a sanitised, new name inside one folder."""

from __future__ import annotations

import os
from pathlib import Path

from securechan.errors import StorageError
from securechan.filenames import sanitize_filename

__all__ = ["save_download"]


def save_download(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` inside ``folder`` under the sanitised ``name``, never
    replacing a file (``name (1).ext``... up to 999) and never following a
    symbolic link; mode 0600. Raise :class:`StorageError`."""
    folder.mkdir(parents=True, exist_ok=True)
    clean = sanitize_filename(name)
    stem, dot, ext = clean.rpartition(".")
    if not dot:
        stem, ext = clean, ""
    for i in range(1000):
        candidate = clean if i == 0 else f"{stem} ({i}){dot}{ext}"
        path = folder / candidate
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise StorageError(f"too many files named {clean} in {folder}")
