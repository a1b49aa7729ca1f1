"""Split view between two parties (issue 5, "Must show").

A real relay; tehran and washington each reach it through their own
malicious front (``tests/adversary``). After a clean introduction, the front
washington registered at starts serving a forked transparency log: a shadow
log signed with the real relay key, a copy of the real one plus a leaf the
real log never had. Everything that goes through that front (tehran's sends
to washington, washington's fetches, log queries) sees the fork; everything
through tehran's front sees the real log. Each signed checkpoint on its own
verifies.

Clients carry their newest verified checkpoints inside their signed,
encrypted messages and check a peer's against their own view of the same
log. Within one exchange (tehran -> washington, washington -> tehran), both
detect the split view: a one-line SPLIT VIEW report (exit 1 from the CLI,
``Rejected(reason="split-view")`` from the library) with the two conflicting
checkpoints as evidence, and a SplitView entry in each audit log. The
messages themselves are still delivered and shown: the split is about the
relay, not the peer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.audit.checkpoint import open_checkpoint
from securechan.audit.merkle import verify_consistency
from securechan.audit.note import VerifierKey
from securechan.client.results import Received, Rejected
from securechan.errors import ProofFailed
from tests.adversary import RelayProcess, audit_rejections, running_relay
from tests.adversary.parties import Party, transcript
from tests.adversary.world import World, world_of
from tests.test_e2e_relay import json_stream

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay")) as r:
        yield r


@pytest.fixture
def world(
    relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> Iterator[World]:
    pristine = tmp_path_factory.mktemp("pristine")
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington")
        yield w


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


def _send(p: Party, to: str, text: str) -> None:
    async def go() -> None:
        async with p.channel() as ch:
            assert (await ch.send_text(to, text)).pending == 0

    _run(go())


def _receive(p: Party) -> list[Received | Rejected]:
    async def go() -> list[Received | Rejected]:
        async with p.channel() as ch:
            return await ch.receive()

    result: list[Received | Rejected] = _run(go())
    return result


def _relay_key(relay: RelayProcess) -> VerifierKey:
    import urllib.request

    with urllib.request.urlopen(f"{relay.url}/v1/relay", timeout=10) as r:  # noqa: S310
        return VerifierKey.from_text(json.load(r)["log_verifier_key"])


def _assert_conflict(evidence: tuple[str, ...] | list[str], relay: RelayProcess) -> None:
    """Two checkpoints, both signed by the relay's key, that cannot both be
    true: equal sizes with different roots, or a pair the real relay's own
    consistency proof does not join (or cannot: a size it signed and now
    refuses to prove)."""
    import urllib.error
    import urllib.request

    from securechan.audit.receipt import decode_hashes

    key = _relay_key(relay)
    assert len(evidence) == 2
    a, b = (open_checkpoint(n, key) for n in evidence)
    assert (a.size, a.root_hash) != (b.size, b.root_hash)
    if a.size == b.size:
        return
    small, large = (a, b) if a.size < b.size else (b, a)
    url = f"{relay.url}/v1/log/proof/consistency?old={small.size}&new={large.size}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (loopback)
            proof = decode_hashes(json.load(r)["hashes"])
    except urllib.error.HTTPError as e:
        refused = e.code
    else:
        refused = 0
    if refused:
        assert 400 <= refused < 500
        return  # the real log never reached that size: the larger is forged
    with pytest.raises(ProofFailed):
        verify_consistency(small.size, large.size, proof, small.root_hash, large.root_hash)


def test_split_view_detected_by_both_parties_within_one_exchange(
    world: World, relay: RelayProcess
) -> None:
    t, w = world.t, world.w
    before_t, before_w = len(audit_rejections(t.home)), len(audit_rejections(w.home))

    world.front["washington"].fork()

    # 1. tehran -> washington, through washington's (forked) front. tehran
    # refreshes its view before signing: the fork extends what it saw, so
    # tehran cannot tell yet; its message carries the forked checkpoint.
    _send(t, "washington", "Tehran: the draft stands.")

    # washington receives it with the CLI: the message is shown, then the
    # split view is reported and the command exits 1.
    proc = w.run("receive", "--json")
    assert proc.returncode == 1, transcript(proc)
    items = json_stream(proc.stdout)
    assert [x.get("text") for x in items if "text" in x] == ["Tehran: the draft stands."]
    splits = [x for x in items if x.get("rejected") == "split-view"]
    assert len(splits) == 1, items
    _assert_conflict(splits[0]["evidence"], relay)

    # 2. washington -> tehran, through tehran's (honest) front: it carries
    # the real checkpoint, which tehran cannot reconcile with the fork it
    # was shown. The library reports it as a rejection with the evidence.
    _send(w, "tehran", "Washington: agreed.")
    got = _receive(t)
    assert [x.text for x in got if isinstance(x, Received) and x.text] == ["Washington: agreed."]
    split = [x for x in got if isinstance(x, Rejected) and x.reason == "split-view"]
    assert len(split) >= 1, got
    _assert_conflict(split[0].evidence, relay)

    # Both audit logs hold the finding.
    for p, before in ((t, before_t), (w, before_w)):
        reasons = [r["reason"] for r in audit_rejections(p.home)[before:]]
        assert "split-view" in reasons, (p.name, reasons)


def test_no_split_view_when_the_relay_is_honest(world: World) -> None:
    """The same exchange without a fork: no SplitView anywhere (the check
    does not cry wolf), and both sides' checkpoints advance."""
    t, w = world.t, world.w
    before_t, before_w = len(audit_rejections(t.home)), len(audit_rejections(w.home))
    for _ in range(2):
        _send(t, "washington", "Tehran: a point.")
        got_w = _receive(w)
        _send(w, "tehran", "Washington: a reply.")
        got_t = _receive(t)
        for got in (got_w, got_t):
            assert not [x for x in got if isinstance(x, Rejected)], got
    assert audit_rejections(t.home)[before_t:] == []
    assert audit_rejections(w.home)[before_w:] == []
