"""``securechan group``: create, change, leave, list and show groups (docs/CLI.md, Groups).

The work is the client's (:class:`~securechan.client.channel.Channel`'s
``group_*`` methods, GROUPS-SPEC §3); this module parses, warns and prints.
``send --group`` and ``history --group`` are in :mod:`securechan.cli.messaging`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from securechan.cli import render
from securechan.cli.completion import complete_contact, complete_contact_or_self, complete_group
from securechan.cli.core import (
    _App,
    _channel,
    _emit_json,
    _emit_json_lines,
    _Group,
    _json_option,
    _run,
    pass_app,
)
from securechan.cli.group_record import group_export, group_statement
from securechan.cli.text_input import read_text
from securechan.errors import RelayError, UsageError
from securechan.terminal_text import inline

__all__ = ["group", "group_history", "send_group"]


@click.group(cls=_Group)
def group() -> None:
    """Talk in groups of up to 20 members with one common transcript.

    Every change of the member list is signed by an admin and ordered in
    the relay's log with the messages; every member can show what it saw
    (the transcript head in 'group show' is equal for members who agree)."""


def _echo(lines: list[tuple[str, bool]]) -> None:
    for line, to_stderr in lines:
        click.echo(line, err=to_stderr)


def _warn_unverified(app: _App, names: Sequence[str]) -> None:
    """Each named contact must be pinned (exit 2 before the passphrase is
    asked for); a contact whose safety number was not compared is warned
    about, as ``send`` does."""
    contacts = app.keystore.contacts
    for name in names:
        if not contacts.get(name).verified:
            shown = inline(name)
            click.echo(
                f"securechan: warning: {shown} is not verified; compare safety numbers "
                f"('securechan contact show {shown}')",
                err=True,
            )


def _check_names(names: Sequence[str], what: str) -> None:
    if not names:
        raise UsageError(f"name at least one {what}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{inline(name)} is named twice")
        seen.add(name)


def _done(info: Any, as_json: bool, text: str) -> None:
    if as_json:
        _emit_json(info.to_json())
        return
    click.echo(text, err=True)
    _echo(render.group_info(info.to_json()))


@group.command()
@click.argument("name", metavar="NAME")
@click.option(
    "--member",
    "members",
    metavar="CONTACT",
    multiple=True,
    required=True,
    shell_complete=complete_contact,
    help="A pinned contact to take into the group (repeatable; you are in it as its admin).",
)
@click.option(
    "--admin",
    "admins",
    metavar="CONTACT",
    multiple=True,
    shell_complete=complete_contact,
    help="A pinned contact who is a member and an admin from the start (repeatable).",
)
@_json_option
@pass_app
def create(
    app: _App, name: str, members: tuple[str, ...], admins: tuple[str, ...], as_json: bool
) -> None:
    """Create the group NAME with you as its admin and each --member CONTACT.

    Each --admin CONTACT is a member too, and an admin as you are (e.g. the
    mediator and each delegation's head). The creation is posted to the
    relay's group stream and each member gets it through its pairwise
    session; NAME is local (each member sees the name you give it)."""
    _check_names(members, "--member CONTACT")
    if admins:
        _check_names(admins, "--admin CONTACT")
    _warn_unverified(app, tuple(dict.fromkeys((*members, *admins))))

    async def go() -> Any:
        async with _channel(app) as ch:
            return await ch.group_create(name, list(members), admins=list(admins))

    info = _run(go())
    _done(info, as_json, f"Created group {inline(info.name)} with {len(info.members)} members")


@group.command()
@click.argument("name", metavar="NAME", shell_complete=complete_group)
@click.argument("contacts", metavar="CONTACT...", nargs=-1, shell_complete=complete_contact)
@_json_option
@pass_app
def add(app: _App, name: str, contacts: tuple[str, ...], as_json: bool) -> None:
    """Add each CONTACT to the group NAME (admins only).

    The new members get the group's state from now on: never a message of
    an earlier epoch."""
    _check_names(contacts, "CONTACT to add")
    _warn_unverified(app, contacts)

    async def go() -> Any:
        async with _channel(app) as ch:
            return await ch.group_add(name, list(contacts))

    info = _run(go())
    _done(info, as_json, f"Added {len(contacts)} member(s) to {inline(info.name)}")


@group.command()
@click.argument("name", metavar="NAME", shell_complete=complete_group)
@click.argument("contacts", metavar="CONTACT...", nargs=-1, shell_complete=complete_contact)
@_json_option
@pass_app
def remove(app: _App, name: str, contacts: tuple[str, ...], as_json: bool) -> None:
    """Remove each CONTACT from the group NAME (admins only).

    No later message of the group is encrypted to them, and a record they
    post afterwards is refused by every member."""
    _check_names(contacts, "CONTACT to remove")

    async def go() -> Any:
        async with _channel(app) as ch:
            return await ch.group_remove(name, list(contacts))

    info = _run(go())
    _done(info, as_json, f"Removed {len(contacts)} member(s) from {inline(info.name)}")


@group.command()
@click.argument("name", metavar="NAME", shell_complete=complete_group)
@click.argument("contacts", metavar="CONTACT...", nargs=-1, shell_complete=complete_contact_or_self)
@click.option("--revoke", is_flag=True, help="Make them plain members again instead of admins.")
@_json_option
@pass_app
def admin(app: _App, name: str, contacts: tuple[str, ...], revoke: bool, as_json: bool) -> None:
    """Make each CONTACT (a member) an admin of the group NAME (admins only).

    An admin may add and remove members, grant and revoke admin and rekey
    the group; with --revoke they are plain members again (your own name
    steps you down). The group keeps at least one admin."""
    _check_names(contacts, "CONTACT")

    async def go() -> Any:
        async with _channel(app) as ch:
            return await ch.group_admin(name, list(contacts), grant=not revoke)

    info = _run(go())
    done = "no longer admin" if revoke else "made admin"
    _done(info, as_json, f"{len(contacts)} member(s) of {inline(info.name)} {done}")


@group.command()
@click.argument("name", metavar="NAME", shell_complete=complete_group)
@_json_option
@pass_app
def leave(app: _App, name: str, as_json: bool) -> None:
    """Leave the group NAME.

    Any member may leave (the last admin may not: make another member an
    admin first, 'securechan group admin NAME CONTACT'). The transcript up
    to your leaving stays readable here."""

    async def go() -> Any:
        async with _channel(app) as ch:
            return await ch.group_leave(name)

    info = _run(go())
    _done(info, as_json, f"Left group {inline(info.name)}")


@group.command()
@click.argument("name", metavar="NAME", shell_complete=complete_group)
@_json_option
@pass_app
def rekey(app: _App, name: str, as_json: bool) -> None:
    """Give the group NAME a fresh epoch secret (admins only).

    The members stay the same. Done by itself, by the first admin whose
    client reads it, after a member leaves: the leaver knows the secret of
    the epoch its leave opens, so no message goes there until a rekey."""

    async def go() -> Any:
        async with _channel(app) as ch:
            return await ch.group_rekey(name)

    info = _run(go())
    _done(info, as_json, f"Rekeyed group {inline(info.name)} (epoch {info.epoch})")


@group.command(name="list")
@_json_option
@pass_app
def list_groups(app: _App, as_json: bool) -> None:
    """List your groups: name, members, epoch, records, transcript head."""

    async def go() -> Any:
        async with _channel(app) as ch:
            return ch.groups()

    infos = _run(go())
    if as_json:
        _emit_json_lines(info.to_json() for info in infos)
        return
    if not infos:
        click.echo("No groups yet ('securechan group create NAME --member CONTACT').", err=True)
        return
    for info in infos:
        _echo(render.group_row(info.to_json()))


@group.command()
@click.argument("name", metavar="NAME", shell_complete=complete_group)
@_json_option
@pass_app
def show(app: _App, name: str, as_json: bool) -> None:
    """Show the group NAME: members (verified or not, admin or not), the
    policy, the epoch and the transcript head.

    Members who saw the same transcript show the same head: compare it
    (read it aloud, as a safety number) to check that nobody was shown
    another one."""

    async def go() -> Any:
        async with _channel(app) as ch:
            return ch.group_show(name)

    info = _run(go())
    if as_json:
        _emit_json(info.to_json())
        return
    _echo(render.group_info(info.to_json()))


# --- send --group, history --group (the commands are in cli/messaging.py) ------


def send_group(
    app: _App, group_name: str, message: str | None, file_path: Path | None, as_json: bool
) -> None:
    """``send --group NAME (MESSAGE | --file F)``: one GroupSent; exit 3 when
    the content still waits in the outbox for some members (the record is
    in the transcript: the next send, receive or status posts the rest)."""
    if (message is None) == (file_path is None):
        raise UsageError("give a MESSAGE ('-' reads stdin) or --file F")
    if message == "-":
        message = read_text(sys.stdin.buffer, "standard input")
    if message is not None:
        from securechan.client.group_parts import check_group_text

        check_group_text(message)  # refused in one line before the passphrase

    async def go() -> Any:
        async with _channel(app) as ch:
            if file_path is not None:
                return await ch.send_group(group_name, path=str(file_path))
            return await ch.send_group(group_name, text=message)

    result = _run(go())
    data = result.to_json()
    if as_json:
        _emit_json(data)
    if data["pending"]:
        waiting = ", ".join(str(p) for p in data["pending"])
        raise RelayError(
            f"group message #{data['seq']} to {data['group']} is in the transcript, but its "
            f"content still waits in the outbox for {waiting}; the next send, receive or "
            "status posts it, 'securechan outbox' lists it"
        )
    if not as_json:
        _echo(render.group_sent(data))


def group_history(
    app: _App, group_name: str, limit: int | None, before: str | None, as_json: bool
) -> None:
    """``history --group NAME``: GroupEntry rows, oldest first; with
    --limit one more is asked for, to know whether older ones exist."""

    async def go() -> Any:
        async with _channel(app) as ch:
            return ch.group_history(
                group_name, limit=None if limit is None else limit + 1, before=before
            )

    rows = list(_run(go()))
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[-(limit or 0) :]
        click.echo(
            f"securechan: note: showing the newest {len(rows)}; older records: "
            f"'securechan history --group {inline(group_name)} --before {rows[0].id[:16]}'",
            err=True,
        )
    if as_json:
        _emit_json_lines(row.to_json() for row in rows)
        return
    for row in rows:
        _echo(render.group_history_row(row.to_json()))


# The group's record (docs/AUDIT.md, "Group transcripts").
group.add_command(group_export)
group.add_command(group_statement)
