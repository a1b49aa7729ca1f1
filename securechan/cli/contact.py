"""``securechan contact``: pin, verify and list contacts."""

from __future__ import annotations

from typing import Any

import click

import securechan
from securechan.cli.completion import complete_contact
from securechan.cli.core import (
    _App,
    _channel,
    _emit_json,
    _emit_json_lines,
    _Group,
    _iso,
    _json_option,
    _read_text,
    _run,
    pass_app,
)
from securechan.errors import (
    MalformedInput,
)
from securechan.terminal_text import inline


def _contact_json(
    c: securechan.Contact, sn: securechan.SafetyNumber | None = None
) -> dict[str, Any]:
    from securechan.client.results import ContactInfo

    return ContactInfo.of(c, sn).to_json()


@click.group(cls=_Group)
def contact() -> None:
    """Pin, verify and list contacts (like SSH's known_hosts)."""


@contact.command(name="add")
@click.argument("file", type=click.File("rb"))
@click.option("--name", help="Pin under this name (default: the name in the file).")
@click.option("--replace", is_flag=True, help="Accept a changed key for a known name.")
@_json_option
@pass_app
def contact_add(app: _App, file: Any, name: str | None, replace: bool, as_json: bool) -> None:
    """Pin the public identity in FILE ('-' for stdin).

    If FILE also holds a contact card (from 'id export' after 'register'),
    its relay addresses are kept so you can send to this contact."""
    from securechan.protocol.address import ContactCard

    text = _read_text(file, "the identity file")
    ident = securechan.PublicIdentity.from_text(text)
    card: bytes | None = None
    if "-----BEGIN SECURECHAN CONTACT CARD-----" in text:
        parsed = ContactCard.from_text(text)
        if not parsed.identity.same_key(ident):
            raise MalformedInput("the contact card belongs to another identity than the file")
        card = parsed.to_bytes()
    c = app.keystore.contacts.add(ident, name=name, replace_key=replace, card=card)
    if as_json:
        _emit_json(_contact_json(c))
        return
    shown = inline(c.name)
    click.echo(f"Pinned {shown}: {c.fingerprint}")
    if c.verified:  # the same key again: add changes nothing, verification kept
        click.echo(f"Already verified ({_iso(c.verified_at)}).")
        return
    click.echo(f"Not verified yet: compare safety numbers with 'securechan contact show {shown}'.")


@contact.command(name="list")
@_json_option
@pass_app
def contact_list(app: _App, as_json: bool) -> None:
    """List pinned contacts."""
    contacts = app.keystore.contacts.list()
    if as_json:
        _emit_json_lines(_contact_json(c) for c in contacts)
        return
    for c in contacts:
        mark = "verified  " if c.verified else "UNVERIFIED"
        click.echo(f"{inline(c.name):<20} {mark} {c.fingerprint}")


@contact.command(name="show")
@click.argument("name", shell_complete=complete_contact)
@_json_option
@pass_app
def contact_show(app: _App, name: str, as_json: bool) -> None:
    """Show a contact's fingerprint and your safety number with it."""
    store = app.keystore
    own = store.public_identity()
    c = store.contacts.get(name)
    sn = securechan.safety_number(own, c.identity)
    if as_json:
        _emit_json(_contact_json(c, sn))
        return
    click.echo(f"Name:          {inline(c.name)}")
    click.echo(f"Fingerprint:   {c.fingerprint}")
    how = " (by code)" if c.verified and c.verified_by == "code" else ""
    click.echo(f"Verified:      {'yes, ' + str(_iso(c.verified_at)) + how if c.verified else 'NO'}")
    click.echo(f"Safety number: {sn}")
    click.echo(f"Spoken form:   {sn.words_text}")


@contact.command(name="verify")
@click.argument("name", shell_complete=complete_contact)
@click.argument("safety_number", nargs=-1, required=True)
@_json_option
@pass_app
def contact_verify(app: _App, name: str, safety_number: tuple[str, ...], as_json: bool) -> None:
    """Mark NAME verified if SAFETY-NUMBER (digits or words) matches."""
    store = app.keystore
    c = store.contacts.verify(name, " ".join(safety_number), store.public_identity())
    if as_json:
        _emit_json(_contact_json(c))
        return
    click.echo(f"{inline(c.name)} is verified.")


@contact.command(name="rekey")
@click.argument("name", shell_complete=complete_contact)
@pass_app
def contact_rekey(app: _App, name: str) -> None:
    """Start a new session with NAME at the next send.

    For a conversation whose state was restored from an older copy (send
    refuses it, exit 5): its sessions are never sent on again, and the next
    'send' makes a new handshake with fresh keys. Messages NAME sent on the
    old session still arrive."""

    async def go() -> int:
        async with _channel(app) as ch:
            count: int = ch.rekey(name)
            return count

    from securechan.cli.agent import call_running_agent

    answer = call_running_agent(app, "contactRekey", {"contact": name})
    count = int(answer["retired"]) if answer is not None else _run(go())
    click.echo(
        f"Retired {count} session(s) with {inline(name)}; the next send starts a new one.",
        err=True,
    )


@contact.command(name="remove")
@click.argument("name", shell_complete=complete_contact)
@pass_app
def contact_remove(app: _App, name: str) -> None:
    """Unpin a contact."""
    c = app.keystore.contacts.remove(name)
    click.echo(f"Removed {inline(c.name)} ({c.fingerprint}).", err=True)
