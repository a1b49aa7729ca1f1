"""The relay's pairing mailbox logic (securechan/relay/pairing.py), with its
clock and randomness injected: expiry, one use, deletion, limits.

The same behaviour over HTTP with a real relay process is in
tests/test_pairing_e2e.py.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.relay.api import ApiError
from securechan.relay.pairing import MAX_BODY, PairingService


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _service(clock: Clock, **kw: object) -> PairingService:
    counter = itertools.count(1)
    return PairingService(
        clock=clock,
        random=lambda n: next(counter).to_bytes(n, "big"),
        **kw,  # type: ignore[arg-type]
    )


def _code(e: pytest.ExceptionInfo[ApiError]) -> str:
    return e.value.api_code


def test_a_mailbox_expires_with_everything_in_it() -> None:
    clock = Clock()
    svc = _service(clock, ttl=300)
    n, a = svc.open("1.2.3.4")
    b = svc.join("5.6.7.8", n)
    svc.put(n, a, 1, b"x" * 33)
    assert svc.get(n, b, 1) == b"x" * 33
    clock.now += 299
    assert len(svc) == 1
    clock.now += 1
    assert len(svc) == 0
    for call in (lambda: svc.get(n, b, 1), lambda: svc.join("9.9.9.9", n)):
        with pytest.raises(ApiError) as e:
            call()
        assert _code(e) == "no_mailbox"


def test_a_failed_side_deletes_the_mailbox_at_once() -> None:
    svc = _service(Clock())
    n, a = svc.open(None)
    b = svc.join(None, n)
    assert svc.close(n, b, ok=False) is True
    assert len(svc) == 0
    with pytest.raises(ApiError):
        svc.get(n, a, 1)


def test_a_happy_mailbox_waits_for_both_sides() -> None:
    svc = _service(Clock())
    n, a = svc.open(None)
    b = svc.join(None, n)
    svc.put(n, a, 3, b"confirm")
    assert svc.close(n, a, ok=True) is False
    assert svc.get(n, b, 3) == b"confirm"  # the slower side still reads
    assert svc.close(n, b, ok=True) is True
    assert len(svc) == 0


def test_tokens_sides_and_phases_are_checked() -> None:
    svc = _service(Clock())
    n, a = svc.open(None)
    with pytest.raises(ApiError) as e:
        svc.put(n, a[:-1] + b"\xff", 1, b"x")
    assert _code(e) == "no_mailbox"
    b = svc.join(None, n)
    with pytest.raises(ApiError) as e:
        svc.join(None, n)
    assert _code(e) == "conflict"
    assert svc.get(n, a, 1) is None  # own messages are never read back
    svc.put(n, a, 1, b"one")
    assert svc.get(n, a, 1) is None
    assert svc.get(n, b, 1) == b"one"
    for phase in (0, 4, 2**40):
        with pytest.raises(ApiError) as e:
            svc.put(n, a, phase, b"x")
        assert _code(e) == "bad_request"
    for body in (b"", b"x" * (MAX_BODY + 1)):
        with pytest.raises(ApiError) as e:
            svc.put(n, a, 2, body)
        assert _code(e) == "too_large"
    with pytest.raises(ApiError) as e:
        svc.put(n, a, 1, b"two")
    assert _code(e) == "conflict"
    assert svc.get(n, b, 1) == b"one"


def test_the_rate_limit_is_per_address_and_recovers() -> None:
    clock = Clock()
    svc = _service(clock, limit=3, window=60)
    for _ in range(3):
        svc.open("10.0.0.1")
    with pytest.raises(ApiError) as e:
        svc.open("10.0.0.1")
    assert _code(e) == "rate_limited" and e.value.retry_after == 61
    svc.open("10.0.0.2")  # another address is not affected
    clock.now += 60
    svc.open("10.0.0.1")


def test_too_many_mailboxes_at_once_is_busy_not_a_crash() -> None:
    svc = _service(Clock(), max_mailboxes=5, limit=100)
    seen = {svc.open(None)[0] for _ in range(5)}
    assert len(seen) == 5
    with pytest.raises(ApiError) as e:
        svc.open(None)
    assert _code(e) == "busy"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["open", "join", "put", "get", "close", "tick"]),
            st.integers(0, 3),
            st.integers(0, 4),
            st.binary(max_size=8),
        ),
        max_size=60,
    )
)
@settings(max_examples=100, deadline=None)
def test_any_sequence_of_calls_answers_or_refuses_cleanly(
    ops: list[tuple[str, int, int, bytes]],
) -> None:
    clock = Clock()
    svc = _service(clock, ttl=50, max_mailboxes=4, limit=10**6)
    tokens: list[tuple[int, bytes]] = []
    for op, who, phase, body in ops:
        try:
            if op == "open":
                tokens.append(svc.open(None))
            elif op == "tick":
                clock.now += 20
            elif not tokens:
                continue
            elif op == "join":
                n = tokens[who % len(tokens)][0]
                tokens.append((n, svc.join(None, n)))
            else:
                n, t = tokens[who % len(tokens)]
                if op == "put":
                    svc.put(n, t, phase, body)
                elif op == "get":
                    svc.get(n, t, phase)
                else:
                    svc.close(n, t, ok=bool(phase % 2))
        except ApiError as e:
            assert e.api_code in {"no_mailbox", "conflict", "bad_request", "too_large", "busy"}  # noqa: PT017 - a fuzz loop
        assert len(svc) <= 4
        # Every mailbox alive has at most two sides.
        assert all(len(box.tokens) <= 2 for box in svc._boxes.values())
