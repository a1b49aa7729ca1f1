"""Witness policy: which cosignatures make a relay's checkpoint count.

A relay signs its own checkpoints; on their own they prove only what the
relay says. Witnesses (other mediators, the delegations themselves: see
``securechan witness``) cosign a checkpoint after checking that it extends
everything they cosigned before. A delegation's policy names, per relay, the
witnesses it trusts and how many of them must have cosigned; a checkpoint
that meets it is **witnessed**. Sigsum's result (``docs/AUDIT.md``,
Witnesses): two parties requiring k1-of-n and k2-of-n cannot be shown
different witnessed histories when k1 + k2 > n + f, with f dishonest
witnesses. With the two delegations and one mediator as the n = 3 witnesses
and f = 1, each delegation requires 2 (both delegations' own cosignatures,
or one of them and the mediator's, as the parties agree).

The client keeps, per relay, the newest checkpoint it has seen meet the
policy (every checkpoint it verifies is tried: receipts, the refresh before
each send, checkpoints carried by the peer, :func:`refresh_witnessed`).
Statements then use it: the envelope's inclusion proof is taken to that
witnessed checkpoint, which carries the witnesses' timestamped cosignatures
(:func:`witnessed_statement`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from securechan.audit.checkpoint import CosignedCheckpoint, open_cosigned_checkpoint
from securechan.audit.merkle import verify_inclusion
from securechan.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_MLDSA44_COSIGNATURE,
    VerifierKey,
    keep_signatures,
)
from securechan.audit.receipt import Receipt, envelope_leaf_hash
from securechan.audit.statement import LogPlacement, Statement
from securechan.client.db import ClientDB
from securechan.client.logview import RelayLogs
from securechan.client.results import StatementExported
from securechan.errors import (
    MalformedInput,
    NotFound,
    RelayError,
    StorageError,
    UsageError,
    VerificationFailed,
)
from securechan.primitives import sha256
from securechan.transport import RelayClient

__all__ = [
    "PolicyHost",
    "WitnessPolicy",
    "check_witnessed",
    "export_statement",
    "get_policy",
    "refresh_witnessed",
    "set_policy",
    "witnessed_statement",
]


class PolicyHost(Protocol):
    """What the policy needs of a client (a :class:`Channel` is one): its
    database, its view of the relays' logs, the time, a relay connection,
    and statements. Passed in, so this module does not import the facade."""

    @property
    def db(self) -> ClientDB: ...

    @property
    def logs(self) -> RelayLogs: ...

    def now(self) -> int: ...

    async def relay(self, url: str) -> RelayClient: ...

    def statement(self, message_id: str) -> Statement: ...

    async def fetch_receipt(self, message_id: str) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessPolicy:
    """The witnesses one relay's checkpoints need, and the newest checkpoint
    seen meeting the policy (its signed note, with cosignatures)."""

    relay: str
    witnesses: tuple[VerifierKey, ...]
    required: int
    witnessed: str | None = None


def set_policy(
    ch: PolicyHost, relay_url: str, witnesses: Sequence[VerifierKey], required: int | None = None
) -> WitnessPolicy:
    """Require ``required`` (default: all) cosignatures of ``witnesses`` on
    checkpoints of ``relay_url``; no witnesses removes the policy. Raises
    ``UsageError`` for a key that is not a cosignature key, a repeated
    key, or a count out of range."""
    keys = tuple(witnesses)
    if any(k.sig_type not in (SIG_COSIGNATURE_V1, SIG_MLDSA44_COSIGNATURE) for k in keys):
        raise UsageError(
            "witness keys are cosignature keys (type 0x04 or 0x06), as 'witness key'"
            " and 'witness key --mldsa44' print"
        )
    if len(set(keys)) != len(keys):
        raise UsageError("a witness is named twice")
    need = len(keys) if required is None else required
    if keys and not 1 <= need <= len(keys):
        raise UsageError(f"--require is between 1 and {len(keys)}")
    with ch.db.transaction():
        ch.db.set_witness_policy(relay_url, [k.to_text() for k in keys], need)
    return WitnessPolicy(relay=relay_url, witnesses=keys, required=need)


def get_policy(ch: PolicyHost, relay_url: str) -> WitnessPolicy | None:
    """The policy of ``relay_url``, or None."""
    return _policy(ch.db, relay_url)


def _policy(db: ClientDB, relay_url: str) -> WitnessPolicy | None:
    row = db.witness_policy(relay_url)
    if row is None:
        return None
    keys, required, witnessed = row
    return WitnessPolicy(
        relay=relay_url,
        witnesses=tuple(VerifierKey.from_text(k) for k in keys),
        required=required,
        witnessed=witnessed,
    )


def _open(policy: WitnessPolicy, log_key: VerifierKey, note: str, now: int) -> CosignedCheckpoint:
    return open_cosigned_checkpoint(
        note, log_key, policy.witnesses, required=policy.required, now=now
    )


def check_witnessed(
    db: ClientDB, relay_url: str, log_key: VerifierKey, note: str, *, now: int
) -> bool:
    """Keep ``note`` as the relay's witnessed checkpoint if it meets the
    policy and is newer than the one kept. The caller has already checked it
    for consistency with everything seen from this relay. True if kept."""
    policy = _policy(db, relay_url)
    if policy is None:
        return False
    try:
        new = _open(policy, log_key, note, now)
    except (VerificationFailed, MalformedInput):
        return False
    if policy.witnessed is not None:
        old = _open(policy, log_key, policy.witnessed, now)
        if old.checkpoint.size >= new.checkpoint.size:
            return False
    with db.transaction():
        db.set_witnessed(relay_url, note)
    return True


async def refresh_witnessed(ch: PolicyHost, relay_url: str) -> CosignedCheckpoint | None:
    """Fetch the relay's newest checkpoint (with the cosignatures it holds),
    check it against what we saw (consistency), and keep it if it meets the
    policy. Returns the newest witnessed checkpoint we hold, or None."""
    from securechan.audit.checkpoint import open_checkpoint

    policy = get_policy(ch, relay_url)
    if policy is None:
        raise NotFound(f"no witness policy for {relay_url}: 'securechan policy set' first")
    key = await ch.logs.key(relay_url)
    note = await (await ch.relay(relay_url)).log_checkpoint()
    await ch.logs.accept(relay_url, key, note, open_checkpoint(note, key))
    check_witnessed(ch.db, relay_url, key, note, now=ch.now())
    policy = get_policy(ch, relay_url)
    if policy is None or policy.witnessed is None:
        return None
    return _open(policy, key, policy.witnessed, ch.now())


async def witnessed_statement(ch: PolicyHost, message_id: str) -> tuple[Statement, bool]:
    """The statement of a message, its log placement moved to a witnessed
    checkpoint when one covers the envelope (a fresh inclusion proof from the
    relay, checked here). Returns the statement and whether it is witnessed;
    when the relay cannot be reached it falls back to the send receipt."""
    statement = ch.statement(message_id)
    if statement.placement is None and await ch.fetch_receipt(message_id):
        statement = ch.statement(message_id)  # a received message: now with its receipt
    if statement.placement is None:
        return statement, False
    for relay_url, text in ch.db.log_receipts(sha256(statement.envelope)):
        policy = get_policy(ch, relay_url)
        if policy is None:
            continue
        key = await ch.logs.key(relay_url)
        receipt = Receipt.from_json_text(text)
        # Unreachable, or caught lying since: the checkpoint witnessed before
        # still stands (the witnesses checked it then).
        with contextlib.suppress(RelayError, VerificationFailed):
            await refresh_witnessed(ch, relay_url)
        policy = get_policy(ch, relay_url)
        if policy is None or policy.witnessed is None:
            continue
        cosigned = _open(policy, key, policy.witnessed, ch.now())
        if cosigned.checkpoint.size <= receipt.leaf_index:
            continue
        size = cosigned.checkpoint.size
        try:
            proof = await (await ch.relay(relay_url)).inclusion_proof(receipt.leaf_index, size)
        except RelayError:
            continue
        verify_inclusion(
            envelope_leaf_hash(statement.envelope),
            receipt.leaf_index,
            size,
            proof,
            cosigned.checkpoint.root_hash,
        )
        signers = [c.cosigner for c in cosigned.cosignatures]
        note = keep_signatures(policy.witnessed, [key, *signers])
        if note is None:
            continue
        placement = LogPlacement(
            log_key=key.to_text(),
            leaf_index=receipt.leaf_index,
            checkpoint=note,
            inclusion_proof=tuple(proof),
            witnesses=tuple(k.to_text() for k in signers),
        )
        return replace(statement, placement=placement), True
    return statement, False


async def export_statement(ch: PolicyHost, message_id: str, output: Path) -> StatementExported:
    """Write the statement of ``message_id`` (:func:`witnessed_statement`)
    to the new file ``output`` (never over an existing one: UsageError) and
    say what it can prove. The one place a statement file is written: the
    ``statement export`` command and the agent's ``statementExport`` call it."""
    from securechan.audit.statement import message_id as statement_id

    st, witnessed = await witnessed_statement(ch, message_id)
    text = st.to_text()
    try:
        with open(output, "x", encoding="ascii", newline="\n") as f:
            f.write(text)
    except FileExistsError:
        raise UsageError(f"{output} exists; choose another name") from None
    except OSError as e:
        raise StorageError(f"cannot write {output}: {e.strerror}") from None
    return StatementExported(
        file=str(output),
        message_id=statement_id(st.signed),
        log=st.placement is not None,
        witnessed=witnessed,
        delivery_receipt=st.receipt is not None,
    )
