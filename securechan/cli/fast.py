"""The command line's fast path: a few commands sent to a running agent.

``securechan send``, ``receive``, ``history`` and ``status`` (with the
options listed in :func:`parse`) are served here without click,
without the client and without the cryptography: the process parses its
arguments, calls the agent over its socket (:mod:`securechan.client.agent_client`),
and prints what the agent answered with the same renderer the in-process
commands use (:mod:`securechan.cli.render`), so the output and the exit
codes are the same either way (docs/AGENT.md, The thin command line).

:func:`through_agent` returns ``None`` when it does not serve the command:
no agent runs for the home, an option it does not know (``--help``,
``receive --follow``...), or another command. ``main`` then runs the whole
command line in-process, which refuses at once if an agent holds the home.

A locked agent is unlocked here: the passphrase from ``--passphrase-file``,
``$SECURECHAN_PASSPHRASE`` or the terminal (three tries), as the in-process
commands ask for it.
"""

from __future__ import annotations

import os
import sys

from securechan.cli import render
from securechan.terminal_text import inline

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from securechan.client.agent_socket import AgentAnswer, AgentConnection

__all__ = ["Parsed", "parse", "through_agent"]

# The exit codes of docs/CLI.md this path can end with (cli/core.py's
# _exit_code maps the error tree to the same numbers): importing the error
# classes costs this process more than the rest of its imports together.
_EXIT_VERIFY, _EXIT_USAGE, _EXIT_NETWORK, _EXIT_ROLLBACK = 1, 2, 3, 5
_TRIES = 3
_MAX_PASSPHRASE = 4096
# JSON-RPC error codes of the agent (docs/AGENT.md, Errors).
_SECURECHAN_ERROR, _LOCKED = -32000, -32001


class _Failure(Exception):
    """A failure this path reports as the whole command line would: one line
    on stderr (``securechan: message``) and the exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _failure(answer: AgentAnswer) -> _Failure:
    """The agent's error answer as the command line reports it (what
    agent_client.raise_for raises, and cli/core.py's exit code for it)."""
    if answer.code == _LOCKED:
        return _Failure(answer.message, _EXIT_USAGE)  # agent-locked
    reason, given = answer.data.get("reason"), answer.data.get("exit")
    if answer.code != _SECURECHAN_ERROR or not isinstance(reason, str):
        return _Failure(
            f"the agent answered an error: {answer.message} ({answer.code})", _EXIT_NETWORK
        )
    if isinstance(given, int) and not isinstance(given, bool):
        return _Failure(answer.message, given)  # the exit code the agent computed
    if reason == "bad-passphrase":
        return _Failure(answer.message, _EXIT_VERIFY)
    if reason == "agent-unavailable":
        return _Failure(answer.message, _EXIT_NETWORK)
    return _Failure(answer.message, _EXIT_USAGE)


class Parsed:
    """A command line the fast path serves (a plain class: dataclasses cost
    start-up time here)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.home: str | None = None
        self.passphrase_file: str | None = None
        self.args: list[str] = []
        self.as_json = False
        self.file: str | None = None
        self.download: str | None = None
        self.limit: str | None = None
        self.before: str | None = None
        self.group: str | None = None  # send --group, history --group
        self.members: list[str] = []  # group create --member (repeatable)
        self.admins: list[str] = []  # group create --admin (repeatable)
        self.revoke = False  # group admin --revoke


_GLOBAL = {"--home": "home", "--passphrase-file": "passphrase_file"}
# command -> (options taking a value, flags, how many positional arguments)
_COMMANDS: dict[str, tuple[dict[str, str], set[str], tuple[int, int]]] = {
    "send": ({"--file": "file", "--group": "group"}, {"--json"}, (0, 2)),
    "receive": ({"--download": "download"}, {"--json"}, (0, 0)),
    "history": (
        {"--limit": "limit", "--before": "before", "--group": "group"},
        {"--json"},
        (0, 1),
    ),
    "status": ({}, {"--json"}, (0, 0)),
    # group create|add|remove|leave|list|show: securechan/cli/fast_group.py
    "group": ({"--member": "members", "--admin": "admins"}, {"--json", "--revoke"}, (1, 65)),
}


def _option(arg: str, names: dict[str, str], rest: list[str]) -> tuple[str, str] | None:
    """``--name value`` or ``--name=value`` for one of ``names``; None if not one."""
    name, eq, value = arg.partition("=")
    if name not in names:
        return None
    if not eq:
        if not rest:
            return None
        value = rest.pop(0)
    return names[name], value


def parse(argv: list[str]) -> Parsed | None:
    """The fast path's reading of ``argv``, or None when it is not one it serves."""
    rest = list(argv)
    found: dict[str, str] = {}
    while rest and rest[0].startswith("-"):
        got = _option(rest.pop(0), _GLOBAL, rest)
        if got is None:
            return None
        found[got[0]] = got[1]
    if not rest or rest[0] not in _COMMANDS:
        return None
    parsed = Parsed(command=rest.pop(0))
    parsed.home = found.get("home")
    parsed.passphrase_file = found.get("passphrase_file")
    options, flags, (low, high) = _COMMANDS[parsed.command]
    while rest:
        arg = rest.pop(0)
        if arg == "--revoke" and arg in flags:
            parsed.revoke = True
        elif arg in flags:
            parsed.as_json = True
        elif arg == "-" or not arg.startswith("-"):
            parsed.args.append(arg)
        else:
            got = _option(arg, options, rest)
            if got is None:
                return None  # --help, --follow, --unknown ...: the whole CLI
            if got[0] in ("members", "admins"):
                getattr(parsed, got[0]).append(got[1])
            else:
                setattr(parsed, got[0], got[1])
    if not low <= len(parsed.args) <= high:
        return None  # click's usage message, from the whole CLI
    if parsed.command == "send" and parsed.group is None and not parsed.args:
        return None
    if parsed.command == "group" or parsed.group is not None:
        from securechan.cli.fast_group import accepts

        if not accepts(parsed):
            return None
    return parsed


def through_agent(argv: list[str]) -> int | None:
    """Serve ``argv`` through the home's agent; its exit code, or None."""
    parsed = parse(argv)
    if parsed is None:
        return None
    # Imported only now: a command this path does not serve (--help, id show,
    # ...) loads nothing of the client package.
    from securechan.client.agent_paths import socket_file
    from securechan.client.agent_socket import AgentAnswer, AgentConnection, NoAgent
    from securechan.home import default_home_dir

    home = parsed.home if parsed.home is not None else default_home_dir()
    try:
        client = AgentConnection(socket_file(home))
    except NoAgent:
        return None  # no agent: in-process
    except Exception as e:
        from securechan.errors import UsageError

        if isinstance(e, UsageError):
            return None  # a socket path too long: in-process, which says why
        raise
    try:
        with client:
            return _serve(client, parsed)
    except _Failure as e:
        _say(f"securechan: {inline(str(e), width=render.columns(err=True), indent=12)}", True)
        return e.exit_code
    except AgentAnswer as e:
        failure = _failure(e)
        _say(f"securechan: {inline(str(failure), width=render.columns(err=True), indent=12)}", True)
        return failure.exit_code
    except NoAgent as e:
        _say(f"securechan: {inline(str(e), width=render.columns(err=True), indent=12)}", True)
        return _EXIT_NETWORK
    except KeyboardInterrupt:
        _say("securechan: interrupted", True)
        return 130


def _say(line: str, to_stderr: bool) -> None:
    print(line, file=sys.stderr if to_stderr else sys.stdout)


def _print(lines: list[tuple[str, bool]]) -> None:
    for line, to_stderr in lines:
        _say(line, to_stderr)


def _call(client: AgentConnection, parsed: Parsed, method: str, **params: Any) -> Any:
    """Call ``method``; unlock a locked agent once and call it again."""
    from securechan.client.agent_socket import AgentAnswer

    try:
        return client.call(method, **params)
    except AgentAnswer as e:
        if e.code != _LOCKED:
            raise
    _unlock(client, parsed)
    return client.call(method, **params)


def _unlock(client: AgentConnection, parsed: Parsed) -> None:
    if parsed.passphrase_file is not None:
        client.call("unlock", passphrase=_passphrase_from_file(parsed.passphrase_file))
        return
    env = os.environ.get("SECURECHAN_PASSPHRASE")
    if env:
        client.call("unlock", passphrase=env)
        return
    if not sys.stdin.isatty():
        raise _Failure(
            "the agent is locked and there is no passphrase: use --passphrase-file or "
            "SECURECHAN_PASSPHRASE, run in a terminal, or 'securechan agent unlock'",
            _EXIT_USAGE,
        )
    import getpass

    from securechan.client.agent_socket import AgentAnswer

    for attempt in range(_TRIES):
        try:
            passphrase = getpass.getpass("Passphrase (the agent is locked): ", sys.stderr)
            client.call("unlock", passphrase=passphrase)
            return
        except AgentAnswer as e:
            if e.data.get("reason") != "bad-passphrase" or attempt == _TRIES - 1:
                raise
            _say("securechan: wrong passphrase, try again", True)


def _passphrase_from_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.readline(_MAX_PASSPHRASE + 1)
    except OSError as e:
        raise _Failure(f"cannot read {path}: {e.strerror}", _EXIT_USAGE) from None
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise _Failure(f"{path} is not UTF-8 text", _EXIT_USAGE) from None
    if not line or len(line.encode()) > _MAX_PASSPHRASE:
        raise _Failure(f"{path}: the first line is empty or over 4096 bytes", _EXIT_USAGE)
    return line


def _serve(client: AgentConnection, parsed: Parsed) -> int:
    if parsed.command == "group" or parsed.group is not None:
        from securechan.cli.fast_group import serve

        def call(method: str, **params: Any) -> Any:
            return _call(client, parsed, method, **params)

        return serve(client, parsed, call)
    if parsed.command == "send":
        return _send(client, parsed)
    if parsed.command == "receive":
        folder = os.path.abspath(parsed.download or ".")
        answer = _call(client, parsed, "receive", download=folder)
        items = answer["items"]
        split = rolled_back = False
        relays_down: set[str] = set()  # each relay that failed, reported once
        for item in items:
            relay = item.get("relay")
            if relay is not None:
                if relay in relays_down:
                    continue
                relays_down.add(relay)
            if "status" in item:  # a group record (GroupEntry; its file is saved by the agent)
                _print(
                    [(render.json_text(item), False)]
                    if parsed.as_json
                    else render.group_entry(item)
                )
                split = split or item["status"] in render.GROUP_ALARMS
                continue
            _print([(render.json_text(item), False)] if parsed.as_json else render.received(item))
            split = split or item.get("rejected") == "split-view"
            rolled_back = rolled_back or item.get("rejected") == "peer-rolled-back"
        for saved in answer.get("group_files") or ():
            _say(f"securechan: note: group file saved as {inline(str(saved))}", True)
        for url in answer["left_waiting"]:
            note = f"more messages wait at {inline(url)}: run 'securechan receive' again"
            _say(f"securechan: note: {note}", True)
        # As in-process: split view 1, rollback 5, an unreachable relay 3.
        if split:
            return _EXIT_VERIFY
        if rolled_back:
            return _EXIT_ROLLBACK
        return _EXIT_NETWORK if relays_down else 0
    if parsed.command == "history":
        contact = parsed.args[0] if parsed.args else None
        limit = None
        if parsed.limit is not None:
            if not parsed.limit.isdigit() or int(parsed.limit) < 1:
                raise _Failure(
                    f"Invalid value for '--limit': {parsed.limit!r} is not >= 1.", _EXIT_USAGE
                )
            limit = int(parsed.limit)
        page = _call(client, parsed, "history", contact=contact, limit=limit, before=parsed.before)
        rows = page["items"]
        if page["more"] and rows:
            _say(
                f"securechan: note: showing the newest {len(rows)}; older messages: "
                f"'securechan history --before {rows[0]['id'][:16]}'",
                True,
            )
        for row in rows:
            _print([(render.json_text(row), False)] if parsed.as_json else render.history_row(row))
        return 0
    info = _call(client, parsed, "status", flush=True)
    if info["channel"] is None:  # locked since: unlock and ask again
        _unlock(client, parsed)
        info = client.call("status", flush=True)
    channel = info["channel"]
    _print([(render.json_text(channel), False)] if parsed.as_json else render.status(channel))
    width = render.columns(err=True)
    errors = info.get("relay_errors") or {}
    for error in errors.values():
        _say(f"securechan: {inline(error, width=width, indent=12)}", True)
    return _EXIT_NETWORK if errors else 0


def _send(client: AgentConnection, parsed: Parsed) -> int:
    contact = parsed.args[0]
    message = parsed.args[1] if len(parsed.args) > 1 else None
    if (message is None) == (parsed.file is None):
        raise _Failure("give a MESSAGE ('-' reads stdin) or --file F", _EXIT_USAGE)
    params: dict[str, Any] = {"contact": contact}
    if parsed.file is not None:
        if not os.path.isfile(parsed.file):
            raise _Failure(
                f"Invalid value for '--file': File '{parsed.file}' does not exist.", _EXIT_USAGE
            )
        params["file"] = os.path.abspath(parsed.file)
    elif message == "-":
        params["text"] = _stdin_text()
    else:
        params["text"] = message
    result = _call(client, parsed, "send", **params)
    if not result.pop("verified", True):
        shown = inline(contact)
        _say(
            f"securechan: warning: {shown} is not verified; compare safety numbers "
            f"('securechan contact show {shown}')",
            True,
        )
    if parsed.as_json:
        _say(render.json_text(result), False)
    if result["pending"]:
        # As in-process: one line, exit 3; the message is safe in the outbox.
        seqs, who = render.seq_range(result["seqs"]), result["contact"]
        head = (
            f"no relay accepted message {seqs} to {who} yet"
            if not result["delivered"]
            else f"message {seqs} to {who} was posted in part ({result['delivered']} taken)"
        )
        line = (
            f"{head}: {result['pending']} envelope(s) still queued; the next send, receive "
            "or status posts them, 'securechan outbox' lists them"
        )
        _say(f"securechan: {inline(line, width=render.columns(err=True), indent=12)}", True)
        return _EXIT_NETWORK
    if not parsed.as_json:
        _print(render.sent(result))
    return 0


def _stdin_text() -> str:
    from securechan.cli.text_input import read_text

    try:
        return read_text(sys.stdin.buffer, "standard input")
    except Exception as e:
        from securechan.errors import MalformedInput

        if isinstance(e, MalformedInput):
            raise _Failure(str(e), _EXIT_USAGE) from None
        raise
