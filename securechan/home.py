"""Where a user's home folder is when none is named (standard library only:
the command line talking to an agent needs it before any cryptography)."""

from __future__ import annotations

import os

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["default_home", "default_home_dir"]


def default_home_dir() -> str:
    """``$SECURECHAN_HOME``, else the platform's user data folder (a string:
    the thin command line does not load pathlib)."""
    env = os.environ.get("SECURECHAN_HOME")
    if env:
        return env
    import platformdirs  # deferred: only needed when no home is given

    return platformdirs.user_data_dir("securechan", appauthor=False)


def default_home() -> Path:
    """:func:`default_home_dir` as a Path."""
    from pathlib import Path

    return Path(default_home_dir())
