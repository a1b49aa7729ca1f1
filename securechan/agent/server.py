"""The agent's socket: owner-only, newline-delimited JSON-RPC 2.0 (docs/AGENT.md).

Start-up, in this order: take the home's exclusive lock (another agent, or a
command working in-process, makes the start fail), prepare the socket's
0700 folder, remove a stale socket file (one whose agent is gone: we hold
the lock, so no agent of this home is alive), bind, and make the socket
0600. Each connection is checked with ``SO_PEERCRED`` before a byte of it is
read: a peer with another uid gets one error frame and is closed (root
included: root can read our files anyway, but the agent is not the way).

Bounds, so that no client (or a runaway script of the owner's) can take the
agent down or starve the others: at most :data:`MAX_CONNECTIONS`
connections (more are closed at once with an error frame); a frame longer
than :data:`~securechan.agent.rpc.MAX_FRAME` closes its connection (the
stream cannot be resynchronised); at most :data:`MAX_IN_FLIGHT` requests
per connection are worked on at once, and more are answered ``-32002
busy`` at once; a slow reader's notifications are dropped past
:data:`MAX_QUEUED_NOTIFICATIONS` (it is told so once) rather than kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from securechan.agent.group_methods import GROUP_METHODS
from securechan.agent.homelock import HomeLock
from securechan.agent.keycache import KeyCache
from securechan.agent.methods import METHODS, REQUESTER, AgentState
from securechan.agent.peercred import peer_credentials
from securechan.agent.receiver import Receiver
from securechan.agent.rpc import (
    MAX_FRAME,
    AgentErrorCode,
    RpcError,
    error_frame,
    notification_frame,
    parse_request,
    result_frame,
)
from securechan.client.agent_paths import prepare_socket_dir, socket_path
from securechan.errors import AgentLocked, SecurechanError, StorageError, reason_of

__all__ = ["MAX_CONNECTIONS", "MAX_IN_FLIGHT", "AgentServer"]

log = logging.getLogger("securechan.agent")

MAX_CONNECTIONS = 64
MAX_IN_FLIGHT = 8
MAX_QUEUED_NOTIFICATIONS = 1000
_EXPIRY_CHECK = 1.0


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.lock = asyncio.Lock()
        self.in_flight = 0
        self.subscribed = False
        self.queued = 0
        self.dropped = False

    async def send(self, frame: bytes) -> None:
        async with self.lock:
            if self.writer.is_closing():
                return
            self.writer.write(frame)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()


class AgentServer:
    def __init__(
        self,
        home: Path,
        keys: KeyCache,
        *,
        version: str,
        poll: float = 30.0,
        exit_code: Callable[[SecurechanError], int] | None = None,
        unknown_senders: str = "refuse",
    ) -> None:
        self.home = home
        self.state = AgentState(
            home=home,
            keys=keys,
            version=version,
            started=time.time(),
            unknown_senders=unknown_senders,
        )
        self.path = socket_path(home)
        self._exit_code = exit_code
        self._poll = poll
        self._connections: set[_Connection] = set()
        self._lock: HomeLock | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pushes: set[asyncio.Future[None]] = set()

    def claim(self) -> None:
        """Take the home and the socket path (before any key is unlocked)."""
        self._lock = HomeLock(self.home, exclusive=True)
        try:
            prepare_socket_dir(self.path)
            # We hold the home's lock: a socket file left here belongs to an
            # agent that is gone (a crash, a SIGKILL). Replace it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        except BaseException:
            self._lock.release()
            self._lock = None
            raise

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop`` (the method) or cancellation; then clean up."""
        if self._lock is None:
            self.claim()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._connection, path=str(self.path), limit=MAX_FRAME + 1
            )
        except OSError as e:
            raise StorageError(f"cannot listen on {self.path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        receiver = asyncio.create_task(Receiver(self.state, self._notify, poll=self._poll).run())
        watcher = asyncio.create_task(self._expire())
        log.info("agent listening on %s", self.path)
        if ready is not None:
            ready()
        try:
            await self.state.stop.wait()
        finally:
            self.state.stop.set()
            self._server.close()
            for conn in list(self._connections):
                conn.writer.close()
            for task in (receiver, watcher):
                task.cancel()
            await asyncio.gather(receiver, watcher, return_exceptions=True)
            async with self.state.channel_lock:
                await self.state.keys.lock()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_CHECK)
            if self.state.keys.holds_key and self.state.keys.expires_in() <= 0:
                async with self.state.channel_lock:
                    if await self.state.keys.expire():
                        log.info("key forgotten: its time to live ran out")
                        self._notify("locked", {"reason": "ttl"})

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        frame = notification_frame(method, params)
        for conn in list(self._connections):
            if not conn.subscribed or conn.writer.is_closing():
                continue
            if conn.queued >= MAX_QUEUED_NOTIFICATIONS:
                if not conn.dropped:
                    conn.dropped = True
                    log.warning("a subscriber is not reading: its notifications are dropped")
                continue
            conn.queued += 1

            async def push(c: _Connection = conn) -> None:
                try:
                    await c.send(frame)
                finally:
                    c.queued -= 1

            task = asyncio.ensure_future(push())
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        conn = _Connection(writer)
        try:
            creds = peer_credentials(sock)
            if creds.uid != os.geteuid():
                log.warning("refused a connection from uid %d (pid %d)", creds.uid, creds.pid)
                await conn.send(
                    error_frame(RpcError(AgentErrorCode.INVALID_REQUEST, "not the agent's owner"))
                )
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                await conn.send(error_frame(RpcError(AgentErrorCode.BUSY, "too many connections")))
                return
            self._connections.add(conn)
            await self._read(reader, conn)
        finally:
            self._connections.discard(conn)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self.state.stop.is_set():
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    await conn.send(
                        error_frame(
                            RpcError(
                                AgentErrorCode.INVALID_REQUEST,
                                f"frame is larger than {MAX_FRAME} bytes",
                            )
                        )
                    )
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                frame = line[:-1]
                if not frame.strip():
                    continue
                try:
                    request = parse_request(frame)
                except RpcError as e:
                    await conn.send(error_frame(e))
                    continue
                if conn.in_flight >= MAX_IN_FLIGHT:
                    await conn.send(
                        error_frame(
                            RpcError(
                                AgentErrorCode.BUSY,
                                f"more than {MAX_IN_FLIGHT} requests in flight",
                                request_id=request.id,
                            )
                        )
                    )
                    continue
                conn.in_flight += 1
                task = asyncio.create_task(self._answer(conn, request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()

    async def _answer(self, conn: _Connection, request: Any) -> None:
        try:
            frame = await self._call(conn, request)
        finally:
            conn.in_flight -= 1
        if not request.is_notification:
            await conn.send(frame)

    async def _call(self, conn: _Connection, request: Any) -> bytes:
        rid = request.id
        if request.method in ("subscribeReceive", "unsubscribeReceive"):
            if request.params:
                return error_frame(
                    RpcError(AgentErrorCode.INVALID_PARAMS, "takes no parameters", request_id=rid)
                )
            conn.subscribed = request.method == "subscribeReceive"
            return result_frame(rid, {"subscribed": conn.subscribed})
        handler = METHODS.get(request.method) or GROUP_METHODS.get(request.method)
        if handler is None:
            return error_frame(
                RpcError(AgentErrorCode.METHOD_NOT_FOUND, "no such method", request_id=rid)
            )

        async def tell(method: str, params: dict[str, Any]) -> None:
            await conn.send(notification_frame(method, params))

        REQUESTER.set(tell)  # this request's own task: its context only
        try:
            return result_frame(rid, await handler(self.state, request.params))
        except RpcError as e:
            e.request_id = rid
            return error_frame(e)
        except AgentLocked as e:
            return error_frame(
                RpcError(AgentErrorCode.LOCKED, str(e), request_id=rid, data=self._data(e))
            )
        except SecurechanError as e:
            return error_frame(
                RpcError(
                    AgentErrorCode.SECURECHAN_ERROR, str(e), request_id=rid, data=self._data(e)
                )
            )
        except Exception as e:
            # A bug: the client gets the type, never the text (it may carry
            # secrets or peer bytes); the agent keeps serving.
            log.exception("internal error in %s", request.method)
            return error_frame(
                RpcError(
                    AgentErrorCode.INTERNAL_ERROR,
                    f"internal error ({type(e).__name__})",
                    request_id=rid,
                )
            )

    def _data(self, error: SecurechanError) -> dict[str, Any]:
        data: dict[str, Any] = {"reason": str(reason_of(error))}
        if self._exit_code is not None:
            data["exit"] = self._exit_code(error)
        return data
