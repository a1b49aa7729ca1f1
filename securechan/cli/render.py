"""What ``send``, ``receive``, ``history`` and ``status`` print for people,
rendered from their JSON objects (the ``--json`` fields, docs/CLI.md).

One renderer for both ways a command runs: in-process (``cli/messaging.py``
renders ``item.to_json()``) and through the agent (``cli/fast.py`` renders
what the agent answered), so the two print the same lines. Standard library,
:mod:`securechan.json_text` and :mod:`securechan.terminal_text` only: the fast path must not pay for
click or the cryptography. Every peer- or relay-controlled string goes
through ``inline``/``block`` (controls visible, one line per line).

Each function returns ``(line, to_stderr)`` pairs; the caller prints them.
"""

from __future__ import annotations

import os
import sys

from securechan.json_text import dumps
from securechan.terminal_text import block, inline

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


__all__ = [
    "GROUP_ALARMS",
    "columns",
    "group_entry",
    "group_history_row",
    "group_info",
    "group_row",
    "group_sent",
    "history_row",
    "json_text",
    "received",
    "sent",
    "status",
]

Line = tuple[str, bool]


def columns(*, err: bool = False) -> int | None:
    """The terminal's width when stdout (or stderr) is a terminal, which wraps
    long lines; None for a pipe or a file, where lines are never cut."""
    stream = sys.stderr if err else sys.stdout
    try:
        width = os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (OSError, ValueError):
        return None
    return width or None


def json_text(data: Any) -> str:
    """What ``--json`` prints for one object: one line (NDJSON), compact,
    keys sorted, ASCII only (json.dumps' ensure_ascii): controls, bidi and
    every other non-ASCII character are \\uXXXX escapes, so JSON on a
    terminal is as harmless as the rendered form, and no line break of a
    value can split the line."""
    return dumps(data)  # json.dumps with those settings, without importing json


def seq_range(seqs: list[int]) -> str:
    """'7', or '3-186' for the consecutive sequence numbers of a file."""
    if not seqs:
        return "?"
    return str(seqs[0]) if len(seqs) == 1 else f"{seqs[0]}-{seqs[-1]}"


def sent(result: Mapping[str, Any]) -> list[Line]:
    """A ``send`` result (SendResult JSON)."""
    pending = int(result["pending"])
    state = "sent" if pending == 0 else f"sent, {pending} envelopes still queued"
    return [(f"Message {seq_range(result['seqs'])} to {inline(result['contact'])}: {state}", True)]


def received(item: Mapping[str, Any]) -> list[Line]:
    """One ``receive`` item: a message (Received JSON) or a refused envelope
    (Rejected JSON, with ``rejected``)."""
    err = columns(err=True)
    if "rejected" in item:
        reason, error = str(item["rejected"]), str(item["error"])
        if item.get("relay"):
            # A relay that could not be used: not an envelope's fault; the
            # error names the relay and why.
            return [(f"securechan: {inline(error, width=err, indent=12)}", True)]
        if reason == "split-view":
            return [(f"securechan: SPLIT VIEW: {inline(error, width=err, indent=24)}", True)]
        if reason == "peer-rolled-back":
            return [(f"securechan: PEER ROLLED BACK: {inline(error, width=err, indent=30)}", True)]
        # The error can name a stranger (UnknownSender) or quote a relay.
        held = " (held: pin the sender, then run receive again)" if item.get("held") else ""
        head = f"securechan: refused an envelope: {inline(reason)}: "
        return [(head + inline(error + held, width=err, indent=len(head)), True)]
    out: list[Line] = [
        (f"securechan: note: {inline(str(note), width=err, indent=18)}", True)
        for note in item.get("notes") or ()
    ]
    width = columns()
    mark = "verified" if item["verified"] else "UNVERIFIED"
    who = inline(str(item["contact"]))
    head = f"[{item['sent_at']}] {who} ({mark}) #{item['seq']}"
    if item.get("text") is not None:
        # The contact's text: controls visible, each further line marked.
        text = block(str(item["text"]), width=width, indent=len(head) + 2)
        out.append((f"{head}: {text}", False))
    elif item.get("file") is not None:
        # Where it was saved first; the sender's name for it last, so that
        # name cannot pose as the place it was saved.
        said = f"file saved as {item['file']} (the sender named it: {item.get('file_name') or ''})"
        out.append((f"{head}: {inline(said, width=width, indent=len(head) + 2)}", False))
    elif item.get("receipt_matches") is not None:
        verdict = "matches our record" if item["receipt_matches"] else "DOES NOT MATCH our record"
        out.append((f"{who}: receipt {verdict}", False))
    return out


def history_row(row: Mapping[str, Any]) -> list[Line]:
    """One ``history`` row (HistoryEntry JSON)."""
    arrow = "->" if row["direction"] == "out" else "<-"
    head = f"[{row['sent_at']}] {row['id']} {arrow} {inline(str(row['contact']))} #{row['seq']}: "
    return [(head + block(str(row["summary"]), width=columns(), indent=len(head)), False)]


def status(info: Mapping[str, Any]) -> list[Line]:
    """The ``status`` object (Status JSON)."""
    lines: list[Line] = []
    for k, v in info.items():
        shown = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
        lines.append((f"{k + ':':<10} {inline(shown)}", False))
    return lines


# --- groups (docs/CLI.md, Groups) -------------------------------------------------

# A group entry's status -> the loud line it gets on stderr (as SPLIT VIEW
# and PEER ROLLED BACK do); ``receive`` exits 1 after printing any of them.
GROUP_ALARMS = {
    "equivocation": "GROUP EQUIVOCATION",
    "forked": "GROUP FORKED",
    "withheld": "GROUP WITHHELD",
}


def _group_said(entry: Mapping[str, Any], saved: str | None) -> str:
    """What a group record says, for people: the text, the file, the
    change, or why there is nothing to show."""
    status = str(entry["status"])
    if status == "shown" and entry.get("text") is not None:
        return str(entry["text"])
    if status == "shown" and entry.get("file_name") is not None:
        if saved is not None:
            return f"file saved as {saved} (the sender named it: {entry['file_name']})"
        return str(entry["summary"])  # [file NAME, SIZE bytes (part I of N)]
    if status == "content-pending":
        return f"(content not yet received) {entry['summary']}".rstrip()
    return str(entry["summary"])


def group_entry(entry: Mapping[str, Any], *, saved: str | None = None) -> list[Line]:
    """One group record as ``receive`` shows it (GroupEntry JSON):
    ``[group NAME] sender: text``; a refused record, an equivocation, a
    fork or withheld records as one line on stderr."""
    err = columns(err=True)
    group, sender = inline(str(entry["group"])), inline(str(entry["sender"]))
    status = str(entry["status"])
    where = f"[group {group}] {sender} #{entry['seq']} (position {entry['position']})"
    if status in GROUP_ALARMS:
        head = f"securechan: {GROUP_ALARMS[status]}: {where}: "
        return [(head + inline(str(entry["summary"]), width=err, indent=len(head)), True)]
    if status == "refused":
        head = f"securechan: [group {group}] refused a record at position {entry['position']}: "
        return [(head + inline(str(entry["summary"]), width=err, indent=len(head)), True)]
    head = f"[group {group}] {sender}: "
    if status == "change":
        head = f"[group {group}] {sender} changed the group: "
    elif status == "content-pending":
        head = f"[group {group}] {sender} #{entry['seq']}: "
    text = block(_group_said(entry, saved), width=columns(), indent=len(head))
    return [(head + text, False)]


def group_history_row(entry: Mapping[str, Any]) -> list[Line]:
    """One ``history --group`` row (GroupEntry JSON): time, id, position,
    sender, status and what it says."""
    status = str(entry["status"])
    mark = "" if status in ("shown", "change") else f" [{status.upper()}]"
    head = (
        f"[{entry['sent_at']}] {entry['id']} #{entry['position']} "
        f"{inline(str(entry['sender']))}{mark}: "
    )
    return [(head + block(_group_said(entry, None), width=columns(), indent=len(head)), False)]


def group_sent(result: Mapping[str, Any]) -> list[Line]:
    """A ``send --group`` result (GroupSent JSON)."""
    pending = list(result["pending"])
    state = "sent" if not pending else f"sent; waiting in the outbox for {len(pending)}"
    return [
        (
            f"Group message #{result['seq']} to {inline(str(result['group']))}: {state} "
            f"(position {result['position']}, log index {result['log_index']}, "
            f"id {result['id']})",
            True,
        )
    ]


def group_row(info: Mapping[str, Any]) -> list[Line]:
    """One ``group list`` line (GroupInfo JSON)."""
    members = info["members"]
    left = " (left)" if info.get("left") else ""
    return [
        (
            f"{inline(str(info['name']))}{left}  {len(members)} members  epoch {info['epoch']}  "
            f"{info['records']} records  head {str(info['head'])[:16]}",
            False,
        )
    ]


def group_info(info: Mapping[str, Any]) -> list[Line]:
    """``group show`` (GroupInfo JSON): the group, its policy, epoch and
    transcript head, then one line per member: name, whether verified,
    admin, fingerprint."""
    left = "  (you are no longer a member: read-only)" if info.get("left") else ""
    lines: list[Line] = [
        (f"group:    {inline(str(info['name']))}{left}", False),
        (f"id:       {info['group_id']}", False),
        (f"epoch:    {info['epoch']}", False),
        (f"records:  {info['records']}", False),
        (f"head:     {info['head']}", False),
        (f"policy:   {_POLICIES.get(str(info['policy']), inline(str(info['policy'])))}", False),
        (f"members:  {len(info['members'])}", False),
    ]
    for m in info["members"]:
        if m.get("name") is not None:
            name = inline(str(m["name"]))
        else:
            name = "(you)" if m.get("you") else "(not a contact)"
        mark = "you" if m.get("you") else "verified" if m.get("verified") else "UNVERIFIED"
        admin = "admin" if m.get("admin") else "member"
        lines.append((f"  {name:<20} {mark:<10} {admin:<6} {m['fingerprint']}", False))
    return lines


_POLICIES = {
    "admins": "admins change members and admins; any member may leave but the last admin",
}
