"""The group commands through a running agent (docs/AGENT.md, The thin command line).

``group create|add|remove|admin|leave|rekey|list|show``, ``send --group`` and
``history --group``, parsed by :mod:`securechan.cli.fast` and served here
with the agent's group methods, printed with the renderer the in-process
commands use (:mod:`securechan.cli.render`), with the same exit codes.
Standard library only, as the rest of the fast path.
"""

from __future__ import annotations

import os
import sys

from securechan.cli import render
from securechan.errors import UsageError
from securechan.terminal_text import inline

# Not `from typing import TYPE_CHECKING`: see securechan/cli/fast.py.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    # securechan.cli.fast's Parsed (not imported: fast imports this module)
    Parsed = Any

__all__ = ["SUBCOMMANDS", "accepts", "serve"]

_EXIT_NETWORK = 3

# subcommand -> (least, most) positional arguments after it (NAME, CONTACT...)
SUBCOMMANDS = {
    "create": (1, 1),
    "add": (2, 64),
    "remove": (2, 64),
    "leave": (1, 1),
    "rekey": (1, 1),
    "admin": (2, 64),
    "list": (0, 0),
    "show": (1, 1),
}


def accepts(parsed: Parsed) -> bool:
    """Whether the fast path serves this reading of a command line (else
    the whole command line, and click's usage messages, run in-process)."""
    if parsed.command == "group":
        if not parsed.args or parsed.args[0] not in SUBCOMMANDS:
            return False
        low, high = SUBCOMMANDS[parsed.args[0]]
        if not low <= len(parsed.args) - 1 <= high:
            return False
        if (parsed.args[0] == "create") != bool(parsed.members):
            return False  # --member goes with create only, and create needs one
        if parsed.admins and parsed.args[0] != "create":
            return False  # --admin goes with create only
        if parsed.revoke and parsed.args[0] != "admin":
            return False  # --revoke goes with admin only
        # A CONTACT named twice: in-process says so.
        return all(len(set(n)) == len(n) for n in (parsed.members, parsed.admins, parsed.args[2:]))
    if parsed.group is None:
        return True
    if parsed.command == "send":  # send --group NAME (MESSAGE | --file F)
        return (len(parsed.args) == 1) != (parsed.file is not None) and len(parsed.args) <= 1
    return parsed.command == "history" and not parsed.args


def _say(line: str, to_stderr: bool) -> None:
    print(line, file=sys.stderr if to_stderr else sys.stdout)


def _print(lines: list[tuple[str, bool]]) -> None:
    for line, to_stderr in lines:
        _say(line, to_stderr)


def _warn_unverified(info: dict[str, Any], names: list[str]) -> None:
    """As in-process (after the change here, as ``send`` through the agent
    warns after sending): each named member not verified."""
    for member in info["members"]:
        if member.get("name") in names and not member.get("verified"):
            shown = inline(str(member["name"]))
            _say(
                f"securechan: warning: {shown} is not verified; compare safety numbers "
                f"('securechan contact show {shown}')",
                True,
            )


def serve(client: Any, parsed: Parsed, call: Callable[..., Any]) -> int:
    """Serve a group command line; its exit code."""
    if parsed.command == "send":
        return _send(parsed, call)
    if parsed.command == "history":
        return _history(parsed, call)
    sub, rest = parsed.args[0], parsed.args[1:]
    if sub == "list":
        items = call("groupList")["items"]
        if parsed.as_json:
            _print([(render.json_text(info), False) for info in items])
        elif not items:
            _say("No groups yet ('securechan group create NAME --member CONTACT').", True)
        for info in [] if parsed.as_json else items:
            _print(render.group_row(info))
        return 0
    if sub == "show":
        info = call("groupShow", group=rest[0])
        _print([(render.json_text(info), False)] if parsed.as_json else render.group_info(info))
        return 0
    if sub == "create":
        params: dict[str, Any] = {"name": rest[0], "members": list(parsed.members)}
        if parsed.admins:
            params["admins"] = list(parsed.admins)
        info = call("groupCreate", **params)
        _warn_unverified(info, list(dict.fromkeys(parsed.members + parsed.admins)))
        text = f"Created group {inline(str(info['name']))} with {len(info['members'])} members"
    elif sub == "add":
        info = call("groupAdd", group=rest[0], contacts=rest[1:])
        _warn_unverified(info, rest[1:])
        text = f"Added {len(rest) - 1} member(s) to {inline(str(info['name']))}"
    elif sub == "remove":
        info = call("groupRemove", group=rest[0], contacts=rest[1:])
        text = f"Removed {len(rest) - 1} member(s) from {inline(str(info['name']))}"
    elif sub == "admin":
        info = call("groupAdmin", group=rest[0], contacts=rest[1:], revoke=parsed.revoke)
        done = "no longer admin" if parsed.revoke else "made admin"
        text = f"{len(rest) - 1} member(s) of {inline(str(info['name']))} {done}"
    elif sub == "rekey":
        info = call("groupRekey", group=rest[0])
        text = f"Rekeyed group {inline(str(info['name']))} (epoch {info['epoch']})"
    else:
        info = call("groupLeave", group=rest[0])
        text = f"Left group {inline(str(info['name']))}"
    if parsed.as_json:
        _say(render.json_text(info), False)
    else:
        _say(text, True)
        _print(render.group_info(info))
    return 0


def _send(parsed: Parsed, call: Callable[..., Any]) -> int:
    from securechan.cli.text_input import read_text

    params: dict[str, Any] = {"group": parsed.group}
    if parsed.file is not None:
        if not os.path.isfile(parsed.file):
            raise UsageError(f"Invalid value for '--file': File '{parsed.file}' does not exist.")
        params["file"] = os.path.abspath(parsed.file)
    else:
        message = parsed.args[0]
        params["text"] = (
            read_text(sys.stdin.buffer, "standard input") if message == "-" else message
        )
    result = call("sendGroup", **params)
    if parsed.as_json:
        _say(render.json_text(result), False)
    if result["pending"]:
        waiting = ", ".join(str(p) for p in result["pending"])
        # As in-process: one line, exit 3; the content is safe in the outbox.
        line = (
            f"group message #{result['seq']} to {result['group']} is in the transcript, but "
            f"its content still waits in the outbox for {waiting}; the next send, receive or "
            "status posts it, 'securechan outbox' lists it"
        )
        _say(f"securechan: {inline(line, width=render.columns(err=True), indent=12)}", True)
        return _EXIT_NETWORK
    if not parsed.as_json:
        _print(render.group_sent(result))
    return 0


def _history(parsed: Parsed, call: Callable[..., Any]) -> int:
    limit = None
    if parsed.limit is not None:
        if not parsed.limit.isdigit() or int(parsed.limit) < 1:
            raise UsageError(f"Invalid value for '--limit': {parsed.limit!r} is not >= 1.")
        limit = int(parsed.limit)
    page = call("groupHistory", group=parsed.group, limit=limit, before=parsed.before)
    rows = page["items"]
    if page["more"] and rows:
        _say(
            f"securechan: note: showing the newest {len(rows)}; older records: "
            f"'securechan history --group {inline(str(parsed.group))} "
            f"--before {rows[0]['id'][:16]}'",
            True,
        )
    for row in rows:
        _print(
            [(render.json_text(row), False)] if parsed.as_json else render.group_history_row(row)
        )
    return 0
