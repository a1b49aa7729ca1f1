"""Writing a received file to disk: a sanitised, new name inside one folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from securechan.errors import StorageError
from securechan.filenames import sanitize_filename

__all__ = ["GroupFileSaver", "save_download"]


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


class GroupFileSaver:
    """Saves each group file into ``folder`` once it is whole (``receive``,
    and the agent's ``receive`` with a ``download`` folder).

    A group file travels as one record per piece; for each shown piece the
    client is asked for the whole file (``Channel.group_file``: the pieces
    put together and checked against the file's SHA-512), which fails
    while pieces are missing. The file is saved, under its sanitised name
    and never over an existing file, by the first piece it is whole at;
    the same file is not saved twice in one run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done: set[tuple[str, str, bytes]] = set()

    def save(self, ch: Any, item: Any) -> str | None:
        """Where the file ``item`` completed was saved, or None."""
        from securechan.client.group_results import GroupEntry

        if not isinstance(item, GroupEntry) or item.status != "shown" or not item.file_name:
            return None
        from securechan.errors import NotFound, UsageError

        try:
            name, data = ch.group_file(item.group, item.id)
        except (UsageError, NotFound):
            return None  # pieces still missing: a later receive saves it
        key = (item.group, name, hashlib.sha256(data).digest())
        if key in self.done:
            return None
        self.done.add(key)
        return str(save_download(self.folder, name, data))
