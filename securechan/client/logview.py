"""What this client has seen of each relay's transparency log.

Per relay, the client pins the log's verifier key (equal to the relay key it
pinned when registering) and keeps the newest checkpoint it verified. Every
new checkpoint, from a send receipt, from the relay before a message is
signed, or carried inside a peer's message, must be consistent with that one
(a consistency proof from the relay, either way); one that is not is a
**split view**: the relay signed two histories, and both signed notes are the
evidence (``docs/AUDIT.md``, Receipts and Split views). The newest
checkpoints travel inside our own messages for the peer to check in turn.

The log's ML-DSA-44 key (``log_mldsa44_verifier_key`` of ``/v1/relay``) is
pinned with the Ed25519 one, on first use, and from then on every checkpoint
this view accepts must carry a valid ML-DSA-44 line by it as well
(``docs/PROTOCOL.md``, Checkpoints): a quantum attacker who forges the
relay's Ed25519 signature still cannot make this client accept a checkpoint.
Both keys share one database column, ``"<Ed25519 vkey> <ML-DSA-44 vkey>"``
(vkeys hold no space); a relay pinned before it published one has none.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from securechan.audit.checkpoint import Checkpoint, open_checkpoint
from securechan.audit.log import AuditLog
from securechan.audit.merkle import MAX_TREE_SIZE, verify_consistency
from securechan.audit.note import SIG_MLDSA44_COSIGNATURE, VerifierKey, open_note
from securechan.client.db import ClientDB
from securechan.client.tiles import relay_consistency
from securechan.errors import (
    BadSignature,
    MalformedInput,
    ProofFailed,
    Reason,
    RelayError,
    RelayRefused,
    SplitView,
    UntrustedKey,
    VerificationFailed,
    reason_of,
)
from securechan.protocol.payload import MAX_CHECKPOINT_TEXT, MAX_CHECKPOINTS
from securechan.transport import RelayClient

__all__ = ["Appended", "RelayLogs", "appended_proof", "pinned_keys", "require_pq_line"]


@dataclass(frozen=True, slots=True)
class Appended:
    """What a verified send receipt says about the checkpoint it carries:
    leaf ``index``, whose hash is ``leaf``, is in that checkpoint's tree by
    the inclusion ``path`` (already checked against its root by
    :func:`~securechan.audit.receipt.verify_receipt`)."""

    index: int
    leaf: bytes
    path: tuple[bytes, ...]


def appended_proof(appended: Appended) -> list[bytes]:
    """``PROOF(index, D[index + 1])`` (RFC 9162 §2.1.4.1) for a tree that
    grew by the one leaf ``appended.index``, from that leaf's hash and its
    inclusion path: the path of the last leaf is the roots of the perfect
    subtrees of the ``index`` leaves before it, smallest first, so the
    consistency proof is the same hashes with the new leaf after the first
    (only the new leaf when ``index`` is a power of two). Unverified: check
    it with :func:`~securechan.audit.merkle.verify_consistency` like any
    proof (a wrong one fails there, it proves nothing)."""
    index, path = appended.index, list(appended.path)
    if not 0 < index < MAX_TREE_SIZE - 1 or not path:
        return []
    if index & (index - 1) == 0:
        return [appended.leaf]
    return [path[0], appended.leaf, *path[1:]]


def pinned_keys(text: str) -> tuple[VerifierKey, VerifierKey | None]:
    """The (Ed25519, ML-DSA-44 or None) log keys of a ``relay_logs`` row."""
    ed, _, pq = text.partition(" ")
    return VerifierKey.from_text(ed), VerifierKey.from_text(pq) if pq else None


def require_pq_line(note: str, pq: VerifierKey | None) -> None:
    """:class:`BadSignature` unless ``note`` carries a valid line by ``pq``
    (nothing is required when no ML-DSA-44 key is pinned)."""
    if pq is not None and open_note(note, [pq]).verified_by(pq) is None:
        raise BadSignature("the checkpoint lacks the log's ML-DSA-44 signature")


class RelayLogs:
    """The client's view of its relays' logs, kept in the client database.

    ``relay(url)`` gives a connected :class:`RelayClient`; ``pinned_key(url)``
    the relay key pinned at registration (None for a contact's relay);
    ``witnessed(url, key, note)`` is called with every checkpoint that passed
    the consistency check (the witness policy's hook).
    """

    def __init__(
        self,
        db: ClientDB,
        audit: AuditLog,
        relay: Callable[[str], Awaitable[RelayClient]],
        pinned_key: Callable[[str], bytes | None],
        witnessed: Callable[[str, VerifierKey, str], object],
    ) -> None:
        self._db = db
        self._audit = audit
        self._relay = relay
        self._pinned_key = pinned_key
        self._witnessed = witnessed
        # Contradicted heads already recorded (one audit entry per finding).
        self._splits: set[tuple[str, str]] = set()
        # Checkpoints peers carried in the messages of the current pass.
        self._carried_in: list[tuple[tuple[str, ...], str]] = []
        # How long (seconds) a relay's checkpoint stays current for
        # :meth:`refresh` once this process verified it as the relay's newest
        # (a refresh or a send receipt): 0, the default, fetches before every
        # message; a long-running agent sets it (docs/AUDIT.md, "Split views
        # between parties"). When each was verified so (time.monotonic()).
        self.fresh_for = 0.0
        self._current: dict[str, float] = {}

    async def key(self, relay_url: str) -> VerifierKey:
        """The relay's log key: pinned on first use, and equal to the relay
        key we pinned when registering there."""
        known = self._db.relay_log(relay_url)
        if known is not None:
            return pinned_keys(known[0])[0]
        info = await (await self._relay(relay_url)).info()
        text = info.get("log_verifier_key")
        if not isinstance(text, str):
            raise MalformedInput(f"{relay_url} publishes no transparency log")
        key = VerifierKey.from_text(text)
        pinned = self._pinned_key(relay_url)
        if pinned is not None and key.public_key != pinned:
            raise UntrustedKey(f"the log key of {relay_url} is not the relay key you pinned")
        row = key.to_text()
        pq_text = info.get("log_mldsa44_verifier_key")
        if pq_text is not None:
            pq = VerifierKey.from_text(pq_text) if isinstance(pq_text, str) else None
            if pq is None or pq.sig_type != SIG_MLDSA44_COSIGNATURE or pq.name != key.name:
                raise MalformedInput(f"{relay_url} publishes a malformed ML-DSA-44 log key")
            row += " " + pq.to_text()
        with self._db.transaction():
            self._db.set_relay_log(relay_url, row, None)
        return key

    def _pq(self, relay_url: str) -> VerifierKey | None:
        known = self._db.relay_log(relay_url)
        return None if known is None else pinned_keys(known[0])[1]

    async def accept(
        self,
        relay_url: str,
        key: VerifierKey,
        note: str,
        checkpoint: Checkpoint,
        *,
        current: bool = False,
        appended: Appended | None = None,
        then: Callable[[], None] | None = None,
        durable: bool = True,
    ) -> None:
        """Check a new checkpoint against the newest one we hold from this
        relay (a consistency proof either way), then keep the newer one.
        Raises :class:`SplitView` with both notes when they conflict, and
        :class:`BadSignature` for a note without the pinned ML-DSA-44 line.

        ``current``: the checkpoint is the relay's newest as of now (fetched
        just now, or a send receipt's), for :attr:`fresh_for`. ``appended``:
        a send receipt's leaf and inclusion path in ``checkpoint``; when the
        leaf is the one right after the checkpoint we hold, the consistency
        proof is made from them (:func:`appended_proof`) instead of fetched
        from the relay's tiles, and checked the same way. ``then``: run in the
        database transaction that keeps the checkpoint (one commit), and only
        if the checkpoint passed; ``durable=False``: that commit joins the
        next durable one (:meth:`ClientDB.transaction`)."""
        require_pq_line(note, self._pq(relay_url))
        known = self._db.relay_log(relay_url)
        old_note = known[1] if known is not None else None
        newer = True
        if old_note is not None:
            old = open_checkpoint(old_note, key)
            try:
                await self._prove(relay_url, old, checkpoint, appended)
            except ProofFailed as e:
                self._current.pop(relay_url, None)
                # One audit entry per contradicted head: later checkpoints that
                # contradict the same head are the same finding.
                if (relay_url, old_note) not in self._splits:
                    self._splits.add((relay_url, old_note))
                    self._audit.rejected(Reason.SPLIT_VIEW, f"{relay_url}: {e}")
                raise SplitView(
                    f"the log of {relay_url} shows two histories ({e}); "
                    "both signed checkpoints are kept as evidence",
                    (old_note, note),
                ) from None
            self._witnessed(relay_url, key, note)
            newer = old.size < checkpoint.size
        if newer or then is not None:
            with self._db.transaction(durable=durable):
                if newer:
                    self._db.set_relay_log(relay_url, known[0] if known else key.to_text(), note)
                if then is not None:
                    then()
        if current:
            self._current[relay_url] = time.monotonic()
        if not newer:
            return
        if old_note is None:
            self._witnessed(relay_url, key, note)
        self._audit.checkpoint_seen(
            origin=checkpoint.origin, size=checkpoint.size, root_hash=checkpoint.root_hash
        )

    async def _prove(
        self, relay_url: str, a: Checkpoint, b: Checkpoint, appended: Appended | None = None
    ) -> None:
        small, large = (a, b) if a.size <= b.size else (b, a)
        if small.size == large.size:
            if small.root_hash != large.root_hash:
                raise ProofFailed("two different roots for one size")
            return
        if appended is not None and large is b and appended.index == small.size == b.size - 1:
            try:
                # The receipt's own path proves the one-leaf step: no fetch.
                derived = appended_proof(appended)
                verify_consistency(small.size, b.size, derived, small.root_hash, b.root_hash)
                return
            except ProofFailed:
                pass  # judged below on the relay's own tiles, as any other step
        relay = await self._relay(relay_url)
        try:
            # From the relay's tlog-tiles, as any monitor reads them.
            proof = await relay_consistency(relay, small.size, large.size)
        except RelayRefused as e:
            # An honest log proves consistency up to any size it ever signed:
            # refusing to (a 4xx) means it no longer has the history it
            # signed, a rolled-back or rewritten log.
            raise ProofFailed(
                f"the relay will not prove size {small.size} consistent with "
                f"size {large.size}, both signed by its key ({e})"
            ) from None
        verify_consistency(small.size, large.size, proof, small.root_hash, large.root_hash)

    async def refresh(self, relay_urls: Iterable[str]) -> SplitView | None:
        """Before signing a message, fetch each relay's newest checkpoint and
        check it against ours, so that the message carries the relay's
        current view of its log. A relay we cannot reach is skipped (the
        outbox retries the send anyway); a relay caught with two histories
        is returned as a :class:`SplitView` for the caller to raise once the
        message is sent (it is end-to-end protected: the fork costs no
        message, and the user is told). A relay whose checkpoint we verified
        as its newest less than :attr:`fresh_for` seconds ago is not asked
        again (the agent: docs/AUDIT.md, "Split views between parties")."""
        split: SplitView | None = None
        for relay_url in dict.fromkeys(relay_urls):
            if self._is_current(relay_url):
                continue  # verified as the relay's newest moments ago
            try:
                key = await self.key(relay_url)
                note = await (await self._relay(relay_url)).log_checkpoint()
                await self.accept(relay_url, key, note, open_checkpoint(note, key), current=True)
            except RelayError:
                continue
            except SplitView as e:
                split = split or e
            except (VerificationFailed, MalformedInput) as e:
                self._audit.rejected(reason_of(e), f"checkpoint from {relay_url}: {e}")
        return split

    def _is_current(self, relay_url: str) -> bool:
        """Whether the checkpoint we hold of ``relay_url`` was verified as
        the relay's newest less than :attr:`fresh_for` seconds ago."""
        at = self._current.get(relay_url)
        return at is not None and time.monotonic() - at < self.fresh_for

    def carried(self, first: Iterable[str]) -> tuple[str, ...]:
        """The newest verified checkpoints we hold, those of the relays in
        ``first`` (where the message goes) first: what a message carries."""
        firsts = set(first)
        rows = sorted(self._db.relay_logs(), key=lambda r: r[0] not in firsts)
        notes = dict.fromkeys(
            note for _, _, note in rows if note is not None and len(note) <= MAX_CHECKPOINT_TEXT
        )
        return tuple(notes)[:MAX_CHECKPOINTS]

    def carry_in(self, notes: tuple[str, ...], peer: str) -> None:
        """Remember the checkpoints a verified message from ``peer`` carried."""
        if notes:
            self._carried_in.append((notes, peer))

    async def check_carried(self) -> list[tuple[SplitView, str]]:
        """Hold each checkpoint peers carried against our own newest of the
        same log (a consistency proof either way, from the relay we reach
        that log through). Returns each split view found, with the peer whose
        message showed it. A carried checkpoint of a log we do not use proves
        nothing and is skipped; one we cannot check now (relay unreachable)
        is recorded as unchecked."""
        carried, self._carried_in = self._carried_in, []
        out: list[tuple[SplitView, str]] = []
        logs = self._db.relay_logs()
        for notes, peer in carried:
            for note in notes:
                for relay_url, key_text, _ in logs:
                    key = pinned_keys(key_text)[0]
                    try:
                        checkpoint = open_checkpoint(note, key)
                    except (VerificationFailed, MalformedInput):
                        continue  # another log's checkpoint
                    try:
                        await self.accept(relay_url, key, note, checkpoint)
                    except SplitView as e:
                        out.append((e, peer))
                    except VerificationFailed as e:  # e.g. no ML-DSA-44 line
                        self._audit.rejected(reason_of(e), f"checkpoint carried by {peer}: {e}")
                    except RelayError as e:
                        self._audit.rejected(Reason.CHECKPOINT_UNCHECKED, f"{relay_url}: {e}")
        return out
