"""Padmé padding (securechan.protocol.padding).

The reference is the PETS 2019 paper (Nikitin et al., "Reducing Metadata
Leakage from Encrypted Files and Communication with PURBs", §4, Algorithm 1):

    E = floor(log2 L);  S = floor(log2 E) + 1;  lastBits = E - S
    bitMask = 2**lastBits - 1;  padme(L) = (L + bitMask) & ~bitMask

The tests below compute that formula independently (with ``math.log2``, not
with ``int.bit_length`` as the implementation does) and hold ``padme``, ``pad``
and ``unpad`` to it. ``unpad`` must be strict: every padded form but the one
``pad`` makes is refused with ``MalformedInput`` and nothing else.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.errors import MalformedInput, SecurechanError
from securechan.protocol.padding import MAX_PADDED, pad, padme, unpad

_LEN = 4  # the u32be length prefix


def paper_padme(length: int) -> int:
    """Algorithm 1 of the paper, literally (floats are exact below 2**24)."""
    if length < 3:
        # log2(log2(L)) is undefined for L < 2: the paper's definition starts
        # at L = 2, where lastBits = 0; L = 1 cannot be padded either.
        return length
    e = math.floor(math.log2(length))
    s = math.floor(math.log2(e)) + 1
    last_bits = e - s
    bit_mask = (1 << last_bits) - 1
    return (length + bit_mask) & ~bit_mask


# (L, padme(L)), worked by hand from the formula above.
KNOWN = [
    (1, 1),
    (2, 2),
    (3, 3),  # E=1, S=1, lastBits=0
    (7, 7),  # E=2, S=2, lastBits=0
    (8, 8),  # E=3, S=2, lastBits=1
    (9, 10),
    (15, 16),
    (17, 18),  # E=4, S=3, lastBits=1
    (33, 36),  # E=5, S=3, lastBits=2
    (65, 72),  # E=6, S=3, lastBits=3
    (100, 104),
    (257, 272),  # E=8, S=4, lastBits=4
    (1000, 1024),  # E=9, S=4, lastBits=5
    (1024, 1024),
    (1025, 1088),  # E=10, S=4, lastBits=6
    (5000, 5120),  # E=12, S=4, lastBits=8
    (65537, 67584),  # E=16, S=5, lastBits=11
    (1_000_000, 1_015_808),  # E=19, S=5, lastBits=14
]


@pytest.mark.parametrize(("length", "bucket"), KNOWN)
def test_padme_known_values(length: int, bucket: int) -> None:
    assert paper_padme(length) == bucket  # the table is right
    assert padme(length) == bucket


@given(st.integers(min_value=1, max_value=MAX_PADDED))
@settings(max_examples=500, deadline=None)
def test_padme_matches_the_paper(length: int) -> None:
    bucket = padme(length)
    assert bucket == paper_padme(length)
    assert bucket >= length
    # Only the top floor(log2 E) + 1 bits of the bucket may be set.
    e = length.bit_length() - 1
    if length >= 3:
        low_zero_bits = e - (math.floor(math.log2(e)) + 1)
        assert bucket % (1 << low_zero_bits) == 0
    # Idempotent: a bucket is its own bucket.
    assert padme(bucket) == bucket


@given(st.integers(min_value=100, max_value=1 << 40))
@settings(max_examples=500, deadline=None)
def test_padme_overhead_at_most_12_percent(length: int) -> None:
    assert (padme(length) - length) / length <= 0.12


def test_padme_rejects_zero_and_negative() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="lengths >= 1"):
            padme(bad)


def test_padme_buckets_are_few() -> None:
    # What the relay learns: lengths 1000..2000 fall into a handful of sizes.
    buckets = {padme(n) for n in range(1000, 2001)}
    assert len(buckets) <= 20


@given(st.binary(max_size=5000))
@settings(max_examples=300, deadline=None)
def test_pad_unpad_round_trip(data: bytes) -> None:
    padded = pad(data)
    assert len(padded) == padme(_LEN + len(data))
    assert padded[:_LEN] == struct.pack(">I", len(data))
    assert padded[_LEN : _LEN + len(data)] == data
    assert set(padded[_LEN + len(data) :]) <= {0}
    assert unpad(padded) == data


def test_pad_refuses_oversized() -> None:
    with pytest.raises(ValueError, match="too large"):
        pad(bytes(MAX_PADDED))


def _with_padding(n: int) -> bytes:
    """A padded form of an n-byte message that has at least one padding byte."""
    data = bytes(range(256)) * (n // 256 + 1)
    padded = pad(data[:n])
    assert len(padded) > _LEN + n, "choose n so that there is padding"
    return padded


@pytest.mark.parametrize("n", [5, 97, 1000, 5000])
def test_unpad_refuses_non_zero_padding(n: int) -> None:
    padded = _with_padding(n)
    for pos in range(_LEN + n, len(padded)):
        for value in (0x01, 0x80, 0xFF):
            bad = padded[:pos] + bytes([value]) + padded[pos + 1 :]
            with pytest.raises(MalformedInput):
                unpad(bad)


@pytest.mark.parametrize("n", [0, 5, 97, 1000, 5000])
def test_unpad_refuses_wrong_length_prefix(n: int) -> None:
    padded = _with_padding(n) if n else pad(b"")
    total = len(padded)
    # Every prefix whose bucket is not this length, and every prefix that
    # does not fit, is refused. (A prefix inside the same bucket names a
    # different, shorter or longer, message of the same padded size: that is
    # the format, and unpad only ever sees authenticated plaintext.)
    candidates = {0, 1, n + 1, n - 1, n + 64, n * 2, total - _LEN + 1, total, 2**32 - 1}
    candidates |= {n ^ (1 << bit) for bit in range(32)}
    refused = 0
    for claimed in sorted(c for c in candidates if 0 <= c < 2**32 and c != n):
        bad = struct.pack(">I", claimed) + padded[_LEN:]
        fits = claimed <= total - _LEN and padme(_LEN + claimed) == total
        if fits:
            continue
        with pytest.raises(MalformedInput):
            unpad(bad)
        refused += 1
    assert refused >= 20


@pytest.mark.parametrize("n", [0, 1, 5, 97, 1000, 5000])
def test_unpad_refuses_truncation_and_extension(n: int) -> None:
    padded = pad(bytes(n))
    for cut in range(len(padded)):
        with pytest.raises(MalformedInput):
            unpad(padded[:cut])
    for extra in (b"\x00", bytes(8), bytes(padme(len(padded) + 1) - len(padded))):
        with pytest.raises(MalformedInput):
            unpad(padded + extra)


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_unpad_random_bytes_only_malformed(data: bytes) -> None:
    try:
        out = unpad(data)
    except MalformedInput:
        return
    except SecurechanError as e:  # pragma: no cover - a failure report
        pytest.fail(f"unpad raised {type(e).__name__}, not MalformedInput")
    # Accepted: then it was exactly what pad makes (one padded form each).
    assert pad(out) == data


@given(st.binary(min_size=1, max_size=300), st.data())
@settings(max_examples=300, deadline=None)
def test_unpad_single_byte_change_of_padded_is_refused_or_canonical(
    data: bytes, draw: st.DataObject
) -> None:
    padded = pad(data)
    pos = draw.draw(st.integers(0, len(padded) - 1))
    flip = draw.draw(st.integers(1, 255))
    bad = padded[:pos] + bytes([padded[pos] ^ flip]) + padded[pos + 1 :]
    try:
        out = unpad(bad)
    except MalformedInput:
        return
    # Only a change of the message bytes themselves, or of the length prefix
    # within the same bucket, can be accepted; either way it is canonical.
    assert pad(out) == bad
    assert out != data
