"""A transparency-log witness, sans I/O: check a checkpoint, cosign it, remember it.

This is the witness side of ``docs/AUDIT.md`` ("Witnesses"), which follows
c2sp.org/tlog-witness with the roles of client and server swapped: the
witness fetches the relay's checkpoint and a consistency proof, and posts its
cosignature back. The checks are the ones the spec puts in ``add-checkpoint``:

1. The checkpoint note MUST carry a valid signature by the pinned log key,
   whose name is the checkpoint's origin (other signatures are ignored).
2. Against the last checkpoint this witness cosigned for that origin (none:
   size 0 and the empty tree's root), the new size MUST NOT be smaller; an
   equal size MUST carry the same root; a larger one MUST come with a
   consistency proof (RFC 9162 §2.1.4.2) from the old tree to the new one,
   empty from size 0.
3. Only then is a tlog-cosignature v1 line (type 0x04, timestamped) made with
   :func:`~securechan.audit.checkpoint.cosign_checkpoint`, and the new state
   returned, so that the caller stores it before it hands the line out.

Failures of step 2 raise :class:`~securechan.errors.SplitView` carrying the
two relay-signed notes (the one cosigned before and the new one): a log that
signs two roots for one size, or grows into a tree that does not extend the
old one, has shown two histories, and the pair is the evidence. A log that
shrinks is refused the same way, though that pair alone proves less: the
relay re-signs past sizes on request, so a replayed or cached older
checkpoint looks the same (``docs/AUDIT.md`` says how to tell them apart).
Failures of step 1 raise what :func:`open_checkpoint` raises; a log key other
than the one this witness cosigned the origin under raises
:class:`~securechan.errors.UntrustedKey`. On every failure the state is
unchanged (it is an immutable value; the caller keeps the old one).

Nothing here reads a file, a clock or the network: the caller passes the
state, the note and proof it fetched, and ``now``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from securechan import strict_json
from securechan.audit.checkpoint import Checkpoint, cosign_checkpoint, open_checkpoint
from securechan.audit.merkle import EMPTY_ROOT, verify_consistency
from securechan.audit.note import (
    MAX_TIMESTAMP,
    SIG_ED25519,
    SIG_MLDSA44_COSIGNATURE,
    NoteSigner,
    SignedNote,
    VerifierKey,
    open_note,
)
from securechan.errors import (
    BadSignature,
    MalformedInput,
    ProofFailed,
    SplitView,
    UntrustedKey,
    VerificationFailed,
)
from securechan.primitives import Ed25519SigningKey, MlDsa44SigningKey

__all__ = [
    "MAX_STATE_BYTES",
    "STATE_VERSION",
    "Cosigned",
    "WitnessState",
    "WitnessedLog",
    "already_cosigned",
    "relay_signed_note",
    "witness_checkpoint",
]

STATE_VERSION = 1
# One witness follows a handful of logs; the bound only keeps a damaged
# state file from costing more than that.
MAX_LOGS = 256
# The largest state file read (MAX_LOGS notes with their cosignatures).
MAX_STATE_BYTES = 16 * 1024 * 1024


def relay_signed_note(note: bytes | str, log_key: VerifierKey) -> str:
    """The note with only the log's own signature kept (not verified here).

    What a witness stores and posts: cosignatures by others are no business
    of this witness, and reposting them could make the relay refuse ours
    (another witness may since have cosigned a newer size).
    """
    parsed = SignedNote.from_text_unverified(note)
    mine = tuple(
        s for s in parsed.signatures if (s.name, s.key_id) == (log_key.name, log_key.key_id)
    )
    if not mine:
        raise BadSignature("the note has no signature from a known key")
    return SignedNote(text=parsed.text, signatures=mine).to_text()


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessedLog:
    """The last checkpoint a witness cosigned for one log, and how it knew it."""

    log_key: VerifierKey
    note: str  # the relay-signed note, exactly as fetched minus others' cosignatures
    checkpoint: Checkpoint
    timestamp: int  # the time our cosignature states

    @property
    def origin(self) -> str:
        """The log's origin (= its key name)."""
        return self.checkpoint.origin


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessState:
    """What a witness remembers: per log origin, the last checkpoint it cosigned."""

    logs: tuple[WitnessedLog, ...] = ()

    def __post_init__(self) -> None:
        origins = [entry.origin for entry in self.logs]
        if len(set(origins)) != len(origins):
            raise ValueError("one entry per log origin")
        if len(origins) > MAX_LOGS:
            raise ValueError("too many logs")

    def get(self, origin: str) -> WitnessedLog | None:
        """The entry for ``origin``, if this witness ever cosigned it."""
        for entry in self.logs:
            if entry.origin == origin:
                return entry
        return None

    def old_size(self, log_key: VerifierKey) -> int:
        """The size to ask a consistency proof from (0 for a log never cosigned)."""
        entry = self.get(log_key.name)
        return 0 if entry is None else entry.checkpoint.size

    def replace(self, entry: WitnessedLog) -> WitnessState:
        """A new state with ``entry`` for its origin."""
        others = tuple(e for e in self.logs if e.origin != entry.origin)
        return WitnessState(logs=tuple(sorted((*others, entry), key=lambda e: e.origin)))

    def to_json(self) -> str:
        """``{"version": 1, "logs": [{"log_key", "note", "timestamp"}, ...]}``."""
        logs = [
            {"log_key": e.log_key.to_text(), "note": e.note, "timestamp": e.timestamp}
            for e in self.logs
        ]
        return json.dumps({"version": STATE_VERSION, "logs": logs}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> WitnessState:
        """Parse strictly (:mod:`securechan.strict_json`: UTF-8 only, no
        duplicate names); every stored note must verify under its stored log
        key.

        The file is this witness's own, but re-checking costs one signature
        per log and means a damaged file is refused rather than trusted as a
        baseline. Raises :class:`MalformedInput`.
        """
        data: Any = strict_json.loads(text, max_size=MAX_STATE_BYTES, what="the witness state")
        if not isinstance(data, dict) or set(data) != {"version", "logs"}:
            raise MalformedInput("malformed witness state")
        if data["version"] != STATE_VERSION:
            raise MalformedInput(f"unknown witness state version {data['version']!r}")
        logs = data["logs"]
        if not isinstance(logs, list) or len(logs) > MAX_LOGS:
            raise MalformedInput("malformed witness state")
        entries = []
        for item in logs:
            if not isinstance(item, dict) or set(item) != {"log_key", "note", "timestamp"}:
                raise MalformedInput("malformed witness state entry")
            stamp = item["timestamp"]
            if type(stamp) is not int or not 0 <= stamp <= MAX_TIMESTAMP:
                raise MalformedInput("malformed witness state entry")
            if not isinstance(item["log_key"], str) or not isinstance(item["note"], str):
                raise MalformedInput("malformed witness state entry")
            key = _log_key(VerifierKey.from_text(item["log_key"]))
            try:
                checkpoint = open_checkpoint(item["note"], key)
            except (VerificationFailed, MalformedInput) as e:
                raise MalformedInput(f"a checkpoint in the witness state: {e}") from None
            entries.append(
                WitnessedLog(log_key=key, note=item["note"], checkpoint=checkpoint, timestamp=stamp)
            )
        try:
            return cls(logs=tuple(entries))
        except ValueError as e:
            raise MalformedInput(f"malformed witness state: {e}") from None


def _log_key(key: VerifierKey) -> VerifierKey:
    if key.sig_type != SIG_ED25519:
        raise MalformedInput("a log's verifier key is an Ed25519 (type 0x01) key")
    return key


@dataclass(frozen=True, slots=True, kw_only=True)
class Cosigned:
    """A checkpoint a witness checked and cosigned, and its state after that."""

    checkpoint: Checkpoint
    old_size: int
    line: str  # the tlog-cosignature line(s) (what add-checkpoint answers)
    note: str  # the relay-signed note followed by ``line``: what is posted
    state: WitnessState


def witness_checkpoint(
    state: WitnessState,
    *,
    key: Ed25519SigningKey,
    name: str,
    log_key: VerifierKey,
    note: bytes | str,
    proof: Sequence[bytes],
    now: int,
    pq_key: MlDsa44SigningKey | None = None,
) -> Cosigned:
    """Check ``note`` against ``state`` and cosign it as witness ``name``.

    ``proof`` is the consistency proof from ``state.old_size(log_key)`` to
    the note's size (empty when that is 0 or the sizes are equal). ``now`` is
    the cosignature's timestamp, POSIX seconds. With ``pq_key``, the
    cosignature lines are two: Ed25519 (type 0x04), then ML-DSA-44 (type
    0x06) under the same name.

    Raises :class:`MalformedInput`, :class:`BadSignature` or
    :class:`VerificationFailed` for a note the log key does not sign,
    :class:`UntrustedKey` if this witness cosigned the origin under another
    key, :class:`SplitView` (with the old and new notes) when the new
    checkpoint does not extend the one cosigned before, and
    :class:`ProofFailed` for a non-empty proof from size 0. ``state`` is
    unchanged.
    """
    if log_key.sig_type != SIG_ED25519:
        raise ValueError("a log's verifier key is an Ed25519 (type 0x01) key")
    if type(now) is not int or not 0 <= now <= MAX_TIMESTAMP:
        raise ValueError("now is a POSIX time in 0 .. 2**63 - 1")
    checkpoint = open_checkpoint(note, log_key)  # step 1: the log's own signature
    signed = relay_signed_note(note, log_key)
    prev = state.get(log_key.name)
    if prev is not None and prev.log_key != log_key:
        raise UntrustedKey(
            f"this witness cosigned {log_key.name} under another log key "
            f"({prev.log_key.to_text()}); not cosigning under a new one"
        )
    if prev is None:
        # Nothing cosigned yet: the old tree is the empty one, and the proof
        # from it is empty (tlog-witness). A non-empty one is just malformed.
        verify_consistency(0, checkpoint.size, list(proof), EMPTY_ROOT, checkpoint.root_hash)
        return _cosigned(state, (key, pq_key), name, log_key, signed, checkpoint, 0, now)
    old_size, old_root = prev.checkpoint.size, prev.checkpoint.root_hash
    evidence = (prev.note, signed)
    # Step 2, the checks of tlog-witness add-checkpoint.
    if checkpoint.size < old_size:
        raise SplitView(
            f"the log {log_key.name} went back from size {old_size} (cosigned) "
            f"to {checkpoint.size}: not cosigning",
            evidence,
        )
    try:
        verify_consistency(old_size, checkpoint.size, list(proof), old_root, checkpoint.root_hash)
    except ProofFailed:
        what = (
            "signed another root for size"
            if checkpoint.size == old_size
            else "is not consistent with the tree of size"
        )
        raise SplitView(
            f"the log {log_key.name} {what} {old_size} this witness cosigned "
            f"(new size {checkpoint.size}): not cosigning",
            evidence,
        ) from None
    return _cosigned(state, (key, pq_key), name, log_key, signed, checkpoint, old_size, now)


def _cosigned(
    state: WitnessState,
    keys: tuple[Ed25519SigningKey, MlDsa44SigningKey | None],
    name: str,
    log_key: VerifierKey,
    signed: str,
    checkpoint: Checkpoint,
    old_size: int,
    now: int,
) -> Cosigned:
    """Step 3: the new state, and the cosignature line."""
    entry = WitnessedLog(log_key=log_key, note=signed, checkpoint=checkpoint, timestamp=now)
    key, pq_key = keys
    line = cosign_checkpoint(key, name, checkpoint, timestamp=now)
    if pq_key is not None:
        pq = NoteSigner(name, pq_key, sig_type=SIG_MLDSA44_COSIGNATURE)
        line += pq.sign(checkpoint.to_text(), timestamp=now).to_line()
    return Cosigned(
        checkpoint=checkpoint,
        old_size=old_size,
        line=line,
        note=signed + line,
        state=state.replace(entry),
    )


def already_cosigned(
    state: WitnessState, note: bytes | str, log_key: VerifierKey, witness: VerifierKey
) -> bool:
    """True if ``note`` is the checkpoint last cosigned here and already
    carries a valid cosignature by ``witness`` (nothing new to sign or post).

    Never raises for a bad note: anything unexpected means "not yet", and
    :func:`witness_checkpoint` then does the full check.
    """
    entry = state.get(log_key.name)
    if entry is None or entry.log_key != log_key:
        return False
    try:
        opened = open_note(note, [log_key, witness])
        checkpoint = Checkpoint.from_text(opened.text)
    except (BadSignature, MalformedInput):
        return False
    return (
        checkpoint == entry.checkpoint
        and opened.verified_by(log_key) is not None
        and opened.verified_by(witness) is not None
    )
