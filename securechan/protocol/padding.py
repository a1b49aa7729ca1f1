"""Padmé padding: the relay sees only bucketed plaintext sizes.

Padmé (Nikitin, Barman, Lueks, Underwood, Bonneau, Ford: "Reducing Metadata
Leakage from Encrypted Files and Communication with PURBs", PETS 2019, §4)
rounds a length L up so that only its top ``floor(log2(log2(L))) + 1`` bits may
be non-zero. The overhead is at most 12 % (and falls as L grows), and a
length of L leaks O(log log L) bits instead of O(log L).

Layout before encryption (``docs/PROTOCOL.md`` §12)::

    padded = length:u32be || data || 0x00 * (padme(4 + len(data)) - 4 - len(data))

Unpadding is strict: the length must fit and every padding byte must be
zero, so one plaintext has exactly one padded form. It runs only on
authenticated plaintext, so its errors are not an oracle.
"""

from __future__ import annotations

import struct

from securechan.errors import MalformedInput

__all__ = ["MAX_PADDED", "pad", "padme", "unpad"]

_LEN = struct.Struct(">I")
MAX_PADDED = 1 << 24  # 16 MiB: far above any single message (files are chunked)


def padme(length: int) -> int:
    """The Padmé bucket for ``length`` (>= 1)."""
    if length < 1:
        raise ValueError("Padmé is defined for lengths >= 1")
    if length < 3:
        return length
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    last_bits = e - s
    mask = (1 << last_bits) - 1
    return (length + mask) & ~mask


def pad(data: bytes) -> bytes:
    """Prefix the length and pad to the Padmé bucket."""
    total = padme(_LEN.size + len(data))
    if total > MAX_PADDED:
        raise ValueError("message too large to pad")
    return _LEN.pack(len(data)) + data + bytes(total - _LEN.size - len(data))


def unpad(padded: bytes) -> bytes:
    """Undo :func:`pad`; raise :class:`MalformedInput` on any deviation."""
    if len(padded) < _LEN.size:
        raise MalformedInput("padded plaintext too short")
    (n,) = _LEN.unpack_from(padded, 0)
    if n > len(padded) - _LEN.size or padme(_LEN.size + n) != len(padded):
        raise MalformedInput("bad padding length")
    tail = padded[_LEN.size + n :]
    if tail.count(0) != len(tail):
        raise MalformedInput("non-zero padding")
    return padded[_LEN.size : _LEN.size + n]
