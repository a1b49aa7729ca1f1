"""Connection caps: bounded file descriptors however many sockets clients open.

Every open TCP connection (and every WebSocket, which is one) holds a file
descriptor. Without a cap, about 1,000 idle connections exhausted a 1,024
descriptor limit: ``accept()`` then failed with EMFILE, every new connection
was reset and nothing was logged. Like nginx's ``limit_conn`` and the
connection caps of production brokers, the relay caps open connections per
client address and overall, and refuses beyond the cap at accept: one small
canned HTTP answer (``429``/``503`` with ``Retry-After``) and a close, before
any request is parsed. Refusals are logged sampled (one line per interval with
the counts), never one line per refusal.

A "client address" is the IPv4 address, or the IPv6 /64 prefix (one host
usually owns a whole /64, so counting single IPv6 addresses caps nothing).

The overall caps are sized from the process's file-descriptor limit, which
:func:`raise_fd_limit` first raises to its hard limit, leaving headroom for
the databases and the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, cast

__all__ = [
    "ConnectionGate",
    "SampledLog",
    "client_key",
    "fd_headroom",
    "open_fds",
    "raise_fd_limit",
]

log = logging.getLogger("securechan.relay")


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit when allowed;
    return the soft limit in force (a large number where there is none)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def open_fds() -> int:
    """File descriptors this process holds (-1 where it cannot be read)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # listdir's own descriptor
        except OSError:
            continue
    return -1


def fd_headroom(limit: int) -> int:
    """Descriptors kept back from connections: the databases (relay.db and
    tlog.db with their -wal and -shm, opened by several connections),
    the event loop, the listener and log files, with a margin."""
    return max(64, limit // 16)


def client_key(host: str) -> str:
    """The address a cap counts: IPv4 as is, IPv6 by its /64 prefix."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host


class SampledLog:
    """Counts refusals by reason; logs one WARNING line per ``every`` seconds
    at most, with the counts since the last line (counts still pending are
    logged ``every`` seconds after the last line by a timer on the running
    event loop, so a burst shorter than ``every`` is reported in full)."""

    def __init__(
        self, what: str, *, every: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what = what
        self.every = every
        self.clock = clock
        self._counts: dict[str, int] = {}
        self._last = -every
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, reason: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1
        wait = self._last + self.every - self.clock()
        if wait <= 0:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Log the pending counts now (if any)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._counts:
            return
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self._counts.items()))
        log.warning("refused %s (%s) since the last such line", self.what, parts)
        self._counts.clear()
        self._last = self.clock()


def _canned(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 5\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_PER_CLIENT = _canned(
    429, "Too Many Requests", "too_many_connections", "too many connections from this address"
)
_OVERALL = _canned(
    503, "Service Unavailable", "too_many_connections", "the relay has too many connections"
)


class ConnectionGate:
    """Open connections per client address and overall, capped at accept."""

    def __init__(self, *, max_total: int, max_per_client: int) -> None:
        if max_total < 1 or max_per_client < 1:
            raise ValueError("connection caps must be at least 1")
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.open = 0
        self.fd_limit = 0
        self._by_client: dict[str, int] = {}
        self.sampled = SampledLog("connections")
        self.on_refuse: Callable[[str], None] = lambda reason: None

    def admit(self, client: str) -> bytes | None:
        """None if admitted (counted), else the canned answer to send."""
        if self.open >= self.max_total:
            self._refuse("overall")
            return _OVERALL
        held = self._by_client.get(client, 0)
        if held >= self.max_per_client:
            self._refuse("per_client")
            return _PER_CLIENT
        self._by_client[client] = held + 1
        self.open += 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        held = self._by_client.get(client, 0) - 1
        if held > 0:
            self._by_client[client] = held
        else:
            self._by_client.pop(client, None)

    def _refuse(self, reason: str) -> None:
        self.sampled.refused(reason)
        self.on_refuse(reason)

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that admits each
        connection through the gate before handing it to ``factory``'s protocol."""
        return lambda: _GatedProtocol(self, factory)


class _GatedProtocol(asyncio.Protocol):
    """Admits or refuses a connection, then forwards every event to the
    HTTP server's protocol and releases the slot when the connection ends."""

    __slots__ = ("_client", "_factory", "_gate", "_inner")

    def __init__(self, gate: ConnectionGate, factory: Callable[[], Any]) -> None:
        self._gate = gate
        self._factory = factory
        self._inner: Any = None
        self._client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        client = client_key(str(host))
        refusal = self._gate.admit(client)
        if refusal is not None:
            # uvloop's transports do not subclass asyncio.WriteTransport
            cast(asyncio.WriteTransport, transport).write(refusal)
            transport.close()
            return
        self._client = client
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        inner = self._inner
        if inner is None:
            return
        self._inner = None
        self._gate.release(self._client)
        inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            result: bool | None = self._inner.eof_received()
            return result
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
