"""Checking an audit log's rows: the hash chain, checkpoints, ``audit.head``.

The pure half of :meth:`securechan.audit.log.AuditLog.verify` (no file
access: the log reads rows and hands them here), normative text in
``docs/AUDIT.md`` ("Local audit log"). Every failure is
:class:`~securechan.errors.AuditLogBroken` naming the first entry at which
the log stops verifying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from securechan.audit.log_records import (
    CONTEXT_CHECKPOINT,
    AuditEntry,
    LogCheckpoint,
    LogSigner,
    entry_hash,
)
from securechan.errors import AuditLogBroken, BadSignature, SecurechanError
from securechan.identity.keys import Fingerprint, PublicIdentity

__all__ = [
    "HEAD_FILE",
    "ZERO_HASH",
    "Chain",
    "VerifyReport",
    "check_head_row",
    "check_head_signature",
    "parse_blob",
    "parse_row",
    "verdict",
]

HEAD_FILE = "audit.head"
ZERO_HASH = bytes(32)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` established about an intact log.

    ``last_checkpoint`` is the index of the last signed checkpoint entry
    (``None`` if there is none yet); ``unsigned`` counts the entries after it,
    which no signature covers yet. ``head_checkpoint`` is the checkpoint that
    ``audit.head`` holds. ``signers`` are the keys the log introduced to sign
    checkpoints (``log-signer`` entries), in order of first introduction.
    """

    entries: int
    checkpoints: int
    last_checkpoint: int | None
    unsigned: int
    head_checkpoint: int | None
    signers: tuple[Fingerprint, ...]


def parse_blob(index: int, blob: object) -> AuditEntry:
    """The stored bytes of entry ``index``, parsed strictly; the entry must
    say it is entry ``index``."""
    if type(blob) is not bytes:
        raise AuditLogBroken(index, "the row is damaged")
    try:
        entry = AuditEntry.from_bytes(blob)
    except (SecurechanError, ValueError, TypeError):
        raise AuditLogBroken(index, "the entry is malformed") from None
    if entry.index != index:
        raise AuditLogBroken(index, f"the row holds entry {entry.index} (moved or reordered)")
    return entry


def parse_row(index: int, row: tuple[Any, ...] | None) -> AuditEntry:
    """The entry in ``row`` (idx, kind, entry, hash), which must be entry
    ``index``: parsed strictly and checked against its row."""
    if row is None:
        raise AuditLogBroken(index, f"entry {index} is missing")
    idx, kind, blob, stored = row
    if type(idx) is not int:
        raise AuditLogBroken(index, "a row has a damaged index")
    if idx != index:
        # Rows are read in index order, so a larger index means rows are gone.
        raise AuditLogBroken(index, f"entry {index} is missing (the next row is entry {idx})")
    if type(blob) is not bytes or type(stored) is not bytes or type(kind) is not str:
        raise AuditLogBroken(index, "the row is damaged")
    entry = parse_blob(index, blob)
    if entry.kind != kind:
        raise AuditLogBroken(index, "the row's kind column does not match the entry")
    return entry


class Chain:
    """Recomputes the hash chain one stored row at a time.

    Raises :class:`AuditLogBroken` at the first row that does not follow: a
    gap, a row out of place, a malformed entry, a hash that does not chain,
    or a checkpoint that does not sign the chain before it. With
    ``check_signatures`` every checkpoint's signature is verified with the
    key introduced by an earlier ``log-signer`` entry.
    """

    def __init__(self, *, start: int = 0, prev: bytes = ZERO_HASH, check_signatures: bool) -> None:
        self.next = start
        self.prev = prev
        self.check_signatures = check_signatures
        self.signers: dict[bytes, PublicIdentity] = {}
        self.order: list[Fingerprint] = []
        self.checkpoints = 0
        self.last_checkpoint: tuple[int, LogCheckpoint] | None = None
        self.last_good = -1  # index of the last checkpoint that verified

    def feed(self, row: tuple[Any, ...]) -> AuditEntry:
        """Check the next row; return its entry."""
        i = self.next
        entry = parse_row(i, row)
        digest = entry_hash(self.prev, row[2])
        if digest != row[3]:
            raise AuditLogBroken(
                i, "the entry does not chain from the one before it (changed, inserted or moved)"
            )
        fields = entry.fields
        if isinstance(fields, LogSigner):
            fp = fields.identity.fingerprint
            if fp.digest not in self.signers:
                self.order.append(fp)
            self.signers[fp.digest] = fields.identity
        elif isinstance(fields, LogCheckpoint):
            self._checkpoint(i, entry.time, fields)
        self.prev = digest
        self.next = i + 1
        return entry

    def _checkpoint(self, i: int, at: int, cp: LogCheckpoint) -> None:
        if cp.count != i:
            raise AuditLogBroken(i, f"the checkpoint claims to be at entry {cp.count}")
        if cp.time != at:
            raise AuditLogBroken(i, "the checkpoint's time differs from its entry's")
        if cp.head != self.prev:
            since = "the start" if self.last_good < 0 else f"entry {self.last_good}"
            raise AuditLogBroken(
                i,
                f"the signed checkpoint does not match the entries before it: "
                f"an entry after {since} was changed, inserted, removed or reordered",
            )
        if self.check_signatures:
            signer = self.signers.get(cp.signer)
            if signer is None:
                raise AuditLogBroken(i, "the checkpoint's key was never introduced in the log")
            try:
                signer.verify(cp.signature, cp.body_bytes(), context=CONTEXT_CHECKPOINT)
            except BadSignature:
                raise AuditLogBroken(i, "the checkpoint's signature does not verify") from None
        self.checkpoints += 1
        self.last_checkpoint = (i, cp)
        self.last_good = i


def check_head_signature(head: tuple[LogCheckpoint, bytes] | None, trusted: PublicIdentity) -> None:
    """``audit.head`` (if any) must be signed by ``trusted``."""
    if head is None:
        return
    cp, _ = head
    if cp.signer != trusted.fingerprint.digest:
        raise AuditLogBroken(
            None, f"{HEAD_FILE} is signed by {Fingerprint(cp.signer)}, not by this identity"
        )
    try:
        trusted.verify(cp.signature, cp.body_bytes(), context=CONTEXT_CHECKPOINT)
    except BadSignature:
        raise AuditLogBroken(None, f"{HEAD_FILE}'s signature does not verify") from None


def verdict(
    chain: Chain,
    head: tuple[LogCheckpoint, bytes] | None,
    head_row: tuple[Any, ...] | None,
    trusted: PublicIdentity,
) -> VerifyReport:
    """After every row was fed to ``chain``: check ``audit.head`` against
    its row and the last checkpoint's signer; the report."""
    n = chain.next
    if head is not None:
        check_head_row(head[0], head[1], head_row, n)
    last = chain.last_checkpoint
    if last is not None:
        if last[1].signer != trusted.fingerprint.digest:
            raise AuditLogBroken(
                last[0],
                f"the last signed checkpoint is by {Fingerprint(last[1].signer)}, "
                f"not by this identity ({trusted.fingerprint})",
            )
        if head is None:
            raise AuditLogBroken(
                None, f"{HEAD_FILE} is missing, but the log holds signed checkpoints"
            )
    return VerifyReport(
        entries=n,
        checkpoints=chain.checkpoints,
        last_checkpoint=last[0] if last is not None else None,
        unsigned=n - (last[0] + 1) if last is not None else n,
        head_checkpoint=head[0].count if head is not None else None,
        signers=tuple(chain.order),
    )


def check_head_row(cp: LogCheckpoint, raw: bytes, row: tuple[Any, ...] | None, n: int) -> None:
    """The row at ``cp.count`` must be the checkpoint ``audit.head`` holds."""
    if cp.count >= n:
        raise AuditLogBroken(
            n,
            f"entries from {n} on are missing: {HEAD_FILE} holds a signed "
            f"checkpoint at entry {cp.count} (the log was cut short)",
        )
    if row is None:
        raise AuditLogBroken(cp.count, f"the checkpoint {HEAD_FILE} holds is missing")
    try:
        stored = parse_row(cp.count, row).fields
    except AuditLogBroken:
        stored = None
    if not isinstance(stored, LogCheckpoint) or stored.to_bytes() != raw:
        raise AuditLogBroken(cp.count, f"the entry is not the checkpoint {HEAD_FILE} holds")
