"""Registration: our contact address at each relay, and our prekeys there.

Each delegation registers a **contact address** (a public queue) at one or
more relays and publishes its prekeys there, sealed under the address key
(``docs/RELAY.md`` §2). The relay's key is pinned on first use. This module
also creates the private queues we grant to peers (at our first relay) and
tops up the one-time prekeys a relay hands out.

Owns: the ``registration`` and ``prekeys`` state rows (through
:class:`ProtocolState`) and the ``contact``/``private`` rows of ``queues``.
"""

from __future__ import annotations

import contextlib

from securechan.client.context import Context
from securechan.client.state import ProtocolState
from securechan.client.stored import Registration
from securechan.errors import MalformedInput, RelayError, SecurechanError, UntrustedKey
from securechan.primitives import Ed25519SigningKey, check_ed25519_public_key, sha256
from securechan.protocol.address import ContactCard, QueueGrant, seal_prekey_blob
from securechan.protocol.relay_auth import b64d

__all__ = ["ONE_TIME_BATCH", "ONE_TIME_LOW", "Registrar"]

ONE_TIME_BATCH = 20  # one-time prekeys published per relay at a time
ONE_TIME_LOW = 5  # below this many left at a relay, a new pool is published


class Registrar:
    """Registers at relays and keeps our prekeys published."""

    def __init__(self, ctx: Context, state: ProtocolState) -> None:
        self._ctx = ctx
        self._state = state

    async def register(
        self,
        relay_url: str,
        *,
        pin_key: bytes | None = None,
        pin_fingerprint: bytes | None = None,
    ) -> ContactCard:
        """See :meth:`Channel.register`."""
        ctx = self._ctx
        relay = await ctx.relay(relay_url)
        info = await relay.info()
        try:
            relay_key = b64d(str(info["relay_key"]), size=32)
            check_ed25519_public_key(relay_key)
        except (KeyError, MalformedInput):
            raise MalformedInput("the relay sent a bad key") from None
        if pin_key is not None and pin_key != relay_key:
            raise UntrustedKey("the relay's key is not the one you pinned")
        if pin_fingerprint is not None and sha256(relay_key) != pin_fingerprint:
            raise UntrustedKey(
                f"relay {relay_url} has the key fingerprint {sha256(relay_key).hex()}, "
                f"not the {pin_fingerprint.hex()} you gave: nothing was registered"
            )
        regs = self._state.registrations()
        existing = next((r for r in regs if r.relay == relay_url), None)
        if existing is not None and existing.relay_key != relay_key:
            raise UntrustedKey(f"the key of relay {relay_url} changed since you registered")
        if existing is None:
            recipient = Ed25519SigningKey.generate()
            ids = await relay.create_queue(recipient, contact=True)
            existing = Registration(
                relay=relay_url,
                relay_key=relay_key,
                rid=ids.rid,
                sid=ids.sid,
                recipient_seed=recipient.seed_bytes_secret(),
                address_key=ctx.random(32),
            )
            with ctx.db.transaction():
                self._state.save_registrations([*regs, existing])
                ctx.db.add_queue(ids.rid, relay_url, "contact", None, existing.recipient_seed)
        await self.publish_prekeys(existing, fresh=True)
        return self.card()

    async def publish_prekeys(self, reg: Registration, *, fresh: bool) -> None:
        """Publish a signed prekey (rotated if ``fresh`` or expired) and a
        new pool of one-time prekeys at ``reg``'s relay."""
        ctx = self._ctx
        now = ctx.now()
        with ctx.db.transaction():
            store = self._state.prekeys()
            try:
                store.current_signed(now)
                if fresh:
                    store = store.rotate(ctx.identity, now=now, rand=ctx.random)
            except SecurechanError:
                store = store.rotate(ctx.identity, now=now, rand=ctx.random)
            # A pool of its own for this relay, replacing the one it holds: a
            # key published to two relays, or again after a relay handed it
            # out, could be handed out twice (PROTOCOL.md §11).
            store, pool = store.new_pool(ctx.identity, ONE_TIME_BATCH, now=now, rand=ctx.random)
            # Persist the secrets before the public halves leave this machine.
            self._state.save_prekeys(store)
        signed = seal_prekey_blob(reg.address_key, store.current_signed(now).to_bytes())
        one_time = [seal_prekey_blob(reg.address_key, p.to_bytes()) for p in pool]
        relay = await ctx.relay(reg.relay)
        await relay.put_prekeys(
            reg.rid,
            Ed25519SigningKey(reg.recipient_seed),
            signed=signed,
            one_time=one_time,
            replace_one_time=True,
        )
        ctx.audit.prekeys_rotated(relay=reg.relay, count=len(one_time))

    async def top_up_prekeys(self) -> None:
        """Publish a new pool where a relay has fewer than ONE_TIME_LOW left
        (a relay that cannot be reached is skipped)."""
        for reg in self._state.registrations():
            try:
                relay = await self._ctx.relay(reg.relay)
                left = await relay.prekey_count(reg.rid, Ed25519SigningKey(reg.recipient_seed))
            except RelayError:
                continue
            if left < ONE_TIME_LOW:
                with contextlib.suppress(RelayError):
                    await self.publish_prekeys(reg, fresh=False)

    async def own_queue(self, conversation: bytes) -> QueueGrant | None:
        """Create our private queue for ``conversation`` at our first relay
        and return the grant for the peer; None if we are registered nowhere."""
        regs = self._state.registrations()
        if not regs:
            return None
        reg = regs[0]
        relay = await self._ctx.relay(reg.relay)
        recipient = Ed25519SigningKey.generate()
        sender = Ed25519SigningKey.generate()
        ids = await relay.create_queue(recipient, sender_key=sender.public)
        with self._ctx.db.transaction():
            self._ctx.db.add_queue(
                ids.rid, reg.relay, "private", conversation, recipient.seed_bytes_secret()
            )
        return QueueGrant(relay=reg.relay, sid=ids.sid, sender_seed=sender.seed_bytes_secret())

    def card(self) -> ContactCard:
        """Our contact card (identity + every registered address)."""
        ident = self._ctx.identity
        regs = self._state.registrations()
        return ContactCard.make(ident, tuple(r.address() for r in regs), now=ident.created)

    def relays(self) -> list[str]:
        """The relays we are registered at, as registered."""
        return [r.relay for r in self._state.registrations()]

    def relay_fingerprints(self) -> dict[str, str]:
        """Each relay we are registered at: SHA-256 of its pinned key, in hex."""
        return {r.relay: sha256(r.relay_key).hex() for r in self._state.registrations()}
