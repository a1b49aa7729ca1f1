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
        "Give this line to the relay's operator (DATA/witnesses.txt or [log] witnesses).",
        err=True,
    )


@witness.command(name="key")
@_json_option
@pass_app
def witness_key(app: _App, as_json: bool) -> None:
    """Print the witness's verifier key (no passphrase needed)."""
    verifier = _witness_home(app).verifier()
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
