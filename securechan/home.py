"""Where a user's home folder is when none is named (standard library only:
the command line talking to an agent needs it before any cryptography)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_home"]


def default_home() -> Path:
    """``$SECURECHAN_HOME``, else the platform's user data folder."""
    env = os.environ.get("SECURECHAN_HOME")
    if env:
        return Path(env)
    import platformdirs  # deferred: only needed when no home is given

    return Path(platformdirs.user_data_dir("securechan", appauthor=False))
