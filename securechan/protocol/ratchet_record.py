"""The ratchet state at rest: its record (type 0x0061, ``docs/PROTOCOL.md`` §13).

:class:`~securechan.protocol.ratchet.RatchetState` is the value the ratchet
works on; this module is its one stored form, a ``@wire.record`` whose
bytes are those of the hand-written schema it replaced (a fixture written
by the old encoder proves it, ``tests/test_state_records.py``). Secret: it
is only ever stored inside a sealed session (``protocol/sealed.py``).

Three lists are packed into byte strings of fixed-size entries: the skipped
message keys (``dh || n:u64be || mk_base || root_ss || flag || kem_seed ||
at:u64be``, the seed all zeros and the flag 0 for a chain without epoch
steps) and the two lists of recent ratchet keys (32 bytes each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from securechan import wire
from securechan.errors import MalformedInput
from securechan.primitives import (
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MLKEM768_SEED_SIZE,
)
from securechan.protocol.ratchet import MAX_SKIPPED, OWN_DH_KEPT, RatchetState, Skipped

__all__ = ["STATE", "state_from_bytes", "state_to_bytes"]

# One skipped key, packed: dh, n, mk_base, root_ss, has-epochs flag,
# kem_seed (zeros when none), at.
_SKIPPED_ENTRY = 32 + 8 + 32 + 32 + 1 + MLKEM768_SEED_SIZE + 8
_SEED = MLKEM768_SEED_SIZE
_KEM_PUB = MLKEM768_PUBLIC_KEY_SIZE
_KEM_CT = MLKEM768_CIPHERTEXT_SIZE


@wire.record(0x0061, "RatchetState")
@dataclass(frozen=True, slots=True, kw_only=True)
class _StateRecord(wire.Record):
    """The stored form of :class:`RatchetState` (type 0x0061, secret).

    The three lists are packed into byte strings of fixed-size entries, as
    they always were: ``skipped`` (:data:`_SKIPPED_ENTRY` bytes each),
    ``own_dh_recent`` and ``remote_dh_recent`` (32 bytes each)."""

    rk: Annotated[bytes, wire.bytes_(1, size=32)]
    dh_self: Annotated[bytes | None, wire.bytes_(2, size=32)] = None
    kem_self: Annotated[bytes | None, wire.bytes_(3, size=_SEED)] = None
    dh_remote: Annotated[bytes | None, wire.bytes_(4, size=32)] = None
    kem_remote: Annotated[bytes | None, wire.bytes_(5, size=_KEM_PUB)] = None
    send_pending: Annotated[bool, wire.boolean(6)]
    cks: Annotated[bytes | None, wire.bytes_(7, size=32)] = None
    ns: Annotated[int, wire.uint(8)]
    pn: Annotated[int, wire.uint(9)]
    send_root_ct: Annotated[bytes | None, wire.bytes_(10, size=_KEM_CT)] = None
    send_root_ss: Annotated[bytes | None, wire.bytes_(11, size=32)] = None
    send_epoch: Annotated[int, wire.uint(12)]
    send_epoch_ct: Annotated[bytes | None, wire.bytes_(13, size=_KEM_CT)] = None
    send_epoch_ss: Annotated[bytes | None, wire.bytes_(14, size=32)] = None
    ckr: Annotated[bytes | None, wire.bytes_(15, size=32)] = None
    nr: Annotated[int, wire.uint(16)]
    recv_kem_seed: Annotated[bytes | None, wire.bytes_(17, size=_SEED)] = None
    skipped: Annotated[bytes, wire.bytes_(18, max_len=MAX_SKIPPED * _SKIPPED_ENTRY)]
    own_dh_recent: Annotated[bytes, wire.bytes_(19, max_len=OWN_DH_KEPT * 32)]
    remote_dh_recent: Annotated[bytes, wire.bytes_(20, max_len=OWN_DH_KEPT * 32)]
    dh_self_pub: Annotated[bytes | None, wire.bytes_(21, size=32)] = None
    kem_self_pub: Annotated[bytes | None, wire.bytes_(22, size=_KEM_PUB)] = None
    recv_root_ss: Annotated[bytes | None, wire.bytes_(23, size=32)] = None
    send_epochs: Annotated[bool, wire.boolean(24)]
    recv_epochs: Annotated[bool, wire.boolean(25)]


STATE = wire.schema_of(_StateRecord)


def _pack_skipped(s: Skipped) -> bytes:
    seed = b"\x01" + s.kem_seed if s.kem_seed is not None else bytes(1 + MLKEM768_SEED_SIZE)
    return s.dh + s.n.to_bytes(8, "big") + s.mk_base + s.root_ss + seed + s.at.to_bytes(8, "big")


def _unpack_skipped(e: bytes) -> Skipped:
    flag, seed = e[104], e[105:169]
    if flag not in (0, 1) or (flag == 0 and any(seed)):
        raise MalformedInput("bad ratchet state lists")
    return Skipped(
        dh=e[:32],
        n=int.from_bytes(e[32:40], "big"),
        mk_base=e[40:72],
        root_ss=e[72:104],
        kem_seed=seed if flag else None,
        at=int.from_bytes(e[169:177], "big"),
    )


def state_to_bytes(st: RatchetState) -> bytes:
    """Secret: the ratchet state's wire encoding (type 0x0061)."""
    return _StateRecord(
        rk=st.rk,
        dh_self=st.dh_self,
        kem_self=st.kem_self,
        dh_remote=st.dh_remote,
        kem_remote=st.kem_remote,
        send_pending=st.send_pending,
        cks=st.cks,
        ns=st.ns,
        pn=st.pn,
        send_root_ct=st.send_root_ct,
        send_root_ss=st.send_root_ss,
        send_epoch=st.send_epoch,
        send_epoch_ct=st.send_epoch_ct,
        send_epoch_ss=st.send_epoch_ss,
        ckr=st.ckr,
        nr=st.nr,
        recv_kem_seed=st.recv_kem_seed,
        skipped=b"".join(_pack_skipped(s) for s in st.skipped),
        own_dh_recent=b"".join(st.own_dh_recent),
        remote_dh_recent=b"".join(st.remote_dh_recent),
        dh_self_pub=st.dh_self_pub,
        kem_self_pub=st.kem_self_pub,
        recv_root_ss=st.recv_root_ss,
        send_epochs=st.send_epochs,
        recv_epochs=st.recv_epochs,
    ).to_bytes()


def state_from_bytes(data: bytes) -> RatchetState:
    """Decode :func:`state_to_bytes` strictly."""
    rec = _StateRecord.from_bytes(data)
    raw, own, remote = rec.skipped, rec.own_dh_recent, rec.remote_dh_recent
    if len(raw) % _SKIPPED_ENTRY or len(own) % 32 or len(remote) % 32:
        raise MalformedInput("bad ratchet state lists")
    return RatchetState(
        rk=rec.rk,
        dh_self=rec.dh_self,
        kem_self=rec.kem_self,
        dh_self_pub=rec.dh_self_pub,
        kem_self_pub=rec.kem_self_pub,
        dh_remote=rec.dh_remote,
        kem_remote=rec.kem_remote,
        send_pending=rec.send_pending,
        cks=rec.cks,
        ns=rec.ns,
        pn=rec.pn,
        send_root_ct=rec.send_root_ct,
        send_root_ss=rec.send_root_ss,
        send_epoch=rec.send_epoch,
        send_epoch_ct=rec.send_epoch_ct,
        send_epoch_ss=rec.send_epoch_ss,
        ckr=rec.ckr,
        nr=rec.nr,
        recv_kem_seed=rec.recv_kem_seed,
        recv_root_ss=rec.recv_root_ss,
        send_epochs=rec.send_epochs,
        recv_epochs=rec.recv_epochs,
        skipped=tuple(
            _unpack_skipped(raw[i : i + _SKIPPED_ENTRY]) for i in range(0, len(raw), _SKIPPED_ENTRY)
        ),
        own_dh_recent=tuple(own[i : i + 32] for i in range(0, len(own), 32)),
        remote_dh_recent=tuple(remote[i : i + 32] for i in range(0, len(remote), 32)),
    )
