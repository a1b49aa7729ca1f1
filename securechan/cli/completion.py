"""Shell completion of contact names, message ids and group names (docs/CLI.md,
"Shell completion").

click calls these when ``_SECURECHAN_COMPLETE`` is set. They read only what
needs no passphrase: the contact list (``contacts.json``, as ``contact list``
does) and, for message ids, the audit log (``audit.db``, as ``log show``
does; each ``message-sent`` and ``message-received`` entry holds SHA-256 of the
message's signed record, whose first 16 hex digits are the id ``history``
shows; the ``group-message-*`` entries, the ids ``history --group`` shows).
Group names are sealed in ``client.db``, so they come from the home's
running agent, if one runs unlocked (``groupList``). They create nothing
and print nothing: a missing or unreadable home completes to nothing, since
a completion that fails must not break the shell.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.shell_completion import CompletionItem

import securechan

__all__ = [
    "complete_contact",
    "complete_contact_or_self",
    "complete_group",
    "complete_group_message_id",
    "complete_message_id",
]

_MESSAGE_ID_HEX = 16


def _home(ctx: click.Context) -> Path:
    """``--home`` (or ``$SECURECHAN_HOME``) as already parsed, else the default."""
    home = ctx.find_root().params.get("home")
    return Path(home) if home else securechan.default_home()


def _contacts(ctx: click.Context, incomplete: str, *, own: bool) -> list[CompletionItem]:
    store = securechan.Keystore(_home(ctx))
    items = [
        CompletionItem(c.name, help="verified" if c.verified else "UNVERIFIED")
        for c in store.contacts.list()
        if c.name.startswith(incomplete)
    ]
    if own and store.has_identity():
        me = store.public_identity().name
        if me.startswith(incomplete) and all(i.value != me for i in items):
            items.append(CompletionItem(me, help="you"))
    return items


def complete_contact(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The pinned contacts' names that start with ``incomplete``."""
    try:
        return _contacts(ctx, incomplete, own=False)
    except Exception:  # completion never fails the shell; see the module doc
        return []


def complete_contact_or_self(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """As :func:`complete_contact`, and your own name (``verify --from``)."""
    try:
        return _contacts(ctx, incomplete, own=True)
    except Exception:  # completion never fails the shell; see the module doc
        return []


def _message_ids(
    ctx: click.Context, incomplete: str, kinds: dict[str, str]
) -> list[CompletionItem]:
    """Ids (16 hex digits of a payload hash) of the audit log's entries of
    ``kinds`` (kind -> help word) starting with ``incomplete``, newest first."""
    from securechan.audit.log import AuditLog
    from securechan.audit.log_records import GroupMessageEvent, MessageEvent

    path = _home(ctx)
    if not (path / "audit.db").exists():
        return []
    wanted = incomplete.lower()
    found: list[CompletionItem] = []
    with AuditLog.open(path, read_only=True) as log:
        for entry in log.entries():
            fields = entry.fields
            if entry.kind not in kinds or not isinstance(fields, MessageEvent | GroupMessageEvent):
                continue
            mid = fields.payload_hash.hex()[:_MESSAGE_ID_HEX]
            if mid.startswith(wanted):
                found.append(CompletionItem(mid, help=f"{kinds[entry.kind]} #{fields.seq}"))
    return found[::-1]


def complete_message_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The ids of stored messages (from the audit log) that start with
    ``incomplete``, newest first."""
    try:
        return _message_ids(
            ctx, incomplete, {"message-sent": "sent", "message-received": "received"}
        )
    except Exception:  # completion never fails the shell; see the module doc
        return []


def complete_group_message_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The ids of group messages (``group statement``), from the audit log's
    ``group-message-sent``/``group-message-received`` entries, newest first."""
    try:
        return _message_ids(
            ctx,
            incomplete,
            {"group-message-sent": "group sent", "group-message-received": "group received"},
        )
    except Exception:  # completion never fails the shell; see the module doc
        return []


def complete_group(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Your groups' names that start with ``incomplete`` (``group
    add|remove|leave|show``, ``send --group``, ``history --group``)."""
    try:
        return [
            CompletionItem(name, help="group")
            for name in _group_names(_home(ctx))
            if name.startswith(incomplete)
        ]
    except Exception:  # completion never fails the shell; see the module doc
        return []


def _group_names(home: Path) -> list[str]:
    """The group names, from the home's running agent (``groupList``).

    A group's name is sealed in ``client.db`` with the rest of its state
    (docs/STORAGE.md), unlike a contact's name in ``contacts.bin``, so
    without the key there is nothing to read: with no agent, or a locked
    one, group names complete to nothing."""
    from securechan.client.agent_client import AgentClient

    with AgentClient(home, timeout=2.0) as agent:
        answer = agent.call("groupList")
    return sorted(
        str(item["name"]) for item in answer["items"] if isinstance(item.get("name"), str)
    )
