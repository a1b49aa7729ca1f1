"""``securechan relay``: run a mediator's relay."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from securechan.cli.core import _Group
from securechan.errors import UsageError


@click.group(cls=_Group)
def relay() -> None:
    """Run a mediator's relay."""


@relay.command(name="serve")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8470; 0 picks a free one).")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data folder (default ./relay-data).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate chain: serve HTTPS (with --tls-key).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML config file (flags override it).",
)
@click.option(
    "--synchronous",
    type=click.Choice(["FULL", "NORMAL"]),
    default=None,
    help="SQLite durability (default FULL: a 2xx survives power loss).",
)
@click.option(
    "--db",
    default=None,
    metavar="postgresql://...",
    help="Keep queues and envelopes in this PostgreSQL database instead of DATA/relay.db"
    " (put the password in ~/.pgpass or PGPASSWORD, not here).",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    default=None,
    help="Share the port with other relay processes on the same --db (SO_REUSEPORT).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default=None,
    help="What the relay logs on stderr (default INFO).",
)
def relay_serve(
    host: str | None,
    port: int | None,
    data: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    config_file: Path | None,
    synchronous: str | None,
    db: str | None,
    reuse_port: bool | None,
    log_level: str | None,
) -> None:
    """Serve the relay until SIGTERM or Ctrl-C.

    A port already in use fails at once (exit 2), before a relay key or a
    database is created in the data folder."""
    import asyncio
    import dataclasses
    import logging

    from securechan.relay.app import RelayConfig
    from securechan.relay.server import load_config_file, options_from, serve

    values: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if config_file is not None:
        values, limits = load_config_file(config_file)
    flags = {
        "host": host,
        "port": port,
        "data": data,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "synchronous": synchronous,
        "db": db,
        "reuse_port": reuse_port,
        "log_level": log_level,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    opts = options_from(values)
    try:
        config = dataclasses.replace(RelayConfig(), **limits)
    except TypeError as e:
        raise UsageError(f"bad [limits] in the config: {e}") from None
    logging.basicConfig(
        level=opts.log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    run = asyncio.run
    try:  # libuv's event loop when installed (a dependency on POSIX): less CPU per request
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    run(serve(opts, config, announce=lambda line: click.echo(line)))


@relay.command(name="tiles")
@click.argument("url")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--log-key",
    required=True,
    metavar="KEY",
    help="The log's verifier key (name+id+key), pinned out of band.",
)
def relay_tiles(url: str, directory: Path, log_key: str) -> None:
    """Copy a log's C2SP tlog-tiles from URL (a relay, or any copy) to DIRECTORY.

    Every tile and entry is checked against the checkpoint signed by
    --log-key before anything is written; the checkpoint is written last.
    Run it again to add what is new. Serve DIRECTORY with any static web
    server (docs/RELAY.md, "The log as tiles"). Exit 1 if a check fails,
    3 if URL cannot be reached."""
    import asyncio

    import aiohttp

    from securechan.audit.note import VerifierKey
    from securechan.client.tiles import http_fetch, mirror
    from securechan.errors import MalformedInput

    try:
        pinned = VerifierKey.from_text(log_key)
    except MalformedInput as e:
        raise UsageError(f"--log-key: {e}") from None

    async def go() -> tuple[int, int]:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await mirror(http_fetch(session, url), pinned, directory)

    size, written = asyncio.run(go())
    click.echo(f"size {size}: {written} files written to {directory}")


def _add_migrate() -> None:
    from securechan.cli.relay_migrate import relay_migrate

    relay.add_command(relay_migrate)


_add_migrate()
