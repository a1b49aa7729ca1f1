"""The one format of times that securechan shows: ISO 8601 in UTC to the
second, ``2026-12-04T23:39:06Z``.

Every time a command prints (text or ``--json``) and every time a result
type's ``to_json()`` carries goes through :func:`iso_utc`; inside, times are
Unix seconds (``int``), as the wire formats store them.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["iso_utc"]


def iso_utc(ts: int | None) -> str | None:
    """``ts`` (Unix seconds) as ``YYYY-MM-DDTHH:MM:SSZ``; ``None`` stays ``None``."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
