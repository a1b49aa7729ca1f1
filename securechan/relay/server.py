"""Running a relay: its key, its data folder, TLS, expiry and clean shutdown.

``securechan relay serve`` calls :func:`serve`. The data folder (mode 0700)
holds ``relay.key`` (the relay's Ed25519 seed, mode 0600, created on first
start), ``relay.db`` (SQLite; or ``db = "postgresql://..."`` / ``--db``: a
PostgreSQL database, :mod:`securechan.relay.pg_store`), ``tlog.db`` (the transparency log, see
:mod:`securechan.relay.tlog`) and optionally ``witnesses.txt`` (witness
verifier keys, one a line, added to the config's ``[log] witnesses``). On
start the relay prints one line per fact to stdout: its public key and
fingerprint (for clients to pin), the log's verifier key, and the URL it
listens on. SIGTERM and SIGINT stop it gracefully: for ``drain_seconds``
``/healthz`` answers 503 draining while requests are still served (a reverse
proxy moves traffic away; a second signal ends the drain), then the listener
closes, in-flight requests get up to ``shutdown_timeout`` seconds, pending
writes are committed, and the process exits 0.

At start the file-descriptor limit is raised to its hard limit and the
connection caps (:mod:`securechan.relay.connlimit`) are sized from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from securechan.audit.note import VerifierKey
from securechan.errors import MalformedInput, StorageError
from securechan.primitives import Ed25519SigningKey, sha256
from securechan.protocol.relay_auth import b64e
from securechan.relay.app import RELAY, Relay, RelayConfig, make_app, storage_cause
from securechan.relay.connlimit import ConnectionGate, fd_headroom, open_fds, raise_fd_limit
from securechan.relay.sqlite_store import SqliteStorage
from securechan.relay.storage import RelayStorage
from securechan.relay.tlog import DEFAULT_COSIGN_WINDOW, parse_witness_keys
from securechan.relay.tlog_open import open_relay_log
from securechan.relay.witness_push import (
    DEFAULT_PUSH_INTERVAL,
    WitnessPusher,
    check_push_options,
    stop_pushing,
)
from securechan.relay.writer_thread import open_in_thread

__all__ = ["ServeOptions", "load_config_file", "load_or_create_key", "serve"]

log = logging.getLogger("securechan.relay")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """Where and how to listen (flags or a TOML config file)."""

    host: str = "127.0.0.1"
    port: int = 8470
    data: Path = Path("relay-data")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    synchronous: str = "FULL"
    expire_every: float = 3600.0
    shutdown_timeout: float = 10.0
    idle_timeout: float = 8.0
    drain_seconds: float = 0.0
    log_level: str = "INFO"
    # The transparency log: the config file's [log] table.
    log_origin: str | None = None
    log_witnesses: tuple[str, ...] = ()
    log_cosign_window: float = DEFAULT_COSIGN_WINDOW
    log_witness_urls: tuple[str, ...] = ()
    log_push_interval: float = DEFAULT_PUSH_INTERVAL
    # PostgreSQL instead of DATA/relay.db (docs/RELAY.md, "PostgreSQL").
    db: str | None = None
    # SO_REUSEPORT: several relay processes on one PostgreSQL database bind
    # the same port and the kernel spreads connections among them.
    reuse_port: bool = False


_LOG_KEYS = {
    "origin": "log_origin",
    "witnesses": "log_witnesses",
    "cosign_window": "log_cosign_window",
    "witness_urls": "log_witness_urls",
    "push_interval": "log_push_interval",
}


def load_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML config: top-level serve options, a ``[limits]`` table of
    :class:`RelayConfig` fields and a ``[log]`` table (``origin``,
    ``witnesses``, ``cosign_window``). Unknown keys are refused."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MalformedInput(f"cannot read config {path}: {e}") from None
    limits = data.pop("limits", {})
    log_table = data.pop("log", {})
    if not isinstance(log_table, dict) or set(log_table) - set(_LOG_KEYS):
        raise MalformedInput(
            "the [log] table takes origin, witnesses, cosign_window, witness_urls and push_interval"
        )
    data.update({_LOG_KEYS[k]: v for k, v in log_table.items()})
    serve_names = {f.name for f in fields(ServeOptions)}
    limit_names = {f.name for f in fields(RelayConfig)} - {"clock"}
    unknown = (set(data) - serve_names) | (set(limits) - limit_names)
    if unknown:
        raise MalformedInput(f"unknown config keys: {', '.join(sorted(unknown))}")
    return data, limits


def check_port_free(host: str, port: int, *, reuse_port: bool = False) -> None:
    """Raise :class:`StorageError` (exit 2, one line) if ``host:port`` cannot
    be bound: a busy port or a bad address is reported before ``serve``
    creates a relay key and databases in a data folder nobody will serve.
    Each address the host resolves to is tried with a socket bound and closed
    at once (SO_REUSEADDR, as the real listener); port 0 always succeeds.
    The real bind can still lose a race; it reports the same line. With
    ``reuse_port`` (several relay processes on one port) the probe sets
    SO_REUSEPORT too, so a sibling process holding the port does not count
    as busy, but any other program does."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise StorageError(f"cannot listen on {host}:{port}: {e}") from None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:  # as asyncio's create_server does
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as e:
            raise StorageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def load_or_create_key(data_dir: Path) -> Ed25519SigningKey:
    """The relay key from ``relay.key``, created (0600, O_EXCL) if absent."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {data_dir}: {e.strerror}") from None
    path = data_dir / "relay.key"
    try:
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        key = Ed25519SigningKey.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(key.seed_bytes_secret().hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        return key
    except (OSError, UnicodeDecodeError) as e:
        raise StorageError(f"cannot read {path}: {e}") from None
    try:
        seed = bytes.fromhex(text)
        return Ed25519SigningKey(seed)
    except ValueError:
        raise MalformedInput(f"{path} is not a relay key (64 hex digits)") from None


def witness_keys(opts: ServeOptions) -> tuple[VerifierKey, ...]:
    """The configured witnesses: ``[log] witnesses`` plus ``DATA/witnesses.txt``."""
    lines = list(opts.log_witnesses)
    try:
        lines += (opts.data / "witnesses.txt").read_text("utf-8").splitlines()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        raise MalformedInput(f"cannot read {opts.data / 'witnesses.txt'}: {e}") from None
    try:
        return parse_witness_keys(lines)
    except MalformedInput as e:
        raise MalformedInput(f"a configured witness key is not valid: {e}") from None


def _tls(opts: ServeOptions) -> ssl.SSLContext | None:
    if opts.tls_cert is None and opts.tls_key is None:
        return None
    if opts.tls_cert is None or opts.tls_key is None:
        raise MalformedInput("give both --tls-cert and --tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise MalformedInput(f"cannot load the TLS certificate or key: {e}") from None
    return ctx


class _NoRequestDetails(logging.Filter):
    """aiohttp logs malformed requests with a traceback and the start of the
    request line, which can hold a queue id: keep one plain line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "rejected a malformed HTTP request"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


async def serve(
    opts: ServeOptions,
    config: RelayConfig,
    *,
    announce: Callable[[str], None] = print,
) -> None:
    """Run until SIGTERM/SIGINT; return after a clean shutdown."""
    # Before a key or a database is created.
    check_port_free(opts.host, opts.port, reuse_port=opts.reuse_port)
    key = load_or_create_key(opts.data)
    tls = _tls(opts)
    logging.getLogger("aiohttp.server").addFilter(_NoRequestDetails())
    witnesses = witness_keys(opts)
    storage = await _open_storage(opts)
    try:
        tlog = await open_relay_log(
            opts.data,
            key,
            db=opts.db,
            origin=opts.log_origin,
            witnesses=witnesses,
            synchronous=opts.synchronous,
            cosign_window=opts.log_cosign_window,
            clock=config.clock,
        )
    except ValueError as e:
        await storage.close()
        raise MalformedInput(f"bad [log] config: {e}") from None
    except BaseException:
        await storage.close()
        raise
    try:
        # Envelopes stored but not logged when the relay last stopped (a
        # crash between the two commits) are logged before anyone is served.
        await tlog.repair(storage)
    except BaseException:
        await tlog.close()
        await storage.close()
        raise
    try:
        config, gate = _connection_caps(config)
    except BaseException:
        await tlog.close()
        await storage.close()
        raise
    app = make_app(storage, key, config, tlog=tlog)
    relay: Relay = app[RELAY]
    metrics = relay.metrics
    metrics.connections.set_function(lambda: gate.open)
    metrics.open_fds.set_function(open_fds)
    metrics.fd_limit.set(gate.fd_limit)
    gate.on_refuse = lambda reason: metrics.connections_refused.labels(reason).inc()
    # keepalive_timeout also bounds a new connection that never completes a
    # request (idle, or dribbling its headers: slowloris); bodies have their
    # own timeout in the handlers.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=opts.shutdown_timeout,
        keepalive_timeout=opts.idle_timeout,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    handler = runner.server
    try:
        if handler is None:  # set by setup(); never None here
            raise OSError(0, "the HTTP server was not set up")
        # Every connection passes the gate before aiohttp sees it.
        listener = await loop.create_server(
            gate.wrap(handler),
            opts.host,
            opts.port,
            ssl=tls,
            reuse_address=True,
            reuse_port=opts.reuse_port or None,
            backlog=512,
        )
    except OSError as e:
        await runner.cleanup()
        await tlog.close()
        await storage.close()
        raise StorageError(f"cannot listen on {opts.host}:{opts.port}: {e.strerror}") from None
    port = opts.port
    if listener.sockets:
        port = listener.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    _tune_gc()
    announce(f"relay key: {b64e(key.public)}")
    announce(f"relay fingerprint: {sha256(key.public).hex()}")
    announce(f"log verifier key: {tlog.verifier.to_text()}")
    announce(f"log ML-DSA-44 verifier key: {tlog.pq_verifier.to_text()}")
    announce(f"listening on {scheme}://{host}:{port}")

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def expire_loop() -> None:
        while True:
            await asyncio.sleep(opts.expire_every)
            n = await storage.expire(older_than=int(config.clock()) - config.ttl)
            if n:
                log.info("expired %d envelopes", n)

    expirer = asyncio.create_task(expire_loop())
    pusher = WitnessPusher(tlog, opts.log_witness_urls, interval=opts.log_push_interval)
    pushes = asyncio.create_task(pusher.run()) if opts.log_witness_urls else None
    try:
        await stop.wait()
        if opts.drain_seconds > 0:
            # Readiness says 503 draining while requests are still served, so
            # that a reverse proxy's health check moves traffic away first.
            log.info("draining for %g s: /healthz answers 503", opts.drain_seconds)
            relay.draining = True
            stop.clear()  # a second SIGTERM/SIGINT ends the drain early
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=opts.drain_seconds)
    finally:
        log.info("stopping: finishing in-flight requests")
        relay.draining = True
        expirer.cancel()
        await stop_pushing(pushes)
        with contextlib.suppress(asyncio.CancelledError):
            await expirer
        listener.close()
        await runner.cleanup()
        gate.sampled.flush()  # refusal counts not yet logged
        relay.ws_refusals.flush()
        # The runner's cleanup let in-flight sends finish (each stores, then
        # logs; one cancelled between the two marked the log dirty). Then
        # relay.db, then the log records a clean stop if every append
        # succeeded, so the next start need not rescan relay.db (RelayLog.repair).
        try:
            await storage.close()
            try:
                clean = await tlog.mark_clean()
            except StorageError as e:
                log.warning("transparency log: cannot record a clean stop: %s", storage_cause(e))
            else:
                if not clean:
                    log.warning("transparency log: an append failed; the next start repairs it")
        finally:
            await tlog.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopped")


async def _open_storage(opts: ServeOptions) -> RelayStorage:
    """``DATA/relay.db``, or the PostgreSQL database of ``opts.db`` (which
    then holds the transparency log too: :func:`open_relay_log`)."""
    if opts.db is None:
        return await open_in_thread(
            SqliteStorage, opts.data / "relay.db", synchronous=opts.synchronous
        )
    try:
        from securechan.relay.pg_store import PgStorage
    except ImportError:
        raise MalformedInput(
            "--db postgresql://... needs psycopg: pip install 'securechan[postgres]'"
        ) from None
    storage = await PgStorage.open(opts.db)
    # Never the DSN itself: it may hold a password.
    log.info("storage and log: PostgreSQL %s", storage.where)
    return storage


def _connection_caps(config: RelayConfig) -> tuple[RelayConfig, ConnectionGate]:
    """Raise the fd limit; size the overall connection and WebSocket caps
    from it (a configured cap above what the descriptors allow is lowered,
    with a warning: it would bring back EMFILE)."""
    limit = raise_fd_limit()
    held = max(open_fds(), 0)
    room = limit - held - fd_headroom(limit)
    if room < 16:
        raise StorageError(
            f"the file-descriptor limit ({limit}) leaves no room for connections: raise it"
        )
    total = config.max_connections or room
    if total > room:
        log.warning("max_connections %d lowered to %d (fd limit %d)", total, room, limit)
        total = room
    # One address may hold an eighth of each overall cap by default: seven
    # addresses at their caps still leave room for everyone else.
    per_client = min(config.max_connections_per_client or max(1, total // 8), total)
    sockets = min(config.max_websockets or max(1, total // 2), total)
    ws_per_client = min(config.max_ws_per_client or max(1, sockets // 8), sockets)
    gate = ConnectionGate(max_total=total, max_per_client=per_client)
    gate.fd_limit = limit
    log.info(
        "fd limit %d: at most %d connections (%d per address), %d WebSockets (%d per address)",
        limit,
        total,
        per_client,
        sockets,
        ws_per_client,
    )
    resolved = replace(
        config,
        max_connections=total,
        max_connections_per_client=per_client,
        max_websockets=sockets,
        max_ws_per_client=ws_per_client,
    )
    return resolved, gate


def _tune_gc() -> None:
    """Cheaper garbage collection for a long-running server (process-wide:
    ``serve`` runs as the relay process's main program).

    Every request allocates futures, tasks and handler frames, many of them in
    short-lived reference cycles. With the default first-generation threshold
    (700) the collector ran ~30 times a second under load and an oldest-
    generation pass over everything loaded at start-up stalled the event loop
    for ~16 ms (measured with ``gc.callbacks`` under the relay benchmark): a
    latency spike for every request in flight. Freezing the start-up objects
    takes them out of every collection, and a higher first threshold lets
    most garbage die young between collections; cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def options_from(values: dict[str, Any]) -> ServeOptions:
    """Build :class:`ServeOptions` from flag/config values (paths converted)."""
    opts = ServeOptions()
    clean = {k: v for k, v in values.items() if v is not None}
    for name in ("data", "tls_cert", "tls_key"):
        if name in clean:
            clean[name] = Path(clean[name])
    witnesses = clean.get("log_witnesses")
    if witnesses is not None:
        if not isinstance(witnesses, list | tuple) or not all(
            isinstance(w, str) for w in witnesses
        ):
            raise MalformedInput("[log] witnesses is a list of verifier keys")
        clean["log_witnesses"] = tuple(witnesses)
    urls = clean.get("log_witness_urls")
    if urls is not None:
        if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
            raise MalformedInput("[log] witness_urls is a list of URLs")
        clean["log_witness_urls"] = tuple(urls)
    interval = clean.get("log_push_interval", 1.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise MalformedInput("[log] push_interval is a number of seconds")
    try:
        check_push_options(clean.get("log_witness_urls", ()), interval)
    except ValueError as e:
        raise MalformedInput(f"[log] {e}") from None
    if not isinstance(clean.get("log_origin", ""), str):
        raise MalformedInput("[log] origin is a string")
    db = clean.get("db")
    if db is not None and (
        not isinstance(db, str) or not db.startswith(("postgresql://", "postgres://"))
    ):
        raise MalformedInput("db must be a postgresql:// URL (without it: DATA/relay.db)")
    reuse = clean.get("reuse_port", False)
    if not isinstance(reuse, bool):
        raise MalformedInput("reuse_port is true or false")
    if reuse and db is None:
        # SQLite's relay.db and tlog.db have one writer process each: two
        # relays on one data folder would append to the log independently.
        raise MalformedInput("reuse_port needs db = postgresql://... (one database, N processes)")
    window = clean.get("log_cosign_window", 0.0)
    if isinstance(window, bool) or not isinstance(window, int | float):
        raise MalformedInput("[log] cosign_window is a number of seconds")
    try:
        return replace(opts, **clean)
    except TypeError as e:
        raise MalformedInput(f"bad relay option: {e}") from None
