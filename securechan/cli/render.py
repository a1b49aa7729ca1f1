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


__all__ = ["columns", "history_row", "json_text", "received", "sent", "status"]

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
