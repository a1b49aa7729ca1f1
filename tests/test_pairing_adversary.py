"""Pairing through a relay that cheats (issue 18, "Must show").

A real relay process with the scriptable malicious relay
(:mod:`securechan.testing.malicious_relay`) in front of it; both sides run
real ``securechan pair`` processes against the proxy's URL. The proxy
plays the relay operator: it rewrites the pairing mailbox's answers to
tamper with a PAKE message, to replay one from an earlier pairing, and to
splice in a second pairing of its own (a man in the middle with a guessed
code). Each time both sides fail with one line and pin nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from securechan.identity.contacts import Contacts
from securechan.identity.keys import Identity
from securechan.protocol.address import ContactCard
from securechan.protocol.pair_code import PairingCode
from securechan.protocol.pairing import Pairing, Phase
from securechan.testing.malicious_relay import Exchange, MaliciousRelay, b64d, b64e
from tests.adversary.relay import RelayProcess, running_relay

pytestmark = pytest.mark.timeout(300)

PASS = "a long enough test passphrase"  # noqa: S105 - a test home's


def _command() -> list[str]:
    found = shutil.which("securechan", path=str(Path(sys.executable).parent))
    assert found is not None
    return [found]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    env["SECURECHAN_PASSPHRASE"] = PASS
    return env


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), "--home", str(home), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("pair-adv-relay")) as r:
        yield r


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, relay: RelayProcess) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pair-adv-homes")
    homes = {}
    for name in ("alice", "bob"):
        home = root / name
        for args in (
            ("init", "--name", name, "--kdf", "interactive"),
            ("register", "--relay", relay.url),
        ):
            out = _run(home, *args)
            assert out.returncode == 0, out.stderr
        homes[name] = home
    return homes


@pytest.fixture
def homes(made: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, home in made.items():
        shutil.copytree(home, tmp_path / name)
        out[name] = tmp_path / name
    return out


@pytest.fixture
def front(relay: RelayProcess, tmp_path: Path) -> Iterator[MaliciousRelay]:
    with MaliciousRelay(relay.url, relay.data, tmp_path / "front") as proxy:
        yield proxy


def _pair(homes: dict[str, Path], url: str) -> tuple[subprocess.CompletedProcess[str], int, str]:
    """Alice makes a code, Bob types it; both through ``url``."""
    a = subprocess.Popen(
        [*_command(), "--home", str(homes["alice"]), "pair", "--relay", url],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert a.stdout is not None
    code = a.stdout.readline().strip()
    b = _run(homes["bob"], "pair", code, "--relay", url)
    _, err = a.communicate(timeout=120)
    return b, a.returncode, err


def _assert_both_failed_and_nothing_pinned(
    homes: dict[str, Path], b: subprocess.CompletedProcess[str], rc_a: int, err_a: str
) -> None:
    assert b.returncode == 1, b.stderr
    assert rc_a == 1, err_a
    last_a = err_a.strip().splitlines()[-1]
    for line in (b.stderr.strip(), last_a):
        assert line.startswith("securechan: ") and "\n" not in line, line
        assert "Traceback" not in line
    for home in homes.values():
        assert Contacts(home).list() == []


class _Script:
    """What the cheating relay does with the pairing mailbox's answers:
    ``change(phase, body, to_joiner)`` rewrites a message a side fetches."""

    def __init__(self, change: Callable[[int, int, bytes, bool], bytes | None]) -> None:
        self.change = change
        self.joiner_tokens: set[str] = set()
        self.puts: list[dict[str, object]] = []
        self.changed = 0
        self.lock = threading.Lock()

    def __call__(self, x: Exchange, status: int, reply: bytes) -> tuple[int, bytes]:
        if status != 200 or not x.body:
            return status, reply
        asked = json.loads(x.body)
        if x.path == "/v1/pair/join":
            with self.lock:
                self.joiner_tokens.add(json.loads(reply)["token"])
        elif x.path == "/v1/pair/put":
            with self.lock:
                self.puts.append(asked)
        elif x.path == "/v1/pair/get":
            answer = json.loads(reply)
            if "body" in answer and answer["body"] is not None:
                to_joiner = asked["token"] in self.joiner_tokens
                new = self.change(
                    asked["nameplate"], asked["phase"], b64d(answer["body"]), to_joiner
                )
                if new is not None:
                    self.changed += 1
                    answer["body"] = b64e(new)
                    return status, json.dumps(answer).encode()
        return status, reply


def test_a_relay_tampering_with_a_pake_message_is_caught(
    front: MaliciousRelay, homes: dict[str, Path]
) -> None:
    def flip(nameplate: int, phase: int, body: bytes, to_joiner: bool) -> bytes | None:
        if phase == Phase.PAKE and to_joiner:
            return body[:-1] + bytes([body[-1] ^ 0x01])
        return None

    script = _Script(flip)
    front.on_response("pair", script)
    b, rc_a, err_a = _pair(homes, front.url)
    _assert_both_failed_and_nothing_pinned(homes, b, rc_a, err_a)
    assert script.changed == 1


def test_a_relay_replaying_a_pake_message_from_an_earlier_pairing_is_caught(
    front: MaliciousRelay, homes: dict[str, Path], tmp_path: Path
) -> None:
    # An earlier, honest pairing (on copies of the homes) that the relay
    # records; then, in a new pairing, it plays the old A message to B.
    first = {n: tmp_path / f"first-{n}" for n in homes}
    for n, home in homes.items():
        shutil.copytree(home, first[n])
    recorder = _Script(lambda *_: None)
    front.on_response("pair", recorder)
    b, rc_a, err_a = _pair(first, front.url)
    assert b.returncode == 0 and rc_a == 0, (b.stderr, err_a)
    old_pake = next(
        b64d(str(p["body"]))
        for p in recorder.puts
        if p["phase"] == Phase.PAKE and p["token"] not in recorder.joiner_tokens
    )

    def replay(nameplate: int, phase: int, body: bytes, to_joiner: bool) -> bytes | None:
        return old_pake if phase == Phase.PAKE and to_joiner else None

    script = _Script(replay)
    front.on_response("pair", script)
    b, rc_a, err_a = _pair(homes, front.url)
    _assert_both_failed_and_nothing_pinned(homes, b, rc_a, err_a)
    assert script.changed == 1


def test_a_relay_running_a_second_pairing_in_between_is_caught(
    front: MaliciousRelay, homes: dict[str, Path]
) -> None:
    # The relay runs its own side A, with its own card and a guessed code for
    # the same nameplate, and shows its messages to B in place of Alice's:
    # a man in the middle who does not know the words.
    mallory = Identity.generate("alice", now=1_765_000_000)
    card = ContactCard.make(mallory, (), now=1_765_000_000).to_bytes()
    runs: dict[int, Pairing] = {}

    def splice(nameplate: int, phase: int, body: bytes, to_joiner: bool) -> bytes | None:
        if not to_joiner:
            return None
        run = runs.get(nameplate)
        if run is None:
            guess = PairingCode.make(nameplate, bytes(5))
            run = runs[nameplate] = Pairing("A", guess, card)
        if phase == Phase.PAKE:
            ((_, mine),) = run.outgoing()
            return mine
        return None

    script = _Script(splice)
    front.on_response("pair", script)
    b, rc_a, err_a = _pair(homes, front.url)
    _assert_both_failed_and_nothing_pinned(homes, b, rc_a, err_a)
    assert script.changed == 1, "the relay never got to splice"
