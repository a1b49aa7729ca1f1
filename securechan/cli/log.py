"""``securechan log``: show and verify the local audit log."""

from __future__ import annotations

import json
from typing import Any

import click

import securechan
from securechan.cli.core import (
    _App,
    _columns,
    _emit_json,
    _emit_json_lines,
    _Group,
    _iso,
    _json_option,
    _read_text,
    pass_app,
)
from securechan.terminal_text import inline


@click.group(name="log", cls=_Group)
def log_group() -> None:
    """Show and verify your local audit log (no passphrase needed)."""


def _log_value(value: Any) -> str:
    # Fields hold peer and relay data (a refused sender's name, a relay URL):
    # quoted JSON (ASCII) when empty or spaced, else rendered on one line.
    text = str(value)
    return json.dumps(text) if (not text or " " in text) else inline(text)


@log_group.command(name="show")
@click.option("--since", type=click.IntRange(min=0), default=None, help="Start at entry N.")
@_json_option
@pass_app
def log_show(app: _App, since: int | None, as_json: bool) -> None:
    """Print the entries: index, time, kind and fields (never message text).

    Entries are shown as stored; 'securechan log verify' checks them."""
    from securechan.audit.log import AuditLog

    with AuditLog.open(app.home, read_only=True) as log:
        if as_json:
            from securechan.cli.results import LogEntry

            _emit_json_lines(LogEntry.of(e).to_json() for e in log.entries(since))
            return
        for entry in log.entries(since):
            fields = " ".join(f"{k}={_log_value(v)}" for k, v in entry.fields.describe().items())
            head = f"{entry.index:>6} {_iso(entry.time)} {inline(entry.kind):<26} "
            click.echo(head + inline(fields, width=_columns(), indent=len(head)))


@log_group.command(name="verify")
@click.option(
    "--key", type=click.File("rb"), help="Verify against this public identity file instead."
)
@_json_option
@pass_app
def log_verify(app: _App, key: Any, as_json: bool) -> None:
    """Check every entry, checkpoint signature and audit.head.

    Exit 0 if the log is intact; exit 1 naming the first bad entry."""
    from securechan.audit.log import AuditLog

    if key is not None:
        ident = securechan.PublicIdentity.from_text(_read_text(key, "the --key file"))
    else:
        ident = app.keystore.public_identity()
    with AuditLog.open(app.home, read_only=True) as log:
        report = log.verify(ident)
    if as_json:
        from securechan.cli.results import LogVerified

        verified = LogVerified(
            entries=report.entries,
            checkpoints=report.checkpoints,
            last_checkpoint=report.last_checkpoint,
            unsigned=report.unsigned,
            head_checkpoint=report.head_checkpoint,
            identity=ident.name,
            fingerprint=str(ident.fingerprint),
        )
        _emit_json(verified.to_json())
        return
    if report.last_checkpoint is None:
        signed = "no signed checkpoint yet"
    else:
        signed = f"last signed checkpoint at {report.last_checkpoint}"
        if report.unsigned:
            signed += f" ({report.unsigned} newer entries not signed yet)"
    click.echo(f"log intact: {report.entries} entries, {signed}")
