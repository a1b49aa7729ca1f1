"""``securechan statement``: export and verify a message as a statement."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from securechan.cli.completion import complete_message_id
from securechan.cli.core import (
    _App,
    _channel,
    _columns,
    _emit_json,
    _Group,
    _iso,
    _json_option,
    _read_text,
    _run,
    pass_app,
)
from securechan.errors import VerificationFailed
from securechan.terminal_text import block, inline


@click.group(cls=_Group)
def statement() -> None:
    """Export one message as a statement a third party verifies offline."""


@statement.command(name="export")
@click.argument("message_id", shell_complete=complete_message_id)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the statement here (never over an existing file).",
)
@_json_option
@pass_app
def statement_export(app: _App, message_id: str, output: Path, as_json: bool) -> None:
    """Write the statement of MESSAGE-ID (an id from 'history').

    The file reveals that message, its sender and recipient, the session's
    handshake transcript, the key of its envelope (no other message's) and
    the recipient's signed receipt for it, if there is one; give it only to
    whom you mean to."""

    from securechan.client.policy import export_statement

    async def go() -> Any:
        async with _channel(app) as ch:
            return await export_statement(ch, message_id, output)

    from securechan.cli.agent import call_running_agent

    # Through the agent when one runs (docs/AGENT.md, statementExport).
    asked = {"message_id": message_id, "output": os.path.abspath(output)}
    info = call_running_agent(app, "statementExport", asked)
    if info is None:
        info = _run(go()).to_json()
    if as_json:
        _emit_json(info)
        return
    where = "without a relay log receipt"
    if info["log"]:
        witnessed = info["witnessed"]
        where = "with a witnessed log checkpoint" if witnessed else "with its relay log receipt"
    delivery = (
        "the recipient's receipt for it"
        if info["delivery_receipt"]
        else "no receipt from the recipient for exactly this message: delivery not proven"
    )
    click.echo(
        f"Statement of message {info['message_id']} written to {inline(str(output))} "
        f"({where}; {delivery})"
    )


@statement.command(name="verify")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--trust-relay",
    "trust_relay",
    metavar="KEY",
    help="The relay's log verifier key (name+id+key) you trust; the file's must equal it.",
)
@click.option(
    "--trust-witness",
    "trust_witness",
    metavar="KEY",
    multiple=True,
    help="A witness (type 0x04 or 0x06 key) that must have cosigned; repeatable.",
)
@click.option(
    "--require-delivery",
    is_flag=True,
    help="Exit 1 unless the file also proves delivery (the recipient's signed receipt).",
)
@_json_option
def statement_verify(
    file: Any,
    trust_relay: str | None,
    trust_witness: tuple[str, ...],
    require_delivery: bool,
    as_json: bool,
) -> None:
    """Check a statement FILE offline and say which claims it proves:
    PROVES (the sender signed the message in a session between the
    two parties; where the envelope is logged) and DELIVERY (acknowledged by
    the recipient's signed receipt, or not proven). Exit 0 if everything the
    file claims holds (1 with --require-delivery and no delivery proof)."""
    from securechan.audit.note import VerifierKey
    from securechan.audit.statement import Statement, verify_statement

    relay_key = VerifierKey.from_text(trust_relay.strip()) if trust_relay else None
    witnesses = [VerifierKey.from_text(w.strip()) for w in trust_witness]
    st = Statement.from_text(_read_text(file, "the statement file"))
    v = verify_statement(st, trust_relay=relay_key, trust_witnesses=witnesses)
    from securechan.cli.results import StatementVerified

    result = StatementVerified.of(v).to_json()
    if as_json:
        _emit_json(result)
    else:
        _print_statement(v, result)
    if require_delivery and v.delivery is None:
        raise VerificationFailed("the statement does not prove delivery (no recipient receipt)")


def _print_statement(verified: Any, result: dict[str, Any]) -> None:
    """The verdict first, in the tool's own fixed words (only numbers and
    fingerprints, which the tool computes, are filled in); then, after a
    marked line, what the signers and the relay wrote (names, the message,
    the log's name), which can say anything."""
    from securechan.audit.statement import VerifiedStatement

    v: VerifiedStatement = verified
    log = v.log
    d = v.delivery
    p = v.payload
    click.echo(f"Statement of message {v.message_id}: VALID")
    click.echo(
        f"PROVES: signed by {v.sender.fingerprint} to {v.recipient.fingerprint}, "
        f"message #{p.seq}, in a session whose handshake both are named in"
    )
    if log is None:
        click.echo("PROVES: not logged (the file carries no relay log receipt)")
    else:
        trust = "the relay key you trust" if log.trusted else "a relay key taken from the file"
        click.echo(
            f"PROVES: logged at index {log.leaf_index} of {log.checkpoint.size} "
            f"by the relay log with {trust} (key id {log.log_key.key_id.hex()}), "
            f"{len(log.cosignatures)} witness cosignature(s)"
        )
    if d is None:
        click.echo("DELIVERY: not proven (the file carries no receipt signed by the recipient)")
    else:
        click.echo(
            f"DELIVERY: acknowledged by {v.recipient.fingerprint} "
            f"(its signed receipt {d.receipt_id} covers #{d.up_to_seq} and this message's hash)"
        )
    click.echo("--- details: the text below was written by the signers and the relay ---")
    click.echo(
        f"  from:    {inline(v.sender.name)} ({v.sender.fingerprint}, {result['from']['role']})"
    )
    click.echo(
        f"  to:      {inline(v.recipient.name)} ({v.recipient.fingerprint}, {result['to']['role']})"
    )
    click.echo(
        f"  message: #{p.seq} of conversation {p.conversation.hex()}, "
        f"signed at {result['sent_at']} (sender's clock)"
    )
    click.echo(f"  session: transcript hash {v.session.transcript_hash.hex()}")
    if log is not None:
        click.echo(f"  log:     {inline(log.checkpoint.origin)}")
        for c in log.cosignatures:
            click.echo(f"           cosigned by {inline(c.cosigner.name)} at {_iso(c.timestamp)}")
    if d is not None:
        click.echo(f"  receipt: signed at {result['delivery']['signed_at']} (recipient's clock)")
    if log is not None and not log.trusted:
        click.echo(
            "securechan: warning: the relay key came from the file itself; "
            "pass --trust-relay KEY to check it against the key you trust",
            err=True,
        )
    click.echo(
        "  note:    the fingerprints prove which keys signed; compare them with the "
        "parties' published fingerprints"
    )
    # The signer's own text comes last, after every line of the tool's, and
    # each of its further lines is marked: it cannot pose as a verdict line.
    click.echo(f"  content: {block(v.summary(), width=_columns(), indent=11)}")
