"""One writer per home: the agent, or commands, never both (docs/AGENT.md).

The agent holds an exclusive ``flock`` on ``<home>/agent.lock`` while it
runs; a command that works in-process holds a shared one while it runs. So
two agents cannot start on one home, an agent cannot start while a command
is working in-process, and a command finds an agent by failing to take its
shared lock (it then talks to the agent). The kernel drops a dead process's
lock: a crashed agent leaves no lock behind, only perhaps its socket file,
which the next agent replaces (:mod:`securechan.agent.server`).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from securechan.errors import HomeInUse, StorageError

__all__ = ["HomeLock", "agent_running"]

LOCK_NAME = "agent.lock"


class HomeLock:
    """A held lock on a home; :meth:`release` (or process exit) drops it."""

    def __init__(self, home: Path, *, exclusive: bool) -> None:
        path = home / LOCK_NAME
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}") from None
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._fd)
            self._fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                if exclusive:
                    raise HomeInUse(
                        f"{home} is in use by another agent or a running command"
                    ) from None
                raise HomeInUse(
                    f"an agent is running for {home}: use it, or stop it with "
                    "'securechan agent stop'"
                ) from None
            raise StorageError(f"cannot lock {path}: {e.strerror}") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def agent_running(home: Path) -> bool:
    """Whether an agent holds ``home`` (its exclusive lock), without waiting."""
    if not (home / LOCK_NAME).exists():
        return False
    try:
        HomeLock(home, exclusive=False).release()
    except HomeInUse:
        return True
    return False
