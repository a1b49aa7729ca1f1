"""Where a home's agent listens (docs/AGENT.md, The socket).

The socket is ``$XDG_RUNTIME_DIR/securechan/agent-<id>.sock``, where ``<id>``
is the first 16 hex digits of SHA-256 of the home folder's resolved path, so
one user's several homes each get their own agent; without
``XDG_RUNTIME_DIR`` it is ``<home>/agent.sock``. Its folder is created with
mode 0700 and refused if it is anyone else's or open to others: the folder's
permissions are the first gate, the peer-credential check the second.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from securechan.errors import StorageError, UsageError

__all__ = ["MAX_SOCKET_PATH", "prepare_socket_dir", "socket_path"]

# sun_path is 108 bytes on Linux, with the terminating NUL.
MAX_SOCKET_PATH = 107


def socket_path(home: Path) -> Path:
    """The agent socket of ``home`` (the folder is not created here)."""
    resolved = home.expanduser().resolve()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        tag = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]
        path = Path(runtime) / "securechan" / f"agent-{tag}.sock"
    else:
        path = resolved / "agent.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UsageError(
            f"the agent socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "set XDG_RUNTIME_DIR to a short folder"
        )
    return path


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's folder (0700) or check that it is ours and private."""
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(folder, follow_symlinks=False)
    except OSError as e:
        raise StorageError(f"cannot use {folder}: {e.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StorageError(f"{folder} is not a folder")
    if info.st_uid != os.geteuid():
        raise StorageError(f"{folder} belongs to another user")
    if info.st_mode & 0o077:
        raise StorageError(f"{folder} is open to other users (mode {info.st_mode & 0o777:o})")
