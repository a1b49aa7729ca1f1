"""``securechan pair``: pair with another delegation by a spoken code."""

from __future__ import annotations

from typing import Any

import click

from securechan.cli.core import _App, _channel, _emit_json, _json_option, _run, pass_app
from securechan.errors import UsageError
from securechan.terminal_text import inline


@click.command()
@click.argument("code", required=False)
@click.option("--relay", "relay_url", help="The relay's URL (default: your first relay).")
@click.option(
    "--code-words",
    "words",
    type=int,
    default=5,
    show_default=True,
    help="Words in a new code, 8 bits each (2 to 16; 5 is 40 bits).",
)
@click.option("--name", help="Pin the contact under this name (default: its own).")
@_json_option
@pass_app
def pair(
    app: _App,
    code: str | None,
    relay_url: str | None,
    words: int,
    name: str | None,
    as_json: bool,
) -> None:
    """Exchange and verify contacts by reading a one-time code aloud.

    Without CODE: print a new code (a number and words, like
    7-istanbul-revenge-...) and wait up to 5 minutes for the other side.
    With CODE: join that pairing. Both sides end with the other's contact
    card pinned and verified "by code", or, on any failure (a wrong code,
    a tampered exchange), with nothing pinned. A code works once."""
    if code is not None and words != 5:
        raise UsageError("--code-words goes with making a code, not with joining one")
    if not 2 <= words <= 16:
        raise UsageError("--code-words is 2 to 16")

    def show(text: str) -> None:
        # The code goes to stderr (for the person, with the instruction),
        # and is the first stdout line too, so a script can read it.
        click.echo(f"Pairing code: {text}", err=True)
        click.echo("Read it to the other side; they run: securechan pair CODE", err=True)
        if not as_json:
            click.echo(text)  # click.echo flushes: the waiting script sees it now

    async def go() -> Any:
        async with _channel(app) as ch:
            contact = await ch.pair(relay_url, code=code, words=words, name=name, on_code=show)
            from securechan.client.results import ContactInfo
            from securechan.identity.safety import safety_number

            sn = safety_number(ch.identity.public, contact.identity)
            return ContactInfo.of(contact, sn).to_json()

    from securechan.cli.agent import call_running_agent

    def notified(method: str, params: dict[str, Any]) -> None:
        if method == "pairingCode":
            show(str(params.get("code")))

    # Through the agent when one runs (docs/AGENT.md): it pins the contact.
    asked = {"relay": relay_url, "code": code, "words": None if code else words, "name": name}
    info = call_running_agent(app, "pair", asked, notified)
    if info is None:
        info = _run(go())
    if as_json:
        _emit_json(info)
        return
    shown = inline(info["name"])
    click.echo(f"Paired with {shown}: {info['fingerprint']}")
    click.echo(f"{shown} is pinned and verified by code.")
    click.echo(
        "For a check a future quantum computer cannot undo, compare safety numbers:"
        f" securechan contact show {shown}"
    )
