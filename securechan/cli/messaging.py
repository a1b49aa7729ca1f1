"""``register``, ``send``, ``receive``, ``history``, ``status``: talking through relays."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from securechan.cli import render
from securechan.cli.completion import complete_contact, complete_group
from securechan.cli.core import (
    _PROGRESS_MIN,
    CARD_FILE,
    EXIT_NETWORK,
    EXIT_ROLLBACK,
    EXIT_VERIFY,
    RELAY_URL,
    _App,
    _channel,
    _columns,
    _emit_json,
    _emit_json_lines,
    _json_option,
    _read_text,
    _run,
    pass_app,
)
from securechan.errors import Reason, RelayError, UsageError
from securechan.terminal_text import inline

if TYPE_CHECKING:
    from securechan.client.channel import UnknownPolicy


@click.command()
@click.option(
    "--relay",
    "relays",
    type=RELAY_URL,
    multiple=True,
    required=True,
    help="Relay URL (repeatable).",
)
@click.option(
    "--relay-fingerprint",
    "fingerprint",
    metavar="HEX",
    help="The fingerprint the relay's operator published ('relay fingerprint:' at start); "
    "refuse the relay if its key differs. Only with one --relay.",
)
@_json_option
@pass_app
def register(app: _App, relays: tuple[str, ...], fingerprint: str | None, as_json: bool) -> None:
    """Create your contact address at each relay and publish prekeys.

    The relay's key is pinned on first use; give --relay-fingerprint to check
    it against the one its operator published instead of trusting the first
    answer."""
    from securechan.identity._files import atomic_write

    if fingerprint is not None and len(relays) != 1:
        raise UsageError("--relay-fingerprint goes with exactly one --relay")
    wanted = fingerprint.strip().lower().replace(" ", "") if fingerprint else None
    if wanted is not None and (
        len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted)
    ):
        raise UsageError("a relay fingerprint is 64 hex digits")

    async def go() -> Any:
        async with _channel(app) as ch:
            card = None
            for url in relays:
                pin = bytes.fromhex(wanted) if wanted is not None else None
                card = await ch.register(url, pin_fingerprint=pin)
            if card is None:  # pragma: no cover - --relay is required
                raise UsageError("give at least one --relay")
            return card.to_text(), ch.relay_fingerprints()

    from securechan.cli.agent import call_running_agent

    # Through the agent when one runs (docs/AGENT.md, register): it then
    # listens on the new queues.
    done = call_running_agent(app, "register", {"relays": list(relays), "fingerprint": wanted})
    if done is not None:
        card_text, keys = str(done["card"]), dict(done["relay_fingerprints"])
    else:
        card_text, keys = _run(go())
    from securechan.protocol.address import ContactCard

    card = ContactCard.from_text(card_text)
    atomic_write(app.home / CARD_FILE, card_text.encode("ascii"), replace=True)
    if as_json:
        from securechan.cli.results import Registered

        registered = Registered(
            relays=tuple(a.relay for a in card.addresses),
            relay_fingerprints={a.relay: keys.get(a.relay) for a in card.addresses},
        )
        _emit_json(registered.to_json())
        return
    for a in card.addresses:
        click.echo(f"Registered at {inline(a.relay)} (relay fingerprint {keys.get(a.relay)})")
    click.echo("Your contact file now includes these addresses: 'securechan id export'.")


@click.command()
@click.argument("contact_name", metavar="CONTACT", required=False, shell_complete=complete_contact)
@click.argument("message", required=False)
@click.option(
    "--file",
    "file_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Send a file instead of a text.",
)
@click.option(
    "--group",
    "group_name",
    metavar="NAME",
    default=None,
    shell_complete=complete_group,
    help="Send to every member of the group NAME instead of to a CONTACT "
    "(then no CONTACT: 'send --group NAME MESSAGE').",
)
@_json_option
@pass_app
def send(
    app: _App,
    contact_name: str | None,
    message: str | None,
    file_path: Path | None,
    group_name: str | None,
    as_json: bool,
) -> None:
    """Send MESSAGE (or '-' for stdin, or --file F) to CONTACT or --group NAME.

    With --group the message is signed once, placed in the group's
    transcript at the relay, then sent to each member through its own
    session (docs/CLI.md, Groups)."""
    if group_name is not None:
        if message is not None:
            raise UsageError("with --group NAME give no CONTACT: 'send --group NAME MESSAGE'")
        from securechan.cli.group import send_group

        send_group(app, group_name, contact_name, file_path, as_json)
        return
    if contact_name is None:
        raise UsageError("Missing argument 'CONTACT' (or --group NAME)")
    if (message is None) == (file_path is None):
        raise UsageError("give a MESSAGE ('-' reads stdin) or --file F")
    if message == "-":
        message = _read_text(sys.stdin.buffer, "standard input")
    if message is not None:
        _check_text_size(message)  # before anything else is printed or asked
    contact = app.keystore.contacts.get(contact_name)
    if not contact.verified:
        shown = inline(contact_name)
        click.echo(
            f"securechan: warning: {shown} is not verified; compare safety numbers "
            f"('securechan contact show {shown}')",
            err=True,
        )

    async def go() -> Any:
        import asyncio

        async with _channel(app) as ch:
            try:
                if file_path is not None:
                    data = file_path.read_bytes()
                    if len(data) < _PROGRESS_MIN or not sys.stderr.isatty() or as_json:
                        return await ch.send_file(contact_name, file_path.name, data), None
                    bar = _Progress(f"Sending {file_path.name}", len(data))
                    try:
                        return await ch.send_file(
                            contact_name,
                            file_path.name,
                            data,
                            progress=lambda done, total: bar.show(len(data) * done // total),
                        ), None
                    finally:
                        bar.close()
                return await ch.send_text(contact_name, message or ""), None
            except asyncio.CancelledError:
                # Ctrl-C: the channel withdrew what was not posted yet.
                return None, ch.last_cancelled

    result, cancelled = _run(go())
    if result is None:
        _interrupted(cancelled)
    seqs = render.seq_range(list(result.seqs))
    if as_json:
        _emit_json(result.to_json())
    if result.pending:
        # One line, exit 3: the message is safe in the outbox.
        head = (
            f"no relay accepted message {seqs} to {result.contact} yet"
            if not result.delivered
            else f"message {seqs} to {result.contact} was posted in part ({result.delivered} taken)"
        )
        raise RelayError(
            f"{head}: {result.pending} envelope(s) still queued; the next send, receive or "
            "status posts them, 'securechan outbox' lists them"
        )
    if not as_json:
        _echo(render.sent(result.to_json()))


def _check_text_size(message: str) -> None:
    """A text the protocol refuses (over ``MAX_TEXT_BYTES`` once in NFC, or
    with a NUL): refused in one line before the passphrase is asked for,
    by the library's own check (docs/CLI.md gives the limit)."""
    from securechan.protocol.payload import message_text

    message_text(message)


def _interrupted(cancelled: Any) -> None:
    """Ctrl-C during a send: one line on what became of the message, exit 130."""
    if cancelled is None:
        text = "interrupted: nothing was queued for sending"
    elif cancelled.posted == 0 and not cancelled.in_flight:
        text = (
            f"interrupted: message to {cancelled.contact} cancelled, none of its "
            f"{cancelled.parts} part(s) was posted: all were withdrawn"
        )
    else:
        maybe = " (one more may have reached it)" if cancelled.in_flight else ""
        text = (
            f"interrupted: message to {cancelled.contact} cancelled; the relay already has "
            f"{cancelled.posted} of its {cancelled.parts} part(s){maybe}, the other "
            f"{cancelled.withdrawn} were withdrawn"
            + (
                " (a file stays incomplete: the contact never sees it)"
                if cancelled.kind == "file"
                else ""
            )
        )
    click.echo(f"securechan: {inline(text, width=_columns(err=True), indent=12)}", err=True)
    sys.exit(130)


class _Progress:
    """Bytes, rate and ETA of a transfer on stderr (a terminal only)."""

    def __init__(self, label: str, total: int) -> None:
        self.label = inline(label)
        self.total = total
        self.start = time.monotonic()
        self.first: int | None = None
        self.shown = False

    def show(self, done: int) -> None:
        if self.first is None:
            self.first = done
        elapsed = time.monotonic() - self.start
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        left = "--:--" if eta is None else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
        line = (
            f"{self.label}: {_mb(done)} of {_mb(self.total)} MB, {_mb(int(rate))} MB/s, ETA {left}"
        )
        click.echo("\r" + line + "\x1b[K", nl=False, err=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            click.echo("", err=True)
            self.shown = False


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f}"


def _save_download(folder: Path, name: str, data: bytes) -> Path:
    from securechan.client.downloads import save_download

    return save_download(folder, name, data)


def _echo(lines: list[tuple[str, bool]]) -> None:
    for line, to_stderr in lines:
        click.echo(line, err=to_stderr)


def _show_group(item: Any, as_json: bool, saved: str | None) -> None:
    """A group record this receive applied (GroupEntry): ``[group NAME]
    sender: text``, or a loud line for an equivocation, a fork or withheld
    records. ``saved``: where the file this record completed was saved."""
    if as_json:
        _emit_json(item.to_json())
        if saved is not None:
            click.echo(f"securechan: note: group file saved as {inline(saved)}", err=True)
    else:
        _echo(render.group_entry(item.to_json(), saved=saved))


def _show(item: Any, as_json: bool, download: Path, saved: str | None = None) -> None:
    from securechan.client.group_results import GroupEntry
    from securechan.client.results import Rejected

    if isinstance(item, GroupEntry):
        _show_group(item, as_json, saved)
        return
    if isinstance(item, Rejected):
        data = item.to_json()
    else:
        path = None
        if item.file_data is not None:
            path = _save_download(download, item.file_name or "file", item.file_data)
        data = item.to_json(file=str(path) if path else None)
    if as_json:
        _emit_json(data)
    else:
        _echo(render.received(data))


def _show_relay_failure(item: Any, as_json: bool) -> None:
    """A relay that could not be used: not an envelope's fault, so one line
    naming the relay (the error says which and why), not 'refused an
    envelope'; in JSON, the item (its ``relay`` field names it)."""
    if as_json:
        _emit_json(item.to_json())
        return
    _echo(render.received(item.to_json()))


@click.command()
@click.option("--follow", is_flag=True, help="Keep receiving (Ctrl-C to stop).")
@click.option(
    "--download",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for received files.",
)
@click.option(
    "--unknown",
    type=click.Choice(["refuse", "hold"]),
    default="refuse",
    show_default=True,
    help="First messages from identities you have not pinned.",
)
@click.option("--timeout", type=float, default=None, help="With --follow: stop after N seconds.")
@_json_option
@pass_app
def receive(
    app: _App,
    follow: bool,
    download: Path,
    unknown: UnknownPolicy,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Fetch, verify, store and print new messages.

    Group messages show as '[group NAME] sender: text'. Exit 1 at the end
    if a relay was caught showing two histories (a split view, of the log
    or of a group's transcript) or a group member equivocated or records
    were withheld, else 5 if a contact sent a second, different message at
    a place already used (its state was rolled back): every message is
    still stored and shown first."""
    import asyncio

    from securechan.cli.agent import running_agent_client

    if unknown == "hold":
        from securechan.cli.agent import agent_policy

        if agent_policy(app) == "refuse":
            # The agent's background passes refuse, as they arrive, first
            # messages from senders not pinned: nothing would be left to hold.
            # Started with `--unknown hold`, they hold them (served below).
            raise UsageError(
                "--unknown hold is not served by this agent: it refuses first messages "
                "from senders you have not pinned as they arrive; restart it with "
                "'securechan agent stop' and 'securechan agent start --unknown hold'"
            )
    agent_client = running_agent_client(app)
    if agent_client is not None:  # the agent receives (docs/AGENT.md)
        from securechan.cli.agent_receive import receive_through_agent

        with agent_client:
            code = receive_through_agent(
                app, agent_client, download, follow=follow, timeout=timeout, as_json=as_json
            )
        if code:
            sys.exit(code)
        return

    split: list[str] = []
    rolled_back: list[str] = []
    bars: dict[str, _Progress] = {}

    def progress(name: str, held: int, size: int) -> None:
        # Large incoming files, on a terminal, without --json.
        if as_json or size < _PROGRESS_MIN or not sys.stderr.isatty():
            return
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = _Progress(f"Receiving {name}", size)
        bar.show(held)
        if held >= size:
            bar.close()
            del bars[name]

    relays_down: set[str] = set()  # each relay that failed, reported once
    from securechan.client.downloads import GroupFileSaver

    group_files = GroupFileSaver(download)

    def show(item: Any, ch: Any) -> None:
        for bar in bars.values():
            bar.close()
        relay = getattr(item, "relay", None)
        if relay is not None:
            if relay not in relays_down:
                relays_down.add(relay)
                _show_relay_failure(item, as_json)
            return
        _show(item, as_json, download, group_files.save(ch, item))
        if getattr(item, "status", None) in render.GROUP_ALARMS:
            split.append(item.summary)
        if getattr(item, "reason", None) == Reason.SPLIT_VIEW:
            split.append(item.error)
        if getattr(item, "reason", None) == Reason.PEER_ROLLED_BACK:
            rolled_back.append(item.error)

    async def go() -> None:
        async with _channel(app, unknown=unknown) as ch:
            # The channel hands over first what an agent received and no
            # `receive` showed (it stopped or crashed since), and moves the
            # shown cursor (client/unshown.py): each message is shown once.
            if not follow:
                items = await ch.receive(progress=progress)
                for bar in bars.values():
                    bar.close()
                for item in items:
                    show(item, ch)
                for url in ch.left_waiting:
                    click.echo(
                        f"securechan: note: more messages wait at {inline(url)}: "
                        "run 'securechan receive' again",
                        err=True,
                    )
                return
            stop = asyncio.Event()
            if timeout is not None:
                asyncio.get_running_loop().call_later(timeout, stop.set)
            async for item in ch.follow(stop=stop, progress=progress):
                show(item, ch)

    _run(go())
    if split:
        sys.exit(EXIT_VERIFY)
    if rolled_back:
        sys.exit(EXIT_ROLLBACK)
    if relays_down:
        sys.exit(EXIT_NETWORK)


@click.command()
@click.argument("contact_name", metavar="CONTACT", required=False, shell_complete=complete_contact)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Only the newest N messages (default: every message).",
)
@click.option(
    "--before",
    metavar="ID",
    default=None,
    help="Only messages stored before the message ID (the next page back).",
)
@click.option(
    "--group",
    "group_name",
    metavar="NAME",
    default=None,
    shell_complete=complete_group,
    help="The transcript of the group NAME (in the relay's order) instead of a conversation.",
)
@_json_option
@pass_app
def history(
    app: _App,
    contact_name: str | None,
    limit: int | None,
    before: str | None,
    group_name: str | None,
    as_json: bool,
) -> None:
    """Show the stored conversation (with CONTACT, or all).

    Every stored message, oldest first, unless --limit N: then the newest N,
    and a note on stderr names the --before ID that shows the page before.
    With --group NAME: the group's transcript, every record in the order
    the relay's log gave it (the same order for every member)."""
    if group_name is not None:
        if contact_name is not None:
            raise UsageError("give a CONTACT or --group NAME, not both")
        from securechan.cli.group import group_history

        group_history(app, group_name, limit, before, as_json)
        return

    async def go() -> Any:
        async with _channel(app) as ch:
            return ch.history_page(contact_name, limit=limit, before=before)

    from securechan.client.results import HistoryEntry

    page, more = _run(go())
    rows = [HistoryEntry(*row) for row in page]
    if more and rows:
        click.echo(
            f"securechan: note: showing the newest {len(rows)}; older messages: "
            f"'securechan history --before {rows[0].id[:16]}'",
            err=True,
        )
    if as_json:
        _emit_json_lines(row.to_json() for row in rows)
        return
    for row in rows:
        _echo(render.history_row(row.to_json()))


@click.command()
@_json_option
@pass_app
def status(app: _App, as_json: bool) -> None:
    """Relays, queues, sessions and envelopes waiting to be sent."""

    failures: dict[str, str] = {}

    async def go() -> Any:
        async with _channel(app) as ch:
            await ch.flush_outbox()
            # Ask every relay this home uses whether it answers (exit 3 if not).
            failures.update(await ch.unreachable_relays())
            return {**ch.status(), "unreachable": sorted(failures)}

    from securechan.client.results import Status

    info = Status.from_mapping(_run(go())).to_json()
    if as_json:
        _emit_json(info)
    else:
        _echo(render.status(info))
    for error in failures.values():
        click.echo(f"securechan: {inline(error, width=_columns(err=True), indent=12)}", err=True)
    if failures:
        sys.exit(EXIT_NETWORK)
