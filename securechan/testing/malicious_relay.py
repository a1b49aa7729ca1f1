"""A scriptable malicious relay: an aiohttp proxy in front of a real relay.

(The adversarial tests' ``tests/adversary/proxy.py`` re-exports this module;
``securechan demo`` uses it to play the cheating mediator.)

``MaliciousRelay`` listens on 127.0.0.1 (a free port) in a thread of its own
and forwards every request to a real ``securechan relay serve``. Clients (the
CLI with ``--relay URL``, the library's ``Channel``) use its URL exactly as an
honest relay's: the relay key, the request signatures and the log are the
real relay's. The test scripts it from the main thread; everything it can do
is what a relay operator (or the network in front of the relay) could do:

* envelopes in fetch replies: ``drop``, ``hold`` then ``release`` (delay,
  reorder), ``inject`` (replay, duplicate, redirect from another queue,
  reflect), ``tamper`` (flip bits, truncate, rewrite fields);
* any route: ``fail`` (5xx or 429 without forwarding), ``lose_reply`` (the
  relay stores, the answer never arrives), ``slow`` (delay answers),
  ``refuse_service`` (answer 503 to everything), request and response hooks
  (substitute prekey bundles, strip fields, rewrite anything in the JSON);
* ``fork``: a shadow transparency log (``RelayLog`` signed with the real
  relay's key, read from its data folder) that starts from a copy of the real
  log (or empty) plus one injected leaf, so the histories diverge; send
  replies carry the shadow's receipts and ``/v1/log/*`` and the tlog-tiles
  (``/checkpoint``, ``/tile/...``) are answered from it.

Each party can sit behind its own proxy (several proxies in front of one
relay): a contact card and a queue grant name the URL their owner registered
at, so the proxy a party registered through sees that party's fetches and
every envelope sent to it. A fork on one proxy is then shown to the clients
who use that proxy only (a split view between two parties).

A two-party split view, for example (``tests/adversary/world.py`` sets this
up: one front per party, both in front of one relay)::

    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as world:
        world.introduce("tehran", "washington")
        world.front["washington"].fork()   # whoever sends *to* washington,
        # i.e. tehran, now gets receipts and checkpoints of the shadow log,
        # while washington's own sends (to tehran's front) see the real one.

WebSocket upgrades are refused (404); clients fall back to polling.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp import web
from yarl import URL

from securechan import strict_json
from securechan.errors import MalformedInput
from securechan.relay import api
from securechan.testing.shadow_log import ShadowLog

__all__ = ["Envelope", "Exchange", "MaliciousRelay", "b64d", "b64e", "route_of"]

T = TypeVar("T")
Kind = str  # "send", "fetch", "ack", "bundle", "create", "prekeys", "log", "info", "ws",
# "pair" (the pairing mailbox), "other"
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
_PASS_BACK = ("Content-Type", "Retry-After", "Cache-Control")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Route names (securechan.relay.api.ROUTES) by the kind the adversary's rules name.
_KINDS = {
    "send": "send",
    "create_queue": "create",
    "fetch": "fetch",
    "ack": "ack",
    "put_prekeys": "prekeys",
    "prekey_status": "prekeys",
    "websocket": "ws",
    "claim_bundle": "bundle",
    "info": "info",
    "log_checkpoint": "log",
    "log_inclusion": "log",
    "log_leaf": "log",
    "log_consistency": "log",
    "log_cosignature": "log",
    # The pairing mailbox (docs/RELAY.md, "Pairing mailbox"): one kind, the
    # hooks tell the routes apart by path.
    "pair_open": "pair",
    "pair_join": "pair",
    "pair_put": "pair",
    "pair_get": "pair",
    "pair_close": "pair",
    "tiles_checkpoint": "log",
    "tiles_tile": "log",
}


def route_of(method: str, path: str) -> tuple[Kind, str | None]:
    """The route kind and the queue id (rid or sid, base64url) in the path,
    read from the relay's API description (:data:`securechan.relay.api.ROUTES`)."""
    found = api.match(method, path)
    if found is None:
        return "other", None
    route, ids = found
    return _KINDS.get(route.name, "other"), ids.get("rid", ids.get("sid"))


@dataclass
class Envelope:
    """One envelope in a fetch reply (or one the adversary will put there)."""

    seq: int
    msg_id: bytes
    data: bytes
    received: int = 0
    rid: str = ""

    def to_json(self) -> dict[str, Any]:
        message = api.Message(
            seq=self.seq, msg_id=self.msg_id, data=self.data, received=self.received
        )
        return api.to_json(message)


@dataclass
class Exchange:
    """One request the proxy saw, and what it answered."""

    method: str
    path: str
    kind: Kind
    queue: str | None
    headers: dict[str, str]
    body: bytes
    status: int = 0
    reply: bytes = b""
    forwarded: bool = False


@dataclass
class _Rule:
    kind: Kind
    count: int
    status: int = 503
    delay: float = 0.0


RequestHook = Callable[[Exchange], Exchange | tuple[int, bytes] | None]
ResponseHook = Callable[[Exchange, int, bytes], tuple[int, bytes]]
Match = Callable[[Envelope], bool]


@dataclass
class _Script:
    """Everything the test has told the adversary to do (guarded by a lock)."""

    drop: list[Match] = field(default_factory=list)
    hold: list[Match] = field(default_factory=list)
    held: list[Envelope] = field(default_factory=list)
    # Ids the real relay's copies of which are never handed out again: dropped
    # ones, and held ones once released (our copies go out instead).
    released: set[bytes] = field(default_factory=set)
    inject: list[Envelope] = field(default_factory=list)
    tamper: list[tuple[Match, Callable[[bytes], bytes], int]] = field(default_factory=list)
    fail: list[_Rule] = field(default_factory=list)
    lose: list[_Rule] = field(default_factory=list)
    slow: dict[Kind, float] = field(default_factory=dict)
    request_hooks: dict[Kind, RequestHook] = field(default_factory=dict)
    response_hooks: dict[Kind, ResponseHook] = field(default_factory=dict)
    refuse: int | None = None


class MaliciousRelay:
    """A proxy in front of ``upstream`` (a real relay's URL) with its data
    folder ``relay_data`` (for the log key in fork mode). Use as a context
    manager, or call :meth:`start` and :meth:`close`."""

    def __init__(self, upstream: str, relay_data: Path, workdir: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.relay_data = relay_data
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.url = ""
        self.port = 0
        self.exchanges: list[Exchange] = []
        self.fetched: list[Envelope] = []  # every envelope the real relay handed out
        self.queue_kinds: dict[str, str] = {}  # rid -> "contact" | "private"
        self._script = _Script()
        self._lock = threading.Lock()
        self._fork: ShadowLog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- life cycle -------------------------------------------------------------

    def __enter__(self) -> MaliciousRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # reported to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="malicious-relay", daemon=True)
        self._thread.start()
        if not ready.wait(30) or failure:
            raise RuntimeError(f"the malicious relay did not start: {failure}")

    async def _serve(self) -> None:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        if not (server is not None):
            raise RuntimeError("the malicious relay is not running")
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.port}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self.call(self._shutdown(), timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._fork is not None:
            await self._fork.close()
            self._fork = None
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        # Handlers still sleeping on a held answer: cancel them, so the loop
        # closes with no task pending.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def call(self, coro: Awaitable[T], *, timeout: float = 60) -> T:
        """Run ``coro`` on the proxy's event loop from the test's thread."""
        if not (self._loop is not None):
            raise RuntimeError("the malicious relay is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    # --- the script -----------------------------------------------------------------

    def reset(self) -> None:
        """Behave honestly again (recordings are kept; a fork is ended;
        envelopes already released from hold stay ours to hand out)."""
        with self._lock:
            self._script = _Script(released=self._script.released)
        self.unfork()

    def drop(self, match: Match) -> None:
        """Never hand out envelopes that ``match``, now or after :meth:`reset`."""
        with self._lock:
            self._script.drop.append(match)

    def hold(self, match: Match) -> None:
        """Keep envelopes that ``match`` back until :meth:`release`."""
        with self._lock:
            self._script.hold.append(match)

    def release(self, order: Callable[[list[Envelope]], list[Envelope]] | None = None) -> int:
        """Stop holding; the held envelopes go out in the next fetches of
        their queues (in ``order(held)`` if given). Returns how many."""
        with self._lock:
            held = self._script.held
            self._script.hold.clear()
            self._script.held = []
            self._script.released |= {e.msg_id for e in held}
            self._script.inject.extend(order(held) if order else held)
            return len(held)

    def held(self) -> list[Envelope]:
        """The envelopes held back so far (oldest first)."""
        with self._lock:
            return list(self._script.held)

    def inject(self, data: bytes, *, queue: str, msg_id: bytes | None = None) -> Envelope:
        """Hand ``data`` out in the next fetch of ``queue`` (a rid, or
        ``"contact"``/``"private"`` for this proxy's queue of that kind).
        A fresh message id unless one is given (the relay can choose)."""
        env = Envelope(seq=0, msg_id=msg_id or secrets.token_bytes(16), data=data, rid=queue)
        with self._lock:
            self._script.inject.append(env)
        return env

    def tamper(self, match: Match, change: Callable[[bytes], bytes], *, times: int = 1) -> None:
        """Rewrite the data of the next ``times`` envelopes that ``match``."""
        with self._lock:
            self._script.tamper.append((match, change, times))

    def fail(self, kind: Kind, *, status: int = 503, times: int = 1, delay: float = 0.0) -> None:
        """Answer ``status`` to the next ``times`` requests of ``kind``
        without forwarding them (``times=-1``: until :meth:`reset`)."""
        with self._lock:
            self._script.fail.append(_Rule(kind, times, status, delay))

    def lose_reply(self, kind: Kind, *, times: int = 1, status: int = 502) -> None:
        """Forward the next ``times`` requests of ``kind`` (the relay acts on
        them), then answer ``status`` instead of the relay's answer."""
        with self._lock:
            self._script.lose.append(_Rule(kind, times, status))

    def slow(self, kind: Kind, seconds: float) -> None:
        """Delay every answer to ``kind`` ("*" for all) by ``seconds``."""
        with self._lock:
            self._script.slow[kind] = seconds

    def refuse_service(self, status: int | None = 503) -> None:
        """Answer ``status`` to everything (``None``: serve again)."""
        with self._lock:
            self._script.refuse = status

    def on_request(self, kind: Kind, hook: RequestHook | None) -> None:
        """``hook(exchange)`` before forwarding: return a changed exchange, an
        answer ``(status, body)`` to send instead of forwarding, or None."""
        with self._lock:
            if hook is None:
                self._script.request_hooks.pop(kind, None)
            else:
                self._script.request_hooks[kind] = hook

    def on_response(self, kind: Kind, hook: ResponseHook | None) -> None:
        """``hook(exchange, status, body) -> (status, body)`` on the answer."""
        with self._lock:
            if hook is None:
                self._script.response_hooks.pop(kind, None)
            else:
                self._script.response_hooks[kind] = hook

    # --- recordings -------------------------------------------------------------------

    def sent(self) -> list[Exchange]:
        """Every send request that reached the proxy, in order."""
        return [x for x in list(self.exchanges) if x.kind == "send"]

    def queue_of(self, kind: str) -> str:
        """The rid of this proxy's one queue of ``kind`` ("contact"/"private")."""
        rids = [rid for rid, k in self.queue_kinds.items() if k == kind]
        if not (len(rids) == 1):
            raise RuntimeError(f"{len(rids)} {kind} queues behind this proxy")
        return rids[0]

    # --- the forked log -----------------------------------------------------------------

    def fork(self, *, base: Literal["copy", "empty"] = "copy") -> bytes:
        """Serve a forked transparency log from now on: a shadow ``RelayLog``
        signed with the real relay's key, started from a copy of the real log
        (``base="copy"``: the clients' earlier checkpoints stay consistent
        with it) or from nothing (``"empty"``: a rolled-back, truncated log),
        with one leaf the real log never had appended first. Returns the
        injected leaf's envelope."""
        self.unfork()
        self._fork = self.call(ShadowLog.start(self.relay_data, self.workdir, base))
        return self._fork.forked_leaf

    def unfork(self) -> None:
        """Serve the real log again."""
        if self._fork is not None and self._loop is not None:
            fork, self._fork = self._fork, None
            self.call(fork.close())

    @property
    def forked(self) -> bool:
        return self._fork is not None

    # --- the request path ---------------------------------------------------------------

    def _take(self, rules: list[_Rule], kind: Kind) -> _Rule | None:
        with self._lock:
            for rule in rules:
                if rule.kind in (kind, "*") and rule.count != 0:
                    if rule.count > 0:
                        rule.count -= 1
                    return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, queue = route_of(request.method, request.path)
        body = await request.read()
        x = Exchange(
            method=request.method,
            path=request.raw_path,
            kind=kind,
            queue=queue,
            headers={k: v for k, v in request.headers.items() if k.lower() not in _HOP},
            body=body,
        )
        self.exchanges.append(x)
        status, reply, ctype = await self._answer(x, request)
        x.status, x.reply = status, reply
        with self._lock:
            delay = self._script.slow.get(kind, self._script.slow.get("*", 0.0))
        if delay:
            await asyncio.sleep(delay)
        resp = web.Response(status=status, body=reply)
        resp.headers["Content-Type"] = ctype
        if status in (429, 503):
            resp.headers.setdefault("Retry-After", "1")
        return resp

    async def _answer(self, x: Exchange, request: web.Request) -> tuple[int, bytes, str]:
        with self._lock:
            refuse = self._script.refuse
            req_hook = self._script.request_hooks.get(x.kind)
            resp_hook = self._script.response_hooks.get(x.kind)
        if refuse is not None:
            return refuse, _error(refuse, "refused by the adversary"), "application/json"
        if x.kind == "ws":
            return 404, _error(404, "no push here"), "application/json"
        rule = self._take(self._script.fail, x.kind)
        if rule is not None:
            if rule.delay:
                await asyncio.sleep(rule.delay)
            return rule.status, _error(rule.status, "injected failure"), "application/json"
        if req_hook is not None:
            changed = req_hook(x)
            if isinstance(changed, tuple):
                return changed[0], changed[1], "application/json"
            if changed is not None:
                x = changed
        if x.kind == "log" and self._fork is not None:
            return await self._fork.answer(URL(x.path, encoded=True).path, dict(request.query))
        status, reply, ctype = await self._forward(x)
        x.forwarded = True
        status, reply = await self._after(x, status, reply)
        if resp_hook is not None:
            status, reply = resp_hook(x, status, reply)
        lost = self._take(self._script.lose, x.kind)
        if lost is not None:
            return lost.status, _error(lost.status, "bad gateway"), "application/json"
        return status, reply, ctype

    async def _forward(self, x: Exchange) -> tuple[int, bytes, str]:
        if not (self._session is not None):
            raise RuntimeError("the malicious relay is not running")
        url = URL(self.upstream + x.path, encoded=True)
        try:
            async with self._session.request(
                x.method, url, data=x.body or None, headers=x.headers, allow_redirects=False
            ) as resp:
                return resp.status, await resp.read(), resp.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 502, _error(502, "the relay behind the proxy is down"), "application/json"

    async def _after(self, x: Exchange, status: int, reply: bytes) -> tuple[int, bytes]:
        """The adversary's own business with an honest answer."""
        if x.kind == "create" and status < 300:
            with contextlib.suppress(MalformedInput, ValueError, KeyError, TypeError):
                made = _loads(reply)
                asked = _loads(x.body)
                self.queue_kinds[made["rid"]] = "contact" if asked.get("contact") else "private"
        if x.kind == "send" and status < 300 and self._fork is not None:
            answer = _loads(reply)
            answer["receipt"] = await self._fork.receipt(x.body)
            return status, json.dumps(answer).encode()
        if x.kind == "fetch" and status == 200 and x.queue is not None:
            return status, self._rewrite_fetch(x, reply)
        return status, reply

    def _rewrite_fetch(self, x: Exchange, reply: bytes) -> bytes:
        data = _loads(reply)
        rid = x.queue or ""
        after = int(URL(x.path, encoded=True).query.get("after", "0"))
        page = [
            Envelope(seq=m.seq, msg_id=m.msg_id, data=m.data, received=m.received, rid=rid)
            for m in api.from_json(api.FetchReply, data, exact=False).messages
        ]
        self.fetched.extend(page)
        kind = self.queue_kinds.get(rid)
        out: list[Envelope] = []
        with self._lock:
            s = self._script
            for env in page:
                if env.msg_id in s.released:
                    continue
                if any(m(env) for m in s.drop):
                    s.released.add(env.msg_id)  # dropped for good, even after reset()
                    continue
                if any(m(env) for m in s.hold):
                    if not any(h.msg_id == env.msg_id for h in s.held):
                        s.held.append(env)
                    continue
                out.append(env)
            # No more than the client asked for (it refuses a longer page):
            # the rest of what is injected goes out with the next fetches.
            limit = int(URL(x.path, encoded=True).query.get("limit", "100"))
            room = max(0, limit - len(out))
            mine = [e for e in s.inject if e.rid in (rid, kind)][:room]
            s.inject = [e for e in s.inject if e not in mine]
            # Injected envelopes go last, at the page's last position, so the
            # client's read position does not jump past the real queue.
            last = max([after, *(e.seq for e in page)])
            out.extend(Envelope(e.seq, e.msg_id, e.data, e.received, rid) for e in mine)
            for e in out[len(out) - len(mine) :]:
                e.seq = last
            for i, env in enumerate(out):
                for j, (match, change, times) in enumerate(s.tamper):
                    if times and match(env):
                        out[i] = Envelope(env.seq, env.msg_id, change(env.data), env.received, rid)
                        s.tamper[j] = (match, change, times - 1)
                        break
        data["messages"] = [e.to_json() for e in out]
        return json.dumps(data).encode()


def _loads(raw: bytes) -> Any:
    """The honest relay's answer (or a client's body), read strictly like
    every JSON in securechan."""
    return strict_json.loads(raw, max_size=len(raw), what="the relay's answer")


def _error(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": f"http_{status}", "message": message}}).encode()
