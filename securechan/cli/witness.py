"""``securechan witness``: cosign a relay's transparency log (docs/AUDIT.md)."""

from __future__ import annotations

import time
from typing import Any

import click

import securechan
from securechan.cli.core import (
    RELAY_URL,
    _App,
    _emit_json,
    _Group,
    _json_option,
    _kdf_option,
    _run,
    pass_app,
)
from securechan.errors import MalformedInput, RelayError, UsageError
from securechan.terminal_text import inline


@click.group(cls=_Group)
def witness() -> None:
    """Cosign a relay's transparency log as a witness (C2SP tlog-cosignature)."""


def _witness_home(app: _App) -> Any:
    from securechan.audit.witness_store import WitnessHome

    return WitnessHome(app.home)


@witness.command(name="init")
@click.option("--name", required=True, help="The witness's key name, e.g. witness.example/tehran.")
@click.option("--force", is_flag=True, help="Replace an existing witness key (it is lost).")
@_kdf_option
@_json_option
@pass_app
def witness_init(app: _App, name: str, force: bool, kdf: str, as_json: bool) -> None:
    """Create the witness key (its own key, not your identity's)."""
    key = _witness_home(app).create_key(
        name, app.passphrase(confirm=True), kdf=securechan.KDF_PROFILES[kdf], force=force
    )
    verifier = key.verifier.to_text()
    if as_json:
        from securechan.cli.results import WitnessKeyInfo

        _emit_json(WitnessKeyInfo(name=key.name, verifier_key=verifier).to_json())
        return
    click.echo(verifier)
    click.echo(
        "Give this line to the relay's operator (DATA/witnesses.txt or [log] witnesses);"
        " 'securechan witness key --mldsa44' prints the ML-DSA-44 cosignature key.",
        err=True,
    )


@witness.command(name="key")
@click.option(
    "--mldsa44",
    is_flag=True,
    help="Print the ML-DSA-44 (type 0x06) cosignature key instead of the Ed25519 one.",
)
@_json_option
@pass_app
def witness_key(app: _App, mldsa44: bool, as_json: bool) -> None:
    """Print the witness's verifier key (no passphrase needed)."""
    home = _witness_home(app)
    verifier = home.verifier()
    if mldsa44:
        pq = home.pq_verifier()
        if pq is None:
            raise UsageError("unlock the witness key once first ('witness serve' or 'cosign')")
        verifier = pq
    if as_json:
        from securechan.cli.results import WitnessKeyInfo

        info = WitnessKeyInfo(name=verifier.name, verifier_key=verifier.to_text())
        _emit_json(info.to_json())
    else:
        click.echo(verifier.to_text())


@witness.command(name="cosign")
@click.option("--relay", "url", type=RELAY_URL, required=True, help="The relay's URL.")
@click.option(
    "--log-key",
    required=True,
    metavar="KEY",
    help="The log's verifier key (name+id+key), pinned out of band.",
)
@click.option("--follow", is_flag=True, help="Keep cosigning (Ctrl-C to stop).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="With --follow: seconds between rounds.",
)
@click.option("--timeout", type=float, default=None, help="With --follow: stop after N seconds.")
@_json_option
@pass_app
def witness_cosign(
    app: _App,
    url: str,
    log_key: str,
    follow: bool,
    interval: float,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Check the relay's newest checkpoint against the last one cosigned; cosign it.

    Exit 1 (and evidence under witness-evidence/) if the log shows another
    history; exit 3 if the relay cannot be reached."""
    import asyncio
    import base64

    from securechan.audit.note import VerifierKey
    from securechan.client.witness import witness_round

    try:
        pinned = VerifierKey.from_text(log_key)
    except MalformedInput as e:
        raise UsageError(f"--log-key: {e}") from None
    if pinned.sig_type != 0x01:
        raise UsageError("--log-key is the log's Ed25519 (type 0x01) verifier key")
    home = _witness_home(app)
    key = home.unlock(app.passphrase())

    def show(result: Any) -> None:
        cp = result.checkpoint
        root = base64.b64encode(cp.root_hash).decode()
        if as_json:
            from securechan.cli.results import CosignRound

            line = CosignRound(
                origin=cp.origin,
                size=cp.size,
                root=root,
                old_size=result.old_size,
                status=result.status,
                timestamp=result.timestamp,
            )
            _emit_json(line.to_json())
        else:
            click.echo(f"{inline(cp.origin)} size {cp.size} root {root}: {inline(result.status)}")

    async def go() -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                show(await witness_round(url, home, key, pinned, clock=time.time))
            except RelayError as e:
                if not follow:
                    raise
                click.echo(f"securechan: warning: {inline(str(e))}", err=True)  # keep following
            if not follow or (deadline is not None and time.monotonic() >= deadline):
                return
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            await asyncio.sleep(max(0.0, pause))

    _run(go())


@witness.command(name="serve")
@click.option(
    "--listen",
    default="127.0.0.1:8788",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to serve POST /add-checkpoint (port 0: any free port).",
)
@click.option(
    "--log",
    "logs",
    multiple=True,
    metavar="KEY",
    help="A log to witness: its Ed25519 verifier key (name = origin). Repeatable.",
)
@click.option(
    "--logs-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A file of log verifier keys, one a line ('#' comments).",
)
@pass_app
def witness_serve(app: _App, listen: str, logs: tuple[str, ...], logs_file: str | None) -> None:
    """Serve the C2SP tlog-witness API: cosign each log's checkpoints (Ed25519
    and ML-DSA-44) after checking their consistency with the last cosigned.

    Runs until SIGINT or SIGTERM. Exit 2 for a bad option or log key."""
    from securechan.audit.note import VerifierKey
    from securechan.client.witness_serve import serve_witness, witness_app

    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError("--listen is HOST:PORT")
    lines = list(logs)
    if logs_file is not None:
        try:
            with open(logs_file, encoding="utf-8") as f:
                lines += f.read(1 << 20).splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--logs-file: cannot read {logs_file}: {e}") from None
    keys = []
    for line in (raw.strip() for raw in lines):
        if line and not line.startswith("#"):
            try:
                keys.append(VerifierKey.from_text(line))
            except MalformedInput as e:
                raise UsageError(f"log key {inline(line[:80])}: {e}") from None
    if not keys:
        raise UsageError("name at least one log to witness (--log or --logs-file)")
    home = _witness_home(app)
    key = home.unlock(app.passphrase())
    try:
        web_app = witness_app(home, key, keys, clock=time.time)
    except MalformedInput as e:
        raise UsageError(str(e)) from None
    click.echo(f"witness key: {key.verifier.to_text()}", err=True)
    click.echo(f"witness ML-DSA-44 key: {key.pq_verifier.to_text()}", err=True)
    _run(
        serve_witness(
            web_app,
            host.strip("[]"),
            int(port_text),
            lambda text: click.echo(f"securechan witness: {text}", err=True),
        )
    )
