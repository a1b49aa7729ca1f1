"""atheris harness: pairing by a spoken code (docs/PROTOCOL.md §19).

The first byte picks the target, the rest is the input:

* 0: ``parse_code`` on the rest as text (undecodable bytes kept as lone
  surrogates): only ``MalformedInput``; an accepted code reads back to
  itself (``parse_code(code.text()) == code``).
* 1-3: ``parse_pair_message`` for phase 1-3: only ``PairingFailed``;
  an accepted message starts with the magic and its phase byte.
* 4-6: a pairing machine that has reached the phase (a real peer did the
  phases before), fed the rest: only ``PairingFailed``, after which the
  machine is failed and stays so; nothing is accepted unless it came from
  the peer (random bytes never complete a run).
* 7: the relay's mailbox logic, the rest read as a script of calls
  (``securechan.relay.pairing``): only ``ApiError`` with a documented code;
  never more than two sides.

    python fuzz/fuzz_pairing.py -max_total_time=600 fuzz/corpus/pairing
"""

from __future__ import annotations

from _fixtures import NOW, check, fixed_identity, run

from securechan.errors import MalformedInput, PairingFailed
from securechan.protocol.address import ContactCard
from securechan.protocol.pair_code import PairingCode, parse_code
from securechan.protocol.pairing import MAGIC, Pairing, Phase, parse_pair_message
from securechan.relay.api import ApiError
from securechan.relay.pairing import PairingService

CARD_A = ContactCard.make(fixed_identity("pair-a"), (), now=NOW).to_bytes()
CARD_B = ContactCard.make(fixed_identity("pair-b"), (), now=NOW).to_bytes()
CODE = PairingCode.make(7, bytes(5))
_CODES = {"no_mailbox", "conflict", "bad_request", "too_large", "busy", "rate_limited"}


def _machine_at(phase: Phase) -> Pairing:
    """Side B waiting for A's message of ``phase`` (A is honest before it)."""
    a, b = Pairing("A", CODE, CARD_A), Pairing("B", CODE, CARD_B)
    for _ in range(int(phase) - 1):
        out_a, out_b = a.outgoing(), b.outgoing()
        for p, d in out_a:
            b.receive(p, d)
        for p, d in out_b:
            a.receive(p, d)
    return b


def _mailbox(script: bytes) -> None:
    clock = [0.0]
    svc = PairingService(clock=lambda: clock[0], max_mailboxes=4, limit=1000)
    held: list[tuple[int, bytes]] = []
    for i in range(0, len(script) - 1, 2):
        op, arg = script[i] % 6, script[i + 1]
        try:
            if op == 0:
                held.append(svc.open(None))
            elif op == 1:
                clock[0] += arg
            elif held:
                n, t = held[arg % len(held)]
                if op == 2:
                    held.append((n, svc.join(None, n)))
                elif op == 3:
                    svc.put(n, t, arg % 5, script[i:])
                elif op == 4:
                    svc.get(n, t, arg % 5)
                else:
                    svc.close(n, t, ok=bool(arg & 1))
        except ApiError as e:
            check(e.api_code in _CODES, f"undocumented mailbox refusal {e.api_code}")
        check(all(len(b.tokens) <= 2 for b in svc._boxes.values()), "a third side")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, rest = data[0] % 8, data[1:]
    if target == 0:
        try:
            code = parse_code(rest.decode("utf-8", "surrogateescape"))
        except MalformedInput:
            return
        check(parse_code(code.text()) == code, "a code that does not read back")
    elif target <= 3:
        phase = Phase(target)
        try:
            msg = parse_pair_message(rest, phase)
        except PairingFailed:
            return
        check(rest[:5] == MAGIC + bytes([phase]) and msg.phase == phase, "bad frame accepted")
    elif target <= 6:
        phase = Phase(target - 3)
        machine = _machine_at(phase)
        try:
            machine.receive(phase, rest)
        except PairingFailed:
            check(machine.failed, "a refused message left the machine usable")
            return
        # Only a PAKE message can be accepted from outside (an element that
        # decodes); the run must then fail at the next step.
        check(phase == Phase.PAKE and not machine.done, "junk accepted past the PAKE")
    else:
        _mailbox(rest)


if __name__ == "__main__":
    run(test_one_input)
