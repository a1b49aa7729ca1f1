"""``securechan group export``, ``group statement`` and ``verify-transcript``:
a group's record, exported and verified offline (docs/AUDIT.md, "Group
transcripts"). The files are written by the client layer
(``client/group_record.py``); this module parses, prints and maps errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from securechan.cli.completion import complete_group_message_id
from securechan.cli.core import (
    _App,
    _channel,
    _columns,
    _emit_json,
    _json_option,
    _run,
    pass_app,
)
from securechan.errors import MalformedInput
from securechan.terminal_text import block, inline

__all__ = ["group_export", "group_statement", "verify_transcript"]

# A bundle is one wire record: its items list is at most 64 MiB.
_MAX_BUNDLE = 65 * 1024 * 1024


@click.command(name="export")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the transcript bundle here (never over an existing file).",
)
@click.option(
    "--from", "first", type=click.IntRange(min=1), help="Disclose contents from record N."
)
@click.option("--to", "last", type=click.IntRange(min=1), help="End the bundle at record N.")
@_json_option
@pass_app
def group_export(
    app: _App, name: str, output: Path, first: int | None, last: int | None, as_json: bool
) -> None:
    """Write the transcript of group NAME for a third party to verify offline.

    The bundle holds every record from your first (the creation, or the
    change you joined by) to --to (default: the last), the epoch secrets that
    open them, the contents of the messages from --from to --to, the
    authors' public identities and the relay log's proof of every record.
    Whoever holds it can read those records and post noise to those
    streams: give it only to whom you mean to."""
    from securechan.client.group_record import export_group

    async def go() -> Any:
        async with _channel(app) as ch:
            return await export_group(ch, name, output, first=first, last=last)

    info = _run(go())
    if as_json:
        _emit_json(info.to_json())
        return
    click.echo(
        f"Transcript of group {inline(info.group)} written to {inline(info.file)}: "
        f"{info.records} records, {info.disclosed} contents disclosed, "
        f"logged under a checkpoint of size {info.log_size}"
    )


@click.command(name="statement")
@click.argument("message_id", shell_complete=complete_group_message_id)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the statement here (never over an existing file).",
)
@_json_option
@pass_app
def group_statement(app: _App, message_id: str, output: Path, as_json: bool) -> None:
    """Write the statement of group message MESSAGE-ID (an id from
    'history --group'): the group's records up to it, only its content."""
    from securechan.client.group_record import export_group_statement

    async def go() -> Any:
        async with _channel(app) as ch:
            return await export_group_statement(ch, message_id, output)

    info = _run(go())
    if as_json:
        _emit_json(info.to_json())
        return
    click.echo(
        f"Statement of group message {info.message_id} in group {inline(info.group)} "
        f"written to {inline(info.file)} ({info.records} records, its content only)"
    )


@click.command(name="verify-transcript")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--relay-key",
    "relay_key",
    metavar="KEY",
    required=True,
    help="The relay's log verifier key (name+id+key) you trust.",
)
@_json_option
def verify_transcript(file: Any, relay_key: str, as_json: bool) -> None:
    """Check a group transcript or statement FILE offline (--relay-key KEY).

    Checks FILE against the relay log key you trust and prints what it
    proves. Exit 0 if everything it claims holds, 1 if a check failed, 2 for
    a malformed file, 4 if the checkpoint is not signed by KEY."""
    from securechan.audit.group_transcript import GroupTranscript
    from securechan.audit.group_transcript_verify import verify_transcript as verify
    from securechan.audit.note import VerifierKey

    key = VerifierKey.from_text(relay_key.strip())
    data = file.read(_MAX_BUNDLE + 1)
    if len(data) > _MAX_BUNDLE:
        raise MalformedInput("the transcript file is larger than any bundle can be")
    v = verify(GroupTranscript.from_bytes(data), relay_key=key)
    from securechan.cli.results import TranscriptVerified

    if as_json:
        _emit_json(TranscriptVerified.of(v).to_json())
    else:
        _print(v)


def _print(v: Any) -> None:
    """The verdict in the tool's own words first; what signers wrote (names,
    contents) after a marked line, each escaped."""
    from securechan.cli.transcript_results import content_summary

    s = v.statement_or_none()
    kind = "Statement of one group message" if s is not None else "Group transcript"
    start = "from the exporter's join" if v.joined else "from the group's creation"
    click.echo(f"{kind}: VALID (relay log key checked: the one you gave)")
    applied = [e for e in v.entries if e.status not in ("refused", "unreadable")]
    click.echo(
        f"PROVES: {len(applied)} records {start}, in this order, each logged in the relay's "
        f"log (tree size {v.checkpoint.size}); {len(v.states)} member list(s); "
        f"final head {v.final_head.hex()}"
    )
    if s is not None:
        m = s.message
        click.echo(
            f"PROVES: message {m.message_id} signed by {m.author.fingerprint} "
            f"(#{m.seq} of its sender), record {m.number}, under the member list of epoch "
            f"{m.epoch} ({len(m.state.members)} members), stream position {m.position}, "
            f"log index {m.log_index}; its content is the one the sender committed to"
        )
        click.echo(
            "NOT PROVEN: that any member received or read it; what came after it; "
            "the content of any other message"
        )
    else:
        click.echo(
            f"NOT PROVEN: records after record {applied[-1].number if applied else 0}; "
            "the contents not disclosed; that members received the contents"
        )
    if v.joined:
        click.echo(
            "NOTE: the head before the join is the word of the change's author, "
            "confirmed by every later message that names a head of this transcript"
        )
    click.echo("--- details: names and contents below were written by the signers ---")
    for st in v.states:
        who = ", ".join(
            m.fingerprint.hex()[:16] + (" (admin)" if m.admin else "") for m in st.members
        )
        click.echo(f"  epoch {st.epoch}: {who}")
    width = _columns()
    for e in v.entries:
        where = f"epoch {e.epoch} pos {e.position}" if e.position else f"epoch {e.epoch} (join)"
        who = (
            f"{inline(e.author.name)} ({e.author.fingerprint.digest.hex()[:16]})"
            if e.author
            else "-"
        )
        if e.status == "message":
            text = "content not disclosed" if e.content is None else content_summary(e.content)
            head = f"  #{e.number} {where} {who} #{e.seq}: "
            click.echo(head + block(text, width=width, indent=len(head)))
        elif e.status in ("refused", "unreadable"):
            reason = e.reason or "does not open under its epoch's key (skipped by every member)"
            click.echo(f"  -- {where} {e.status}: {inline(reason)}")
        else:
            click.echo(f"  #{e.number} {where} {e.status} by {who}: epoch {e.state.epoch}")
