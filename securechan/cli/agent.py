"""``securechan agent``: start, stop, lock and query the home's agent (docs/AGENT.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import click

import securechan
from securechan.cli.core import _App, _emit_json, _exit_code, _Group, _json_option, pass_app
from securechan.errors import AgentUnavailable, UsageError

if TYPE_CHECKING:
    from securechan.client.context import UnknownPolicy

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 15.0


@click.group(name="agent", cls=_Group)
def agent() -> None:
    """Keep your key unlocked for a while in one background process.

    The agent holds the unlocked key (forgotten after --idle-ttl seconds
    unused, --max-ttl seconds after unlocking, or at once by 'agent lock'),
    keeps receiving, and answers the other commands over a socket only you
    can use. Without an agent every command works on its own, as before."""


def _ttl_options(f: Any) -> Any:
    f = click.option(
        "--unknown",
        type=click.Choice(["refuse", "hold"]),
        default="refuse",
        show_default=True,
        help="First messages from identities you have not pinned, as the agent "
        "receives them: refuse them, or hold them until you pin the sender "
        "(as 'receive --unknown hold'; needed for it to work through the agent).",
    )(f)
    f = click.option(
        "--poll",
        type=click.FloatRange(min=0.1),
        default=30,
        show_default=True,
        help="Seconds between receive passes when no relay pushed anything.",
    )(f)
    f = click.option(
        "--max-ttl",
        type=click.FloatRange(min=1),
        default=7200,
        show_default=True,
        help="Forget the key this many seconds after unlocking it.",
    )(f)
    return click.option(
        "--idle-ttl",
        type=click.FloatRange(min=1),
        default=600,
        show_default=True,
        help="Forget the key after this many seconds without a command.",
    )(f)


def _client(app: _App) -> Any:
    from securechan.client.agent_client import AgentClient

    return AgentClient(app.home)


def call_running_agent(
    app: _App, method: str, params: dict[str, Any], notified: Any = None
) -> dict[str, Any] | None:
    """``method`` through the home's agent if one runs (None if none does),
    for the commands that go through it without the fast path (``pair``,
    ``statement export``). A locked agent is unlocked first with the
    passphrase (``--passphrase-file``, $SECURECHAN_PASSPHRASE or a prompt)."""
    from securechan.agent.homelock import agent_running
    from securechan.errors import AgentLocked

    if not agent_running(app.home):
        return None
    with _client(app) as client:
        for attempt in (1, 2):
            try:
                if notified is None:
                    result: dict[str, Any] = client.call(method, **params)
                else:
                    result = client.call_notified(method, params, notified)
                return result
            except AgentLocked:
                if attempt == 2:
                    raise
                client.unlock(app.passphrase())
    return None  # not reached


def agent_policy(app: _App) -> str | None:
    """What the home's running agent does with first messages from senders
    not pinned (``"refuse"`` or ``"hold"``, its ``--unknown``), asked
    without unlocking it; None when no agent runs."""
    from securechan.agent.homelock import agent_running

    if not agent_running(app.home):
        return None
    with _client(app) as client:
        return str(client.call("status").get("unknown_senders", "refuse"))


def running_agent_client(app: _App) -> Any:
    """An unlocked connection to the home's agent if one runs (None if
    none does): for ``receive --follow``, which calls it more than once.
    A locked agent is unlocked first, as :func:`call_running_agent` does."""
    from securechan.agent.homelock import agent_running

    if not agent_running(app.home):
        return None
    client = _client(app)
    try:
        if client.call("status")["locked"]:
            client.unlock(app.passphrase())
    except BaseException:
        client.close()
        raise
    return client


@agent.command(name="run")
@_ttl_options
@click.option(
    "--unlock/--locked",
    default=False,
    help="Unlock at start with --passphrase-file or $SECURECHAN_PASSPHRASE "
    "(default: start locked; 'agent unlock' or the next command unlocks it).",
)
@pass_app
def agent_run(
    app: _App, idle_ttl: float, max_ttl: float, poll: float, unknown: UnknownPolicy, unlock: bool
) -> None:
    """Run the agent in the foreground (for systemd and other service managers).

    Logs go to stderr. SIGTERM or 'securechan agent stop' ends it."""
    import asyncio
    import logging
    import signal

    from securechan.agent.keycache import KeyCache
    from securechan.agent.server import AgentServer
    from securechan.client.channel import Channel

    logging.basicConfig(level=logging.INFO, format="securechan-agent: %(message)s")
    keystore = app.keystore
    if not keystore.has_identity():
        raise UsageError(f"no identity in {app.home}; run 'securechan init'")

    def make_channel(identity: Any) -> Channel:
        channel = Channel(keystore, identity, unknown_senders=unknown)
        # The agent keeps the shown cursor itself: its items wait in memory
        # until a `receive` call takes them (agent/methods.py).
        channel.shown.enabled = False
        return channel

    keys = KeyCache(
        keystore.unlock,
        make_channel,
        idle_ttl=idle_ttl,
        max_ttl=max_ttl,
    )
    server = AgentServer(
        app.home,
        keys,
        version=securechan.__version__,
        poll=poll,
        exit_code=_exit_code,
        unknown_senders=unknown,
    )
    server.claim()  # before reading a passphrase: fail fast when the home is taken
    passphrase = app.passphrase() if unlock else None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.state.stop.set)
        if passphrase is not None:
            await keys.unlock(passphrase)
        await server.serve()

    asyncio.run(main())


@agent.command(name="start")
@_ttl_options
@pass_app
def agent_start(
    app: _App, idle_ttl: float, max_ttl: float, poll: float, unknown: UnknownPolicy
) -> None:
    """Start the agent in the background and unlock it (asks for the passphrase)."""
    from securechan.agent.homelock import agent_running

    if agent_running(app.home):
        click.echo("securechan: an agent is already running for this home", err=True)
        return
    passphrase = app.passphrase()
    log_path = app.home / "agent.log"
    argv = [
        sys.executable,
        "-m",
        "securechan",
        "--home",
        str(app.home),
        "agent",
        "run",
        "--idle-ttl",
        str(idle_ttl),
        "--max-ttl",
        str(max_ttl),
        "--poll",
        str(poll),
        "--unknown",
        unknown,
    ]
    env = {k: v for k, v in os.environ.items() if k != "SECURECHAN_PASSPHRASE"}
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    client = _wait_for_socket(app, proc)
    try:
        with client:
            client.unlock(passphrase)
            info = client.call("status")
    except Exception:
        _stop(app)
        raise
    held = "; first messages from unpinned senders held" if unknown == "hold" else ""
    click.echo(
        f"agent started (pid {info['pid']}); key unlocked for {int(idle_ttl)} s idle, "
        f"{int(max_ttl)} s at most{held}; log: {log_path}"
    )


def _wait_for_socket(app: _App, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            return _client(app)
        except AgentUnavailable:
            code = proc.poll()
            if code is not None:
                raise AgentUnavailable(
                    f"the agent exited at start (code {code}); see {app.home / 'agent.log'}"
                ) from None
            if time.monotonic() > deadline:
                proc.kill()
                raise AgentUnavailable("the agent did not start in time") from None
            time.sleep(0.05)


def _stop(app: _App) -> bool:
    from securechan.agent.homelock import agent_running

    try:
        with _client(app) as client:
            client.stop()
    except AgentUnavailable:
        return False
    deadline = time.monotonic() + _STOP_TIMEOUT
    while agent_running(app.home):
        if time.monotonic() > deadline:
            raise AgentUnavailable("the agent did not stop in time")
        time.sleep(0.05)
    return True


@agent.command(name="stop")
@pass_app
def agent_stop(app: _App) -> None:
    """Stop the agent (its key is forgotten)."""
    if not _stop(app):
        raise AgentUnavailable(f"no agent is running for {app.home}")
    click.echo("agent stopped")


@agent.command(name="status")
@_json_option
@pass_app
def agent_status(app: _App, as_json: bool) -> None:
    """Whether an agent runs, and whether its key is unlocked (exit 3 if none)."""
    with _client(app) as client:
        info = client.call("status")
    if as_json:
        _emit_json(info)
        return
    state = "locked" if info["locked"] else f"unlocked ({info['expires_in']} s left)"
    click.echo(
        f"agent running (pid {info['pid']}), {state}; unknown senders: "
        f"{info['unknown_senders']}; socket {client.path}"
    )


@agent.command(name="lock")
@pass_app
def agent_lock(app: _App) -> None:
    """Make the agent forget the key now."""
    with _client(app) as client:
        client.lock()
    click.echo("agent locked")


@agent.command(name="unlock")
@pass_app
def agent_unlock(app: _App) -> None:
    """Unlock a locked agent (asks for the passphrase)."""
    with _client(app) as client:
        client.unlock(app.passphrase())
        info = client.call("status")
    click.echo(f"agent unlocked ({info['expires_in']} s left)")
