"""Pairing by a spoken code, end to end (issue 18, "Must show").

A real ``securechan relay serve`` on 127.0.0.1; two delegations with their
own home folders run real ``securechan pair`` processes. The relay's
attacks on the exchange itself (tampered, replayed, spliced messages) are
played byte by byte in tests/test_pairing_protocol.py; here the relay is
honest and the attackers are clients: a wrong code, a reused code, a
guesser who takes the mailbox's second slot, an address that sweeps
nameplates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.identity.contacts import Contacts
from securechan.protocol.pair_code import PairingCode, parse_code
from tests.adversary.relay import RelayProcess, running_relay
from tests.cli_schema import validate

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


def _run(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), "--home", str(home), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*_command(), "--home", str(home), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("pair-relay")) as r:
        yield r


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, relay: RelayProcess) -> dict[str, Path]:
    """Registered homes, made once and copied per test."""
    root = tmp_path_factory.mktemp("pair-homes")
    homes = {}
    for name in ("alice", "bob", "mallory"):
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


def _contacts(home: Path) -> list[str]:
    return [c.name for c in Contacts(home).list()]


def _open(home: Path, relay: RelayProcess, *more: str) -> tuple[subprocess.Popen[str], str]:
    proc = _start(home, "pair", "--relay", relay.url, *more)
    assert proc.stdout is not None
    code = proc.stdout.readline().strip()
    assert code, proc.stderr.read() if proc.stderr else ""
    return proc, code


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _post(relay: RelayProcess, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(  # noqa: S310 - http to our own test relay
        relay.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own relay
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_pairing_pins_both_contacts_verified_by_code(
    relay: RelayProcess, homes: dict[str, Path]
) -> None:
    a, code = _open(homes["alice"], relay)
    assert parse_code(code).bits == 40
    b = _run(homes["bob"], "pair", code, "--relay", relay.url, "--json")
    rc, out, err = _finish(a)
    assert b.returncode == 0, b.stderr
    assert rc == 0, err
    assert "Paired with bob" in out
    shown_b = json.loads(b.stdout)
    validate(shown_b, "ContactInfo")  # docs/cli-json.schema.json
    assert shown_b["name"] == "alice" and shown_b["verified"] is True
    assert len(shown_b["safety_number"].split()) == 12
    for home, peer in ((homes["alice"], "bob"), (homes["bob"], "alice")):
        (c,) = Contacts(home).list()
        assert c.name == peer and c.verified and c.verified_by == "code"
        assert c.card is not None  # the full card: we can send to it
    log = _run(homes["alice"], "log", "show", "--json").stdout
    assert "contact-added" in log and "contact-verified" in log
    shown = _run(homes["alice"], "contact", "show", "bob")
    assert "Verified:      yes, " in shown.stdout and "(by code)" in shown.stdout
    # Comparing safety numbers afterwards (the post-quantum check) still works.
    number = next(
        line.split(":", 1)[1].strip()
        for line in shown.stdout.splitlines()
        if line.startswith("Safety number:")
    )
    verified = _run(homes["alice"], "contact", "verify", "bob", number)
    assert verified.returncode == 0, verified.stderr
    assert Contacts(homes["alice"]).get("bob").verified_by is None
    # Verified by code, then a message goes through on the pinned card.
    sent = _run(homes["alice"], "send", "bob", "hello after pairing")
    assert sent.returncode == 0, sent.stderr
    got = _run(homes["bob"], "receive")
    assert "hello after pairing" in got.stdout
    # The code cannot be used again: its mailbox is gone.
    again = _run(homes["mallory"], "pair", code, "--relay", relay.url)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "no such pairing code" in again.stderr
    assert _contacts(homes["mallory"]) == []


def test_a_wrong_code_fails_on_both_sides_and_pins_nothing(
    relay: RelayProcess, homes: dict[str, Path]
) -> None:
    a, code = _open(homes["alice"], relay)
    right = parse_code(code)
    wrong = PairingCode.make(right.nameplate, bytes([right.secret[0] ^ 1]) + right.secret[1:])
    b = _run(homes["bob"], "pair", wrong.text(), "--relay", relay.url)
    rc, _, err = _finish(a)
    assert b.returncode == 1 and rc == 1
    for stderr in (b.stderr, err.split("\n", 2)[-1]):
        assert stderr.count("\n") == 1 and stderr.startswith("securechan: "), stderr
        assert "nothing was pinned" in stderr
        assert "Traceback" not in stderr
    assert _contacts(homes["alice"]) == [] and _contacts(homes["bob"]) == []
    assert not (homes["alice"] / "contacts.bin").exists()
    assert not (homes["bob"] / "contacts.bin").exists()
    # The failed run burned the code: the right code no longer works either.
    late = _run(homes["bob"], "pair", code, "--relay", relay.url)
    assert late.returncode == 1 and "no such pairing code" in late.stderr
    # And the failure is in each side's audit log.
    for home in (homes["alice"], homes["bob"]):
        shown = _run(home, "log", "show", "--json")
        assert "pairing-failed" in shown.stdout


def test_a_name_pinned_to_another_key_refuses_before_confirming(
    relay: RelayProcess, homes: dict[str, Path], tmp_path: Path
) -> None:
    # Bob already pinned someone else as "alice": his side refuses (exit 4,
    # as 'contact add' would) before its key confirmation goes out, so
    # Alice's run fails too and neither side pins anything.
    exported = tmp_path / "mallory.id"
    assert _run(homes["mallory"], "id", "export", "-o", str(exported)).returncode == 0
    assert _run(homes["bob"], "contact", "add", str(exported), "--name", "alice").returncode == 0
    before = (homes["bob"] / "contacts.bin").read_bytes()
    a, code = _open(homes["alice"], relay)
    b = _run(homes["bob"], "pair", code, "--relay", relay.url)
    rc, _, err = _finish(a)
    assert b.returncode == 4, b.stderr
    assert "alice" in b.stderr and b.stderr.count("\n") == 1
    assert rc == 1 and "nothing was pinned" in err
    assert (homes["bob"] / "contacts.bin").read_bytes() == before
    assert _contacts(homes["alice"]) == []


def test_a_guesser_who_takes_the_slot_burns_the_code(
    relay: RelayProcess, homes: dict[str, Path]
) -> None:
    # Mallory knows the nameplate (it is not secret) but not the words: her
    # one guess takes the second slot, fails, and the real joiner is refused.
    a, code = _open(homes["alice"], relay)
    right = parse_code(code)
    guess = PairingCode.make(
        right.nameplate, bytes(5) if right.secret != bytes(5) else bytes([1] * 5)
    )
    m = _run(homes["mallory"], "pair", guess.text(), "--relay", relay.url)
    rc, _, _ = _finish(a)
    assert m.returncode == 1 and rc == 1
    b = _run(homes["bob"], "pair", code, "--relay", relay.url)
    assert b.returncode == 1
    assert "already in use" in b.stderr or "no such pairing code" in b.stderr
    for name in ("alice", "bob", "mallory"):
        assert _contacts(homes[name]) == []


def test_the_mailbox_takes_two_sides_once_and_is_gone_after_use(relay: RelayProcess) -> None:
    status, opened = _post(relay, "/v1/pair/open", None)
    assert status == 201
    n, token_a = opened["nameplate"], opened["token"]
    status, joined = _post(relay, "/v1/pair/join", {"nameplate": n})
    assert status == 200
    token_b = joined["token"]
    # A third side is refused.
    status, body = _post(relay, "/v1/pair/join", {"nameplate": n})
    assert status == 409 and body["error"]["code"] == "conflict"
    # Each phase once: other bytes for a posted phase are refused.
    put = {"nameplate": n, "token": token_a, "phase": 1, "body": "AAAA"}
    assert _post(relay, "/v1/pair/put", put)[0] == 200
    assert _post(relay, "/v1/pair/put", put)[0] == 200  # a retry: the same bytes
    status, body = _post(relay, "/v1/pair/put", {**put, "body": "AAAB"})
    assert status == 409
    # Only a side's token reads; the other side reads A's message.
    status, got = _post(relay, "/v1/pair/get", {"nameplate": n, "token": token_b, "phase": 1})
    assert status == 200 and got["body"] == "AAAA"
    forged = "A" * 22
    status, body = _post(relay, "/v1/pair/get", {"nameplate": n, "token": forged, "phase": 1})
    assert status == 404 and body["error"]["code"] == "no_mailbox"
    # Both close: the mailbox and everything in it are gone.
    status, body = _post(relay, "/v1/pair/close", {"nameplate": n, "token": token_a, "ok": True})
    assert status == 200 and body == {"deleted": False}
    status, body = _post(relay, "/v1/pair/close", {"nameplate": n, "token": token_b, "ok": True})
    assert status == 200 and body == {"deleted": True}
    status, _ = _post(relay, "/v1/pair/get", {"nameplate": n, "token": token_b, "phase": 1})
    assert status == 404
    assert _post(relay, "/v1/pair/join", {"nameplate": n})[0] == 404


def test_opens_and_joins_are_rate_limited_per_address(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Its own relay: the limit is per process and per address.
    with running_relay(tmp_path_factory.mktemp("pair-rate")) as relay:
        statuses = [_post(relay, "/v1/pair/join", {"nameplate": 999_999})[0] for _ in range(20)]
        assert statuses == [404] * 20
        status, body = _post(relay, "/v1/pair/open", None)
        assert status == 429 and body["error"]["code"] == "rate_limited"


def test_the_library_pairs_two_channels(relay: RelayProcess, tmp_path: Path) -> None:
    # Channel.pair on both sides, in one event loop: A's on_code hands the
    # code to B as a person would read it out.
    import asyncio

    from securechan.client.channel import Channel
    from securechan.identity import Keystore
    from securechan.primitives import KDF_INTERACTIVE

    homes = {n: tmp_path / n for n in ("cairo", "delhi")}
    for name, home in homes.items():
        Keystore(home).create(name, PASS, kdf=KDF_INTERACTIVE)

    async def main() -> tuple[str, str]:
        heard: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        async with (
            Channel.open(homes["cairo"], PASS) as a,
            Channel.open(homes["delhi"], PASS) as b,
        ):
            await a.register(relay.url)
            await b.register(relay.url)
            made = asyncio.create_task(a.pair(words=3, on_code=heard.set_result))
            joined = await b.pair(code=await heard)
            return (await made).name, joined.name

    assert asyncio.run(main()) == ("delhi", "cairo")
    (c,) = Contacts(homes["cairo"]).list()
    assert c.verified_by == "code" and c.card is not None
