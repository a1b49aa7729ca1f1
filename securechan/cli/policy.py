"""``securechan policy``: which witnesses must cosign a relay's log."""

from __future__ import annotations

import sys
from typing import Any

import click

from securechan.cli.core import (
    EXIT_NETWORK,
    RELAY_URL,
    _App,
    _channel,
    _columns,
    _emit_json,
    _emit_json_lines,
    _Group,
    _json_option,
    _run,
    pass_app,
)
from securechan.errors import NotFound, RelayError
from securechan.terminal_text import inline


@click.group(cls=_Group)
def policy() -> None:
    """Which witnesses must cosign a relay's log (docs/AUDIT.md, Witnesses)."""


@policy.command(name="set")
@click.option(
    "--relay", "relay_url", type=RELAY_URL, required=True, help="The relay, as registered."
)
@click.option(
    "--witness",
    "witness_keys",
    multiple=True,
    metavar="KEY",
    help="A witness's key line ('securechan witness key' prints it); repeatable. "
    "None: remove the policy.",
)
@click.option("--require", type=int, default=None, help="How many must cosign (default: all).")
@_json_option
@pass_app
def policy_set(
    app: _App, relay_url: str, witness_keys: tuple[str, ...], require: int | None, as_json: bool
) -> None:
    """Require cosignatures on RELAY's checkpoints before they count as witnessed."""
    from securechan.audit.note import VerifierKey
    from securechan.client.policy import set_policy

    keys = [VerifierKey.from_text(k.strip()) for k in witness_keys]

    async def go() -> Any:
        async with _channel(app) as ch:
            if relay_url not in ch.relays() + ch.known_logs():
                raise NotFound(f"{relay_url} is none of your or your contacts' relays")
            return set_policy(ch, relay_url, keys, require)

    from securechan.cli.agent import call_running_agent
    from securechan.cli.results import PolicyInfo

    # Through the agent when one runs (docs/AGENT.md, policySet): its next
    # statement follows the new policy.
    asked = {"relay": relay_url, "witnesses": [k.to_text() for k in keys], "require": require}
    answer = call_running_agent(app, "policySet", asked)
    if answer is not None:
        info = PolicyInfo(
            relay=str(answer["relay"]),
            witnesses=tuple(str(k) for k in answer["witnesses"]),
            required=int(answer["required"]),
        )
    else:
        p = _run(go())
        info = PolicyInfo(
            relay=p.relay, witnesses=tuple(k.to_text() for k in p.witnesses), required=p.required
        )
    if as_json:
        _emit_json(info.to_json())
    elif info.witnesses:
        click.echo(
            f"{inline(relay_url)}: {info.required} of {len(info.witnesses)} witnesses must cosign"
        )
    else:
        click.echo(f"{inline(relay_url)}: no witness policy")


@policy.command(name="show")
@_json_option
@pass_app
def policy_show(app: _App, as_json: bool) -> None:
    """Each relay's policy and the newest checkpoint that met it (fetched now)."""
    from securechan.cli.results import PolicyInfo
    from securechan.client.policy import get_policy, refresh_witnessed

    async def go() -> list[PolicyInfo]:
        out = []
        async with _channel(app) as ch:
            for relay_url in ch.relays():
                p = get_policy(ch, relay_url)
                if p is None:
                    out.append(PolicyInfo(relay=relay_url))
                    continue
                error = None
                try:
                    cp = await refresh_witnessed(ch, relay_url)
                except RelayError as e:
                    error, cp = str(e), None
                out.append(
                    PolicyInfo(
                        relay=relay_url,
                        witnesses=tuple(k.to_text() for k in p.witnesses),
                        required=p.required,
                        error=error,
                        witnessed_size=None if cp is None else cp.checkpoint.size,
                        cosigned_by=() if cp is None else tuple(cp.cosignatures),
                    )
                )
        return out

    from securechan.cli.agent import call_running_agent

    # Through the agent when one runs (docs/AGENT.md, policyShow): the same
    # objects, the command line's PolicyInfo as JSON.
    answer = call_running_agent(app, "policyShow", {})
    if answer is not None:
        rows: list[dict[str, Any]] = list(answer["items"])
    else:
        rows = [row.to_json() for row in _run(go())]
    if as_json:
        _emit_json_lines(rows)
    for row in [] if as_json else rows:
        relay_shown = inline(row["relay"])
        if not row["witnesses"]:
            click.echo(f"{relay_shown}: no witness policy")
            continue
        seen = row.get("witnessed_size")
        state = f"witnessed up to size {seen}" if seen is not None else "nothing witnessed yet"
        click.echo(
            f"{relay_shown}: {row['required']} of {len(row['witnesses'])} witnesses; {state}"
        )
    # A relay that did not answer: every row is shown first, then one line
    # per relay and exit 3 (docs/CLI.md, Exit codes).
    errors = [str(row["error"]) for row in rows if row.get("error") is not None]
    for error in errors:
        click.echo(f"securechan: {inline(error, width=_columns(err=True), indent=12)}", err=True)
    if errors:
        sys.exit(EXIT_NETWORK)
