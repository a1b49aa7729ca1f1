"""Who is on the other end of a Unix socket: ``SO_PEERCRED`` (Linux).

The kernel fills ``struct ucred {pid_t pid; uid_t uid; gid_t gid;}`` with the
credentials the peer had when it called ``connect``: they cannot be forged
by the peer (unlike a message sent over the socket). On a system without
``SO_PEERCRED`` the agent does not start (docs/AGENT.md).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from securechan.errors import UsageError

__all__ = ["PeerCredentials", "peer_credentials"]

_UCRED = struct.Struct("=iII")


class _Socket(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def supported() -> bool:
    return hasattr(socket, "SO_PEERCRED")


def peer_credentials(sock: _Socket) -> PeerCredentials:
    """The peer's credentials (a ``socket.socket`` or asyncio's wrapper of one)."""
    if not supported():
        raise UsageError("this system has no SO_PEERCRED: the agent runs on Linux only")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)
