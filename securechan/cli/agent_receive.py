"""``securechan receive`` through a running agent, with the options the fast
path (cli/fast.py) leaves to the whole command line: ``--follow [--timeout
S]``, and a plain ``receive`` whose options it does not read (docs/AGENT.md,
What the agent serves).

Each pass is the agent's ``receive`` method: what its background receiver
kept, then one more pass, files saved into ``--download``, the shown cursor
moved. ``--follow`` subscribes (``subscribeReceive``) and uses each
``receive`` notification as a wake-up only: it then calls ``receive``
again and prints what that answers, so each item is printed once, with its
file saved (a notification's item has no file), and the cursor moves as the
in-process follow moves it. Ctrl-C ends it (exit 130, as in-process); the
exit code otherwise is the in-process one: 1 for a split view or a group
alarm, 5 for a rolled-back peer, 3 when a relay could not be used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from securechan.cli import render
from securechan.cli.core import EXIT_NETWORK, EXIT_ROLLBACK, EXIT_VERIFY, _App
from securechan.errors import AgentLocked
from securechan.terminal_text import inline

__all__ = ["receive_through_agent"]


class _Shown:
    """What was printed so far, for the exit code and the one line per relay."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.split = False
        self.rolled_back = False
        self.relays_down: set[str] = set()

    def show(self, answer: dict[str, Any]) -> None:
        """One ``receive`` answer, printed as the in-process command prints
        its items (the lines of cli/render.py, or the --json objects)."""
        for item in answer["items"]:
            relay = item.get("relay")
            if relay is not None:
                if relay in self.relays_down:
                    continue
                self.relays_down.add(relay)
            if "status" in item:  # a group record (GroupEntry)
                self._print(render.group_entry(item), item)
                self.split = self.split or item["status"] in render.GROUP_ALARMS
                continue
            self._print(render.received(item), item)
            self.split = self.split or item.get("rejected") == "split-view"
            self.rolled_back = self.rolled_back or item.get("rejected") == "peer-rolled-back"
        for saved in answer.get("group_files") or ():
            click.echo(f"securechan: note: group file saved as {inline(str(saved))}", err=True)

    def _print(self, lines: list[tuple[str, bool]], item: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(render.json_text(item))
            return
        for line, to_stderr in lines:
            click.echo(line, err=to_stderr)

    def exit_code(self) -> int:
        if self.split:
            return EXIT_VERIFY
        if self.rolled_back:
            return EXIT_ROLLBACK
        return EXIT_NETWORK if self.relays_down else 0


def _receive(app: _App, client: Any, folder: str) -> dict[str, Any]:
    """The agent's ``receive``; a locked agent (its TTL ran out while we
    followed) is unlocked with the passphrase and asked again."""
    try:
        answer: dict[str, Any] = client.call("receive", download=folder)
    except AgentLocked:
        client.unlock(app.passphrase())
        answer = client.call("receive", download=folder)
    return answer


def receive_through_agent(
    app: _App, client: Any, download: Path, *, follow: bool, timeout: float | None, as_json: bool
) -> int:
    """Receive through the agent ``client`` (unlocked); the exit code."""
    folder = os.path.abspath(download)
    shown = _Shown(as_json)
    if not follow:
        answer = _receive(app, client, folder)
        shown.show(answer)
        for url in answer["left_waiting"]:
            click.echo(
                f"securechan: note: more messages wait at {inline(url)}: "
                "run 'securechan receive' again",
                err=True,
            )
        return shown.exit_code()
    deadline = None if timeout is None else time.monotonic() + timeout
    client.call("subscribeReceive")
    while True:
        client.notifications.clear()
        shown.show(_receive(app, client, folder))
        if any(method == "receive" for method, _ in client.notifications):
            continue  # a pass published while we asked: ask once more
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return shown.exit_code()
            got = client.next_notification(left)
            if got is None:
                return shown.exit_code()
            if got[0] in ("receive", "locked"):
                break  # something arrived (or the key was forgotten): ask
