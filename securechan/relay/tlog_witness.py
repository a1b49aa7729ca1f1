"""Witnesses of the relay's transparency log: their cosignatures, checked
and stored (c2sp.org/tlog-cosignature, c2sp.org/tlog-witness with the roles
swapped: the witness posts, the log stores; ``docs/AUDIT.md``).

:class:`Witnesses` runs on the log's writer thread (the staleness check and
the update are atomic, the race tlog-witness warns about); the event loop
reads :attr:`Witnesses.cosigs`, which is replaced whole, never changed.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from securechan.audit.checkpoint import Checkpoint
from securechan.audit.note import (
    MAX_TIMESTAMP,
    SIG_COSIGNATURE_V1,
    NoteSignature,
    NoteSigner,
    SignedNote,
    VerifierKey,
)
from securechan.errors import BadSignature, MalformedInput, Reason, VerificationFailed
from securechan.relay.tlog_schema import synced_transaction

__all__ = [
    "DEFAULT_COSIGN_WINDOW",
    "MAX_FUTURE_COSIGNATURE",
    "Cosig",
    "CosignatureRefused",
    "Head",
    "Witnesses",
    "parse_witness_keys",
]

log = logging.getLogger("securechan.relay")

DEFAULT_COSIGN_WINDOW: Final = 300.0
"""Seconds a superseded checkpoint may still be cosigned."""
MAX_FUTURE_COSIGNATURE: Final = 300
"""A cosignature dated further ahead of the relay's clock is refused."""
_COSIGN_HISTORY: Final = 65_536


class CosignatureRefused(VerificationFailed):
    """A posted cosignature was not stored; ``reason`` says why.

    ``malformed`` (not a cosigned checkpoint of this log, or dated in the
    future), ``unknown_witness`` (no signature by a configured witness),
    ``bad_signature`` (a configured witness's signature fails), ``not_in_log``
    (a size or root this log never had), ``stale`` (older than the window or
    than the witness's last cosignature; ``log_size`` is the current size).
    """

    code = Reason.COSIGNATURE_REFUSED

    def __init__(self, reason: str, message: str, *, log_size: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.log_size = log_size


class Roots(Protocol):
    """A tree's root at a past size (a TreeStore, or the PostgreSQL log's)."""

    def root(self, size: int | None = None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Head:
    """The newest checkpoint: its size, root, note text and the relay's signature."""

    size: int
    root: bytes
    text: str
    signature: NoteSignature


@dataclass(frozen=True, slots=True)
class Cosig:
    size: int
    timestamp: int
    signature: NoteSignature


class Witnesses:
    """The configured witnesses of one log and the cosignatures held."""

    def __init__(
        self,
        origin: str,
        signer: NoteSigner,
        witnesses: Sequence[VerifierKey],
        *,
        window: float,
        clock: Callable[[], float],
    ) -> None:
        known: dict[tuple[str, bytes], VerifierKey] = {}
        for w in witnesses:
            if not isinstance(w, VerifierKey) or w.sig_type != SIG_COSIGNATURE_V1:
                raise ValueError("witness keys are tlog-cosignature (type 0x04) verifier keys")
            if known.setdefault((w.name, w.key_id), w) != w:
                raise ValueError("two witness keys share a name and key ID")
        if not 0 <= window <= 86_400:
            raise ValueError("cosign_window is 0 to 86400 seconds")
        self.origin = origin
        self.keys: tuple[VerifierKey, ...] = tuple(known.values())
        self.cosigs: dict[str, Cosig] = {}
        self._signer = signer
        self._window = float(window)
        self._clock = clock
        # (monotonic time, size before) of each batch that grew the tree, for
        # the cosignature window; touched by the writer thread only.
        self._grown: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=_COSIGN_HISTORY
        )

    def grew(self, start: int) -> None:
        """A batch grew the tree from ``start`` (writer thread)."""
        self._grown.append((time.monotonic(), start))

    def compose(self, text: str, size: int, relay_sig: NoteSignature) -> str:
        """The signed note of a checkpoint with the cosignatures held for ``size``."""
        cosigs = self.cosigs
        extra = tuple(
            c.signature for w in self.keys if (c := cosigs.get(w.to_text())) and c.size == size
        )
        return SignedNote(text=text, signatures=(relay_sig, *extra)).to_text()

    def load(self, tree: Roots, index: Any, size: int) -> dict[str, Cosig]:
        """Stored cosignatures of configured witnesses that still verify.

        One that fails would make clients reject the whole note (a known key's
        bad signature does), so a damaged row is dropped, not served.
        """
        by_text = {w.to_text(): w for w in self.keys}
        out: dict[str, Cosig] = {}
        rows = index.execute(
            "SELECT witness, size, timestamp, line FROM relay_log_cosignatures"
        ).fetchall()
        for witness, at, timestamp, line in rows:
            w = by_text.get(witness)
            if w is None or type(at) is not int or not 0 <= at <= size:
                continue
            text = Checkpoint(origin=self.origin, size=at, root_hash=tree.root(at)).to_text()
            try:
                sig = NoteSignature.from_line(line)
                if w.verify(text.encode(), sig.signature) != timestamp:
                    raise BadSignature("timestamp mismatch")
            except (MalformedInput, BadSignature, ValueError):
                log.warning("transparency log: dropped a stored cosignature that fails")
                continue
            out[witness] = Cosig(at, timestamp, sig)
        return out

    def _recent_floor(self, head_size: int) -> int:
        """The oldest size a cosignature may still be for (writer thread)."""
        cutoff = time.monotonic() - self._window
        while self._grown and self._grown[0][0] < cutoff:
            self._grown.popleft()
        return self._grown[0][1] if self._grown else head_size

    def cosign(self, tree: Roots, index: Any, body: bytes, head: Head) -> str:
        # Check and store on the writer thread: the staleness check and the
        # update are atomic (the race c2sp.org/tlog-witness warns about).
        try:
            note = SignedNote.from_text_unverified(body)
            cp = Checkpoint.from_text(note.text)
        except MalformedInput as e:
            raise CosignatureRefused("malformed", str(e)) from None
        if cp.origin != self.origin:
            raise CosignatureRefused("malformed", "the checkpoint is not of this log")
        known = {(w.name, w.key_id): w for w in self.keys}
        mine = [
            (known[(s.name, s.key_id)], s) for s in note.signatures if (s.name, s.key_id) in known
        ]
        if not mine:
            raise CosignatureRefused("unknown_witness", "no cosignature by a witness of this log")
        if cp.size > head.size:
            raise CosignatureRefused("not_in_log", "the log never had a tree of that size")
        root = head.root if cp.size == head.size else tree.root(cp.size)
        ours = Checkpoint(origin=self.origin, size=cp.size, root_hash=root).to_text()
        if note.text != ours:
            # A validly signed checkpoint of ours with another root would mean
            # the log key signed two histories: keep a trace for the operator.
            log.error("transparency log: a witness posted a checkpoint this log never had")
            raise CosignatureRefused("not_in_log", "the log's tree of that size differs")
        message = note.text.encode()
        limit = int(self._clock()) + MAX_FUTURE_COSIGNATURE
        verified: list[tuple[VerifierKey, int, NoteSignature]] = []
        for w, sig in mine:
            try:
                timestamp = w.verify(message, sig.signature)
            except BadSignature:
                raise CosignatureRefused("bad_signature", "a cosignature does not verify") from None
            if timestamp is None or not 0 <= timestamp <= min(limit, MAX_TIMESTAMP):
                raise CosignatureRefused("malformed", "a cosignature is dated in the future")
            verified.append((w, timestamp, sig))
        floor = self._recent_floor(head.size)
        cosigs = self.cosigs
        for w, _, _ in verified:
            prev = cosigs.get(w.to_text())
            if cp.size < floor or (prev is not None and prev.size > cp.size):
                raise CosignatureRefused(
                    "stale", "a newer checkpoint must be cosigned", log_size=head.size
                )
        updated = dict(cosigs)
        rows = []
        for w, timestamp, sig in verified:
            prev = cosigs.get(w.to_text())
            if prev is not None and (prev.size, prev.timestamp) >= (cp.size, timestamp):
                continue  # keep the newer one we hold
            updated[w.to_text()] = Cosig(cp.size, timestamp, sig)
            rows.append((w.to_text(), cp.size, timestamp, sig.to_line().removesuffix("\n")))
        if rows:
            self.store(index, rows)
            self.cosigs = updated
        relay_sig = head.signature if cp.size == head.size else self._signer.sign(note.text)
        return self.compose(note.text, cp.size, relay_sig)

    def store(self, index: Any, rows: list[tuple[str, int, int, str]]) -> None:
        """Store cosignature rows (witness, size, timestamp, line) through
        ``index`` (tlog.db's connection here; the PostgreSQL log overrides)."""
        # Durable before the answer, like a witness's own state: FULL for
        # this one commit on the (otherwise NORMAL) index connection.
        with synced_transaction(index):
            index.executemany(
                "INSERT INTO relay_log_cosignatures (witness, size, timestamp, line)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (witness) DO UPDATE SET"
                " size = excluded.size, timestamp = excluded.timestamp,"
                " line = excluded.line",
                rows,
            )


def parse_witness_keys(lines: Sequence[str]) -> tuple[VerifierKey, ...]:
    """Witness verifier keys from text lines (``#`` comments and blanks
    skipped); ``MalformedInput`` for a line that is not a type 0x04 key."""
    keys: list[VerifierKey] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = VerifierKey.from_text(line)
        if key.sig_type != SIG_COSIGNATURE_V1:
            raise MalformedInput("a witness key is a tlog-cosignature (type 0x04) verifier key")
        if key not in keys:
            keys.append(key)
    return tuple(keys)
