"""The C2SP tlog-witness ``add-checkpoint`` call, sans I/O: parse, check, answer.

https://c2sp.org/tlog-witness (the spec this module follows line by line).
A log POSTs::

    old <size>\\n                  the size the log thinks we last cosigned
    <base64 hash>\\n *             0 .. 63 consistency proof lines
    \\n
    <signed checkpoint note>      the log's signature, maybe others'

and the witness answers, in the spec's order of checks:

* 400: the body is not that (bad old line, proof line, more than 63 lines,
  a note or checkpoint that does not parse), or ``old`` > the new size;
* 404: no configured log has the checkpoint's origin;
* 403: no signature by the log's configured key, or one that fails;
* 409: ``old`` is not the size this witness last cosigned for that origin
  (0 if never); the body is that size and a newline, content type
  ``text/x.tlog.size``;
* 422: a size-0 checkpoint whose root is not the empty tree's, a proof that
  does not verify (RFC 9162 §2.1.4), a non-empty proof from size 0, or
  another root for the size cosigned;
* 200: the cosignature lines, one Ed25519 ``cosignature/v1`` (type 0x04) and
  one ML-DSA-44 (type 0x06), both timestamped ``now``; the new state must be
  stored before they are sent (the caller does that, under its lock).

Nothing here reads a file, a clock or a socket. :func:`add_checkpoint`
returns a :class:`WitnessAnswer`: status, content type, body, and for a 200
the new state; for a 422 caused by an inconsistent checkpoint the
:class:`~securechan.errors.SplitView` evidence too.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass

from securechan.audit.checkpoint import Checkpoint
from securechan.audit.merkle import EMPTY_ROOT, HASH_SIZE
from securechan.audit.note import (
    MAX_NOTE_BYTES,
    SIG_ED25519,
    SignedNote,
    VerifierKey,
    open_note,
)
from securechan.audit.witness import WitnessState, witness_checkpoint
from securechan.errors import BadSignature, MalformedInput, ProofFailed, SplitView, UntrustedKey
from securechan.primitives import Ed25519SigningKey, MlDsa44SigningKey

__all__ = [
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "WitnessAnswer",
    "add_checkpoint",
    "parse_add_checkpoint",
]

MAX_PROOF_LINES = 63
"""tlog-witness: "The client MUST NOT send more than 63 consistency proof lines"."""
MAX_REQUEST_BYTES = 64 + MAX_PROOF_LINES * 45 + MAX_NOTE_BYTES
"""The old line, 63 proof lines and the largest note this package parses."""
SIZE_CONTENT_TYPE = "text/x.tlog.size"

_OLD = re.compile(rb"old (0|[1-9][0-9]{0,19})")
_HASH = re.compile(rb"[A-Za-z0-9+/]{43}=")
_EMPTY_ROOT_LINE = base64.b64encode(EMPTY_ROOT).decode()


@dataclass(frozen=True, slots=True, kw_only=True)
class AddCheckpoint:
    """A parsed ``add-checkpoint`` body (nothing verified yet)."""

    old: int
    proof: tuple[bytes, ...]
    note: bytes


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Split an ``add-checkpoint`` body strictly; :class:`MalformedInput`
    (a 400) for anything but the spec's form. The note is not parsed here."""
    if not isinstance(body, bytes) or len(body) > MAX_REQUEST_BYTES:
        raise MalformedInput("the request body is too large")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise MalformedInput("no empty line before the checkpoint")
    lines = head.split(b"\n")
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise MalformedInput("the first line is 'old <size>'")
    old = int(match.group(1))
    if old >= 1 << 64:
        raise MalformedInput("the old size is a u64")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedInput("more than 63 consistency proof lines")
    proof = []
    for line in lines[1:]:
        raw = base64.b64decode(line) if _HASH.fullmatch(line) else b""
        if len(raw) != HASH_SIZE or base64.b64encode(raw) != line:
            raise MalformedInput("a consistency proof line is one base64 hash")
        proof.append(raw)
    return AddCheckpoint(old=old, proof=tuple(proof), note=note)


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessAnswer:
    """What to answer: status, content type and body; a 200's new state;
    the evidence of a 422 that shows a fork (to keep, as the spec allows)."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    state: WitnessState | None = None
    evidence: SplitView | None = None


def _fail(status: int, why: str) -> WitnessAnswer:
    return WitnessAnswer(status=status, body=(why + "\n").encode())


def add_checkpoint(
    state: WitnessState,
    logs: Mapping[str, VerifierKey],
    body: bytes,
    *,
    name: str,
    key: Ed25519SigningKey,
    pq_key: MlDsa44SigningKey,
    now: int,
) -> WitnessAnswer:
    """Answer one ``add-checkpoint`` request as witness ``name``.

    ``logs`` maps each configured origin to its log's Ed25519 (type 0x01)
    verifier key (whose name is the origin). ``state`` is unchanged; a 200
    carries the new one, which the caller must store before answering.
    """
    try:
        req = parse_add_checkpoint(body)
        note = SignedNote.from_text_unverified(req.note)
        origin = note.text.split("\n", 1)[0]
    except MalformedInput as e:
        return _fail(400, f"malformed request: {e}")
    log_key = logs.get(origin)
    if log_key is None:
        return _fail(404, "unknown log origin")
    if log_key.sig_type != SIG_ED25519:
        raise ValueError("a log's verifier key is an Ed25519 (type 0x01) key")
    try:
        opened = open_note(req.note, [log_key])
    except BadSignature:
        return _fail(403, "no valid signature by the log's key")
    except MalformedInput as e:
        return _fail(400, f"malformed checkpoint: {e}")
    lines = opened.text.split("\n")
    if len(lines) > 3 and lines[1] == "0" and lines[2] != _EMPTY_ROOT_LINE:
        return _fail(422, "a checkpoint of size 0 has the empty tree's root")
    try:
        checkpoint = Checkpoint.from_text(opened.text)
    except MalformedInput as e:
        return _fail(400, f"malformed checkpoint: {e}")
    if req.old > checkpoint.size:
        return _fail(400, "the old size is larger than the checkpoint's")
    prev = state.get(origin)
    cosigned = 0 if prev is None else prev.checkpoint.size
    if req.old != cosigned:
        return WitnessAnswer(
            status=409, body=f"{cosigned}\n".encode(), content_type=SIZE_CONTENT_TYPE
        )
    if req.old == 0 and req.proof:
        return _fail(422, "a proof from size 0 is empty")
    try:
        done = witness_checkpoint(
            state,
            key=key,
            name=name,
            log_key=log_key,
            note=req.note,
            proof=req.proof,
            now=now,
            pq_key=pq_key,
        )
    except SplitView as e:
        return WitnessAnswer(status=422, body=f"{e}\n".encode(), evidence=e)
    except ProofFailed as e:
        return _fail(422, f"the consistency proof does not verify: {e}")
    except UntrustedKey as e:
        return _fail(403, str(e))
    return WitnessAnswer(status=200, body=done.line.encode(), state=done.state)
