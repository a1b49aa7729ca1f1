"""Pairing by a spoken code over a relay's mailbox: the driver of protocol/pairing.py.

:func:`pair` opens a mailbox (side A, makes the code) or joins one (side B,
takes the code), moves the sans-I/O machine's messages through the relay
(``pair_put`` / ``pair_get``, docs/RELAY.md "Pairing mailbox"), and on
success pins the peer's contact card, verified "by code", in one write. On
any failure nothing is pinned, the mailbox is closed as failed (which
deletes it, burning the code), the failure enters the local audit log and
:class:`PairingFailed` is raised with one line for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from securechan.client.context import Context
from securechan.errors import (
    ContactExists,
    KeyChanged,
    MalformedInput,
    PairingFailed,
    Reason,
    RelayError,
    RelayRefused,
    UsageError,
)
from securechan.identity.contacts import Contact, Contacts
from securechan.identity.keys import PublicIdentity, check_name
from securechan.primitives import random_bytes
from securechan.protocol.address import ContactCard
from securechan.protocol.pair_code import DEFAULT_WORDS, MAX_WORDS, MIN_WORDS, PairingCode
from securechan.protocol.pairing import Pairing, Phase, Side
from securechan.relay import api
from securechan.transport import RelayClient

__all__ = ["PAIR_TIMEOUT", "pair"]

PAIR_TIMEOUT = 300.0
"""How long a side waits for the other (the relay's mailbox lives as long)."""


async def pair(
    ctx: Context,
    relay_url: str,
    own_card: bytes,
    *,
    code: PairingCode | None = None,
    words: int = DEFAULT_WORDS,
    name: str | None = None,
    on_code: Callable[[str], None] | None = None,
    timeout: float = PAIR_TIMEOUT,
) -> Contact:
    """Pair through the relay at ``relay_url``: with ``code`` we join (side
    B); without, we open a mailbox and hand the new code (``words`` words) to
    ``on_code`` (side A). Returns the pinned, verified contact."""
    if code is None and not MIN_WORDS <= words <= MAX_WORDS:
        raise ValueError(f"a code has {MIN_WORDS} to {MAX_WORDS} words")
    relay = await ctx.relay(relay_url)
    try:
        side: Side
        if code is None:
            opened = await relay.pair_call("pair_open", None, api.PairOpenReply)
            side, token = "A", opened.token
            code = PairingCode.make(opened.nameplate, random_bytes(words))
            if on_code is not None:
                on_code(code.text())
        else:
            joined = await relay.pair_call(
                "pair_join", api.PairJoinRequest(nameplate=code.nameplate), api.PairOpenReply
            )
            side, token = "B", joined.token
    except RelayRefused as e:
        if e.status == 404:
            raise PairingFailed("no such pairing code at this relay (expired or used)") from None
        if e.status == 409:
            raise PairingFailed(
                "this pairing code is already in use: ask for a new one (nothing was pinned)"
            ) from None
        raise
    machine = Pairing(side, code, own_card)

    def can_pin(card: ContactCard) -> None:
        # Before our confirmation goes out: a name pinned to another key, or
        # the key under another name, refuses here, so the peer never gets
        # our confirmation and pins nothing either.
        _check_pinnable(ctx, card.identity, name)

    try:
        await asyncio.wait_for(_exchange(relay, code.nameplate, token, machine, can_pin), timeout)
        # The channel's keystore reports to no sink: pin through a contact
        # store that writes the contact-added/-verified events to our log.
        contacts = Contacts(
            ctx.keystore.home,
            own=ctx.keystore.fingerprint(),
            events=ctx.audit.record,
            clock=ctx.now,
        )
        contact = contacts.pin_paired(
            machine.peer_card.identity, machine.peer_card_bytes, name=name
        )
    except BaseException as e:
        await _close(relay, code.nameplate, token, ok=False)
        failure = _as_failure(e)
        if failure is None:
            raise
        with contextlib.suppress(Exception):
            ctx.audit.rejected(Reason.PAIRING_FAILED, str(failure), at=ctx.now())
        raise failure from None
    await _close(relay, code.nameplate, token, ok=True)
    return contact


def _as_failure(e: BaseException) -> PairingFailed | None:
    """The one line a failed run ends with (None: not ours to translate)."""
    if isinstance(e, PairingFailed):
        return e
    if isinstance(e, TimeoutError):
        return PairingFailed("the other side did not finish in time; nothing was pinned")
    if isinstance(e, RelayRefused) and e.status == 404:
        return PairingFailed(
            "the pairing ended at the relay: the other side gave up (a wrong code, a"
            " tampered exchange) or the code expired; nothing was pinned"
        )
    if isinstance(e, MalformedInput):
        return PairingFailed("the relay's answer was malformed; nothing was pinned")
    return None


def _check_pinnable(ctx: Context, identity: PublicIdentity, name: str | None) -> None:
    """What :meth:`Contacts.pin_paired` would refuse, checked without writing."""
    wanted = check_name(name if name is not None else identity.name)
    for c in ctx.keystore.contacts.list():
        if c.name == wanted and not c.identity.same_key(identity):
            raise KeyChanged(wanted, str(c.fingerprint), str(identity.fingerprint))
        if c.name != wanted and c.identity.same_key(identity):
            raise ContactExists(f"this identity is already pinned as {c.name!r}")
    if identity.fingerprint == ctx.keystore.public_identity().fingerprint:
        raise UsageError("that is your own identity, not a contact")


async def _exchange(
    relay: RelayClient,
    nameplate: int,
    token: bytes,
    machine: Pairing,
    can_pin: Callable[[ContactCard], None],
) -> None:
    while not machine.done:
        outgoing = machine.outgoing()
        card = machine.peer_card_unconfirmed
        if card is not None and any(phase == Phase.CONFIRM for phase, _ in outgoing):
            try:
                can_pin(card)
            except BaseException:
                machine.abort()
                raise
        for phase, data in outgoing:
            await relay.pair_call(
                "pair_put",
                api.PairPutRequest(nameplate=nameplate, token=token, phase=phase, body=data),
                api.PairPutReply,
            )
        want = machine.expecting
        if want is None:  # done
            break
        got = await relay.pair_call(
            "pair_get",
            api.PairGetRequest(nameplate=nameplate, token=token, phase=want),
            api.PairGetReply,
        )
        if got.body is not None:
            machine.receive(want, got.body)


async def _close(relay: RelayClient, nameplate: int, token: bytes, *, ok: bool) -> None:
    # Best effort: the mailbox expires anyway.
    with contextlib.suppress(RelayError, MalformedInput, OSError):
        await relay.pair_call(
            "pair_close",
            api.PairCloseRequest(nameplate=nameplate, token=token, ok=ok),
            api.PairCloseReply,
        )
