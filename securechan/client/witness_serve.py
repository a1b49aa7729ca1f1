"""``securechan witness serve``: a C2SP tlog-witness over HTTP (``docs/RELAY.md``).

``POST <prefix>/add-checkpoint`` for every configured log (its Ed25519
verifier key; the key name is the origin), answered by
:func:`securechan.audit.witness_api.add_checkpoint`. Each request runs under
the witness lock (:meth:`WitnessHome.locked`) with no ``await`` between
reading the state and writing the new one, which is fsync'ed before the 200
leaves (the atomicity tlog-witness requires: two requests, or two witness
processes on one home, can never roll the recorded size back). A request
that shows a fork (a 422 with evidence) is kept under ``witness-evidence/``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

from aiohttp import web

from securechan.audit.note import SIG_ED25519, VerifierKey
from securechan.audit.witness_api import MAX_REQUEST_BYTES, WitnessAnswer, add_checkpoint
from securechan.audit.witness_store import WitnessHome, WitnessKey
from securechan.errors import MalformedInput, StorageError

__all__ = ["serve_witness", "witness_app"]

log = logging.getLogger("securechan.witness")


def _logs(keys: Sequence[VerifierKey]) -> dict[str, VerifierKey]:
    logs: dict[str, VerifierKey] = {}
    for key in keys:
        if key.sig_type != SIG_ED25519:
            raise MalformedInput("a log key is an Ed25519 (type 0x01) verifier key")
        if logs.setdefault(key.name, key) != key:
            raise MalformedInput(f"two keys for the log {key.name}")
    return logs


def witness_app(
    home: WitnessHome,
    key: WitnessKey,
    log_keys: Sequence[VerifierKey],
    *,
    clock: Callable[[], float],
    prefix: str = "",
) -> web.Application:
    """The witness's aiohttp application. ``MalformedInput`` for bad keys."""
    logs = _logs(log_keys)
    pq_key = key.pq_key
    home.read_state()  # a damaged state stops the start, not the first request

    def answer(body: bytes) -> WitnessAnswer:
        with home.locked():
            state = home.read_state()
            now = int(clock())
            got = add_checkpoint(
                state, logs, body, name=key.name, key=key.key, pq_key=pq_key, now=now
            )
            if got.state is not None:
                home.write_state(got.state)  # before the cosignature leaves
            elif got.evidence is not None:
                path = home.save_evidence(got.evidence, now=now)
                log.error("witness: refused a checkpoint that forks a log (evidence: %s)", path)
        return got

    async def handle(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=400, text="request too large\n")
        try:
            got = answer(body)
        except StorageError as e:
            log.error("witness: %s", e)
            return web.Response(status=500, text="the witness cannot store its state\n")
        headers = {"Content-Type": got.content_type}
        return web.Response(status=got.status, body=got.body, headers=headers)

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post(prefix.rstrip("/") + "/add-checkpoint", handle)
    return app


async def serve_witness(
    app: web.Application, host: str, port: int, announce: Callable[[str], None]
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM.

    Announces ``listening on http://host:port`` (the real port when 0).
    :class:`StorageError` if it cannot listen.
    """
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise StorageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    server = site._server
    sockets = getattr(server, "sockets", None) or ()
    real = sockets[0].getsockname()[1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    announce(f"listening on http://{shown}:{real}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
