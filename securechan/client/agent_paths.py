"""Where a home's agent listens (docs/AGENT.md, The socket).

The socket is ``$XDG_RUNTIME_DIR/securechan/agent-<id>.sock``, where ``<id>``
is the first 16 hex digits of SHA-256 of the home folder's resolved path, so
one user's several homes each get their own agent; without
``XDG_RUNTIME_DIR`` it is ``<home>/agent.sock``. Its folder is created with
mode 0700 and refused if it is anyone else's or open to others: the folder's
permissions are the first gate, the peer-credential check the second.

Light to import: the thin command line finds the socket here before
anything else (os.path, not pathlib; the built-in SHA-256, not hashlib's
OpenSSL binding; the error classes only when one is raised).
"""

from __future__ import annotations

import os

try:  # the interpreter's own SHA-256 (FIPS 180-4); hashlib loads OpenSSL
    from _sha256 import sha256  # type: ignore[import-not-found]  # Python 3.11
except ImportError:
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]  # Python 3.12 and later
    except ImportError:
        from hashlib import sha256

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["MAX_SOCKET_PATH", "prepare_socket_dir", "socket_file", "socket_path"]

# sun_path is 108 bytes on Linux, with the terminating NUL.
MAX_SOCKET_PATH = 107


def socket_file(home: str | os.PathLike[str]) -> str:
    """The agent socket of ``home`` as a string (the folder is not created
    here); :class:`~securechan.errors.UsageError` if the path is too long."""
    resolved = os.path.realpath(os.path.expanduser(os.fspath(home)))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        tag = sha256(os.fsencode(resolved)).hexdigest()[:16]
        path = os.path.join(runtime, "securechan", f"agent-{tag}.sock")
    else:
        path = os.path.join(resolved, "agent.sock")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        from securechan.errors import UsageError

        raise UsageError(
            f"the agent socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "set XDG_RUNTIME_DIR to a short folder"
        )
    return path


def socket_path(home: Path) -> Path:
    """The agent socket of ``home`` (the folder is not created here)."""
    from pathlib import Path

    return Path(socket_file(home))


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's folder (0700) or check that it is ours and private."""
    import stat

    from securechan.errors import StorageError

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
