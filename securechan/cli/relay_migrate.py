"""``securechan relay migrate``: move a relay's data folder to PostgreSQL
(``docs/RELAY.md``, "Moving a relay to PostgreSQL")."""

from __future__ import annotations

from pathlib import Path

import click

from securechan.errors import ProofFailed, UsageError


@click.command(name="migrate")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The relay's data folder (stop the relay first).",
)
@click.option("--to", "target", required=True, help="postgresql://... (an empty database).")
@click.option(
    "--log-only",
    is_flag=True,
    help="Copy only the transparency log, not relay.db's queues, envelopes and prekeys.",
)
def relay_migrate(source: Path, target: str, log_only: bool) -> None:
    """Copy a relay's log (and storage) into PostgreSQL; prove the log unchanged.

    Prints the source's and the copy's log size and root; exits 1 if they differ.
    """
    from securechan.relay.pg_migrate import migrate_log, storage_copier
    from securechan.relay.pg_tlog_store import is_postgres_url

    if not is_postgres_url(target):
        raise UsageError("--to takes a postgresql:// URL")
    copier = storage_copier()
    if copier is None and not log_only:
        raise UsageError(
            "this build cannot copy relay.db's queues, envelopes and prekeys to PostgreSQL;"
            " pass --log-only to copy the transparency log alone"
        )
    if copier is not None and not log_only:
        import asyncio

        click.echo(asyncio.run(copier(source, target)))
    copy = migrate_log(source, target)
    for line in copy.lines():
        click.echo(line)
    if not copy.unchanged:
        raise ProofFailed("the copied log's size or root differs from the source's")
    click.echo("log copied: size and root unchanged")
