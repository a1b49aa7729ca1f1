"""One witness round against a relay: fetch, check, cosign, post (``securechan witness``).

The network half of ``docs/AUDIT.md`` ("Witnesses"); the checks are
:func:`securechan.audit.witness.witness_checkpoint`, the files
:class:`securechan.audit.witness_store.WitnessHome`. Under the witness lock:
read the state, fetch the checkpoint and the consistency proof from the size
last cosigned, check, store the new state (fsync'ed); then, lock released,
post the note with the cosignature. A 409 (the relay moved on before our
post arrived) starts one more round with the newer checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from securechan.audit.checkpoint import Checkpoint, open_cosigned_checkpoint
from securechan.audit.note import SignedNote, VerifierKey
from securechan.audit.witness import already_cosigned, witness_checkpoint
from securechan.audit.witness_store import WitnessHome, WitnessKey
from securechan.client.tiles import relay_consistency
from securechan.errors import MalformedInput, RelayError, SplitView, VerificationFailed
from securechan.transport import RelayClient

__all__ = ["RoundResult", "witness_round"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundResult:
    """What one round did: ``cosigned`` (posted and accepted) or ``unchanged``
    (the relay already serves our cosignature on its newest checkpoint)."""

    status: str
    checkpoint: Checkpoint
    old_size: int
    timestamp: int | None


async def _once(
    rc: RelayClient, home: WitnessHome, key: WitnessKey, log_key: VerifierKey, now: int
) -> tuple[RoundResult, str | None]:
    """Check and record under the lock; the note to post (None: nothing to do)."""
    with home.locked():
        state = home.read_state()
        note = await rc.log_checkpoint()
        entry = state.get(log_key.name)
        if entry is not None and already_cosigned(state, note, log_key, key.verifier):
            result = RoundResult(
                status="unchanged",
                checkpoint=entry.checkpoint,
                old_size=entry.checkpoint.size,
                timestamp=entry.timestamp,
            )
            return result, None
        old = state.old_size(log_key)
        # Peek at the size only to decide which proof to ask for; the
        # signature and everything else are checked by witness_checkpoint.
        size = _size_unverified(note)
        proof = await relay_consistency(rc, old, size)  # from its tiles (client/tiles.py)
        try:
            done = witness_checkpoint(
                state,
                key=key.key,
                pq_key=key.pq_key,
                name=key.name,
                log_key=log_key,
                note=note,
                proof=proof,
                now=now,
            )
        except SplitView as e:
            path = home.save_evidence(e, now=now)
            raise SplitView(f"{e} (evidence: {path})", e.evidence) from None
        home.write_state(done.state)  # before the cosignature leaves this process
    result = RoundResult(
        status="cosigned", checkpoint=done.checkpoint, old_size=done.old_size, timestamp=now
    )
    return result, done.note


def _size_unverified(note: str) -> int:
    try:
        return Checkpoint.from_text(SignedNote.from_text_unverified(note).text).size
    except MalformedInput:
        return 0  # witness_checkpoint reports it properly


async def witness_round(
    url: str,
    home: WitnessHome,
    key: WitnessKey,
    log_key: VerifierKey,
    *,
    clock: Callable[[], float],
    client: RelayClient | None = None,
) -> RoundResult:
    """Cosign the relay's newest checkpoint if it extends what we cosigned.

    Raises :class:`SplitView` (evidence saved under ``witness-evidence/``),
    the verification errors of :func:`witness_checkpoint` (nothing is posted
    then), :class:`RelayError` subclasses, and :class:`VerificationFailed`
    if the relay's answer to the post does not carry our cosignature.
    """
    async with contextlib.AsyncExitStack() as stack:
        rc = client if client is not None else await stack.enter_async_context(RelayClient(url))
        return await _round(rc, home, key, log_key, clock)


async def _round(
    rc: RelayClient,
    home: WitnessHome,
    key: WitnessKey,
    log_key: VerifierKey,
    clock: Callable[[], float],
) -> RoundResult:
    for _ in range(2):
        result, body = await _once(rc, home, key, log_key, int(clock()))
        if body is None:
            return result
        reply = await rc.post_cosignature(body)
        if not reply.accepted:
            continue  # 409: the relay moved on; check the newer head once
        served = reply.checkpoint or ""
        try:
            got = open_cosigned_checkpoint(served, log_key, [key.verifier], required=1)
        except (VerificationFailed, MalformedInput):
            raise VerificationFailed(
                "the relay accepted the cosignature but does not serve it"
            ) from None
        if got.checkpoint != result.checkpoint:
            raise VerificationFailed("the relay answered with another checkpoint")
        return result
    raise RelayError("the relay's log kept moving past each cosignature (409 twice)")
