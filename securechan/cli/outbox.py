"""``outbox``: list what is queued for sending, and cancel it."""

from __future__ import annotations

from typing import Any

import click

from securechan.cli.core import _App, _channel, _emit_json, _json_option, _run, pass_app
from securechan.terminal_text import inline


@click.group(invoke_without_command=True)
@_json_option
@click.pass_context
def outbox(ctx: click.Context, as_json: bool) -> None:
    """List the messages waiting to be posted, or cancel one.

    Without a subcommand: the messages no relay took in full yet, one line
    each: its id (for 'outbox cancel'), contact, kind, size, parts the
    relays took of all its parts, and age. The next send, receive or
    status posts them."""
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(_App)
    if app is None:  # pragma: no cover - the top-level group always makes one
        raise click.UsageError("outbox runs under 'securechan'")

    async def go() -> Any:
        async with _channel(app) as ch:
            return ch.queued(), ch.now()

    from securechan.cli.agent import call_running_agent

    listed = call_running_agent(app, "outbox", {})  # through the agent when one runs
    if listed is not None:
        from securechan.client.agent_results import outbox_now, queued_messages

        items, now = queued_messages(listed), outbox_now(listed)
    else:
        items, now = _run(go())
    if as_json:
        for item in items:
            _emit_json(item.to_json())
        return
    if not items:
        click.echo("The outbox is empty.", err=True)
        return
    for item in items:
        what = item.kind + (f" {item.file_name}" if item.file_name else "")
        age = _age(now - item.created)
        click.echo(
            f"{item.id}  {inline(item.contact or '-')}  {inline(what)}  {item.size} bytes  "
            f"{item.posted}/{item.parts} parts posted  {age} old"
        )


def _age(seconds: int) -> str:
    seconds = max(0, seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


@outbox.command()
@click.argument("message_id", metavar="ID")
@_json_option
@pass_app
def cancel(app: _App, message_id: str, as_json: bool) -> None:
    """Withdraw the queued message ID (from 'securechan outbox').

    Its envelopes no relay took yet are removed, with our record of it; what
    a relay already took cannot be taken back, and is said. Anything
    withdrawn retires the conversation: the next send starts a new one."""

    async def go() -> Any:
        async with _channel(app) as ch:
            return ch.cancel(message_id)

    from securechan.cli.agent import call_running_agent

    answer = call_running_agent(app, "outboxCancel", {"message_id": message_id})
    if answer is not None:  # the agent withdrew it (docs/AGENT.md, outboxCancel)
        from securechan.client.agent_results import cancelled

        done = cancelled(answer)
    else:
        done = _run(go())
    if as_json:
        _emit_json(done.to_json())
        return
    text = f"Cancelled {done.kind} to {inline(done.contact)}: {done.withdrawn} part(s) withdrawn"
    if done.posted:
        text += (
            f"; the relay already had {done.posted} of {done.parts}, which cannot be taken back"
            + (
                " (the file stays incomplete: the contact never sees it)"
                if done.kind == "file"
                else ""
            )
        )
    click.echo(text, err=True)
