"""The agent (docs/AGENT.md) as a real process, with a real relay process.

Every client here is written against docs/AGENT.md: raw JSON-RPC frames on
the Unix socket, or ``securechan.client.agent_client``. Attacks played: a
malformed frame, an oversized frame, a batch, a flood of requests, too many
connections, another user on the socket, a stale socket from a SIGKILLed
agent, an expired key.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.agent.group_methods import GROUP_METHODS
from securechan.agent.methods import METHODS
from securechan.agent.peercred import peer_credentials
from securechan.agent.rpc import MAX_FRAME, AgentErrorCode, Request, RpcError, parse_request
from securechan.client.agent_client import AgentClient, AsyncAgentClient
from securechan.client.agent_paths import socket_path
from securechan.errors import AgentLocked, AgentUnavailable, ContactNotFound, VerificationFailed
from tests.adversary.parties import Party, introduce, make_people, transcript
from tests.adversary.relay import RelayProcess, clean_env, running_relay
from tests.adversary.world import PASSPHRASES
from tests.cli_schema import validate

DOC = Path(__file__).resolve().parent.parent / "docs" / "AGENT.md"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("agent-relay")) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent-pristine")


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR (socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sc-rt-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def pair(
    relay: RelayProcess, pristine: Path, tmp_path: Path, runtime: Path
) -> Iterator[tuple[Party, Party]]:
    people = make_people(
        pristine,
        tmp_path,
        {"tehran": PASSPHRASES["tehran"], "washington": PASSPHRASES["washington"]},
    )
    t, w = people["tehran"], people["washington"]
    asyncio.run(asyncio.wait_for(introduce(t, relay.url, w, relay.url), 60))
    yield t, w
    # Never leave an agent behind, whatever the test did.
    t.run("agent", "stop")


def _frames(sock: socket.socket, *lines: bytes) -> list[dict[str, Any]]:
    f = sock.makefile("rb")
    sock.sendall(b"".join(lines))
    return [json.loads(f.readline()) for _ in lines]


def _raw(home: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(socket_path(home)))
    return s


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- frames (sans-I/O) ----------------------------------------------------------------


def _parse_or_code(frame: bytes) -> Request | AgentErrorCode:
    """The request, or the error code it was refused with (never another exception)."""
    try:
        return parse_request(frame)
    except RpcError as e:
        return e.code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(frame: bytes) -> None:
    request = _parse_or_code(frame)
    if not isinstance(request, AgentErrorCode):
        assert isinstance(request.params, dict)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["jsonrpc", "method", "params", "id", "extra"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=80) | st.just({}),
    )
)
def test_json_objects_parse_or_fail_cleanly(obj: dict[str, Any]) -> None:
    request = _parse_or_code(json.dumps(obj).encode())
    if not isinstance(request, AgentErrorCode):
        assert obj["jsonrpc"] == "2.0" and isinstance(obj["method"], str)
        assert set(obj) <= {"jsonrpc", "method", "params", "id"}
        assert request.is_notification == ("id" not in obj)


def test_frame_rules() -> None:
    ok = parse_request(b'{"jsonrpc":"2.0","id":7,"method":"send","params":{"contact":"x"}}')
    assert (ok.method, ok.id, ok.params, ok.is_notification) == ("send", 7, {"contact": "x"}, False)
    refused = {
        b'{"jsonrpc":"2.0","id":1,"id":2,"method":"a"}': AgentErrorCode.PARSE_ERROR,
        b'[{"jsonrpc":"2.0","id":1,"method":"a"}]': AgentErrorCode.INVALID_REQUEST,
        b'{"jsonrpc":"1.0","id":1,"method":"a"}': AgentErrorCode.INVALID_REQUEST,
        b'{"jsonrpc":"2.0","id":true,"method":"a"}': AgentErrorCode.INVALID_REQUEST,
        b'{"jsonrpc":"2.0","id":9007199254740992,"method":"a"}': AgentErrorCode.INVALID_REQUEST,
        b'{"jsonrpc":"2.0","id":1,"method":"a b"}': AgentErrorCode.INVALID_REQUEST,
        b'{"jsonrpc":"2.0","id":1,"method":"a","params":[1]}': AgentErrorCode.INVALID_PARAMS,
        b'{"jsonrpc":"2.0","id":1,"method":"a","x":1}': AgentErrorCode.INVALID_REQUEST,
        b'{"jsonrpc":"2.0","id":1,"method":"a","params":{"n":NaN}}': AgentErrorCode.PARSE_ERROR,
        b"\xff": AgentErrorCode.PARSE_ERROR,
        b"{" * (MAX_FRAME + 1): AgentErrorCode.INVALID_REQUEST,
    }
    for frame, code in refused.items():
        with pytest.raises(RpcError) as info:
            parse_request(frame)
        assert info.value.code == code, frame[:60]


def test_agent_md_lists_exactly_the_methods() -> None:
    text = DOC.read_text()
    section = text[text.index("## Methods") : text.index("Notifications (no `id`)")]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert documented == {*METHODS, *GROUP_METHODS, "subscribeReceive", "unsubscribeReceive"}


def test_peer_credentials_are_the_kernel_s() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        creds = peer_credentials(a)
    assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.geteuid(), os.getegid())


# --- a real agent and a real relay ------------------------------------------------------


def test_send_receive_follow_and_statement_through_the_agent(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    t, w = pair
    out = t.ok("agent", "start")
    assert "agent started" in out
    # While the agent runs, a command the fast path does not serve goes
    # through the agent too instead of opening the same database.
    busy = t.run("receive", "--follow", "--timeout", "1")
    assert busy.returncode == 0 and "an agent is running" not in busy.stderr, transcript(busy)
    with AgentClient(t.home) as agent:
        sent = agent.send_text("washington", "through the agent")
        assert sent.contact == "washington" and sent.pending == 0
        got = [json.loads(x) for x in w.ok("receive", "--json").splitlines()]  # NDJSON
        texts = [x.get("text") for x in got]
        assert "through the agent" in texts

    async def follow() -> dict[str, Any]:
        async with await AsyncAgentClient.connect(t.home) as sub:
            assert await sub.call("subscribeReceive") == {"subscribed": True}
            await asyncio.to_thread(w.ok, "send", "tehran", "pushed to the subscriber")
            while True:
                method, params = await asyncio.wait_for(sub.next_notification(), 60)
                if method == "receive" and params["item"].get("text"):
                    return dict(params["item"])

    item = asyncio.run(follow())
    assert item["text"] == "pushed to the subscriber" and item["contact"] == "washington"
    with AgentClient(t.home) as agent:
        # The background receiver kept it for the next `receive`, once.
        items = agent.receive()
        assert [x.text for x in items if getattr(x, "text", None)] == ["pushed to the subscriber"]
        assert agent.receive() == []
        history = agent.history("washington")
        summaries = [row[4] for row in history]
        assert any("through the agent" in s for s in summaries), summaries
        out_id = next(r[5] for r in history if "through the agent" in r[4])
        exported = agent.statement_export(out_id, tmp_path / "st.txt")
        assert exported.file == str(tmp_path / "st.txt") and exported.log is True
        with pytest.raises(ContactNotFound):
            agent.send_text("nobody", "x")
    verified = t.run("statement", "verify", tmp_path / "st.txt")
    assert verified.returncode == 0, transcript(verified)
    assert t.ok("agent", "stop").strip() == "agent stopped"
    # The in-process fallback: with no agent, commands work on their own.
    assert t.run("status").returncode == 0
    gone = t.run("agent", "status")
    assert gone.returncode == 3 and "no agent" in gone.stderr, transcript(gone)


def test_ttl_locks_the_key_and_unlock_restores_it(pair: tuple[Party, Party]) -> None:
    t, _ = pair
    t.ok("agent", "start", "--idle-ttl", "1", "--max-ttl", "60")
    with AgentClient(t.home) as agent:
        assert agent.status().locked is False
        _wait_for(lambda: agent.status().locked, timeout=10)
        with pytest.raises(AgentLocked):
            agent.history()
        with pytest.raises(VerificationFailed):
            agent.unlock("not the passphrase")
        assert agent.status().locked is True
        agent.unlock(t.passphrase)
        assert agent.history()  # the introduction's messages
        assert agent.lock() == {"locked": True, "was_unlocked": True}
        with pytest.raises(AgentLocked):
            agent.send_text("washington", "refused while locked")
    locked = t.run("agent", "status")
    assert locked.returncode == 0 and "locked" in locked.stdout
    as_json = t.run("agent", "status", "--json")
    assert as_json.returncode == 0, transcript(as_json)
    validate(json.loads(as_json.stdout), "AgentStatus")  # docs/cli-json.schema.json


def test_bad_frames_floods_and_connection_limit_leave_the_owner_served(
    pair: tuple[Party, Party],
) -> None:
    t, _ = pair
    t.ok("agent", "start")
    with _raw(t.home) as s:
        answers = _frames(
            s,
            b"not json\n",
            b'[{"jsonrpc":"2.0","id":1,"method":"version"}]\n',
            b'{"jsonrpc":"2.0","id":2,"method":"nope"}\n',
            b'{"jsonrpc":"2.0","id":3,"method":"send","params":{"contact":"x","bogus":1}}\n',
            b'{"jsonrpc":"2.0","id":4,"method":"version"}\n',
        )
        assert [a.get("error", {}).get("code") for a in answers] == [
            -32700,
            -32600,
            -32601,
            -32602,
            None,
        ]
        assert answers[4]["result"]["protocol"] == 1
    # An oversized frame: one error, then the connection is closed.
    with _raw(t.home) as s:
        s.sendall(b"x" * (MAX_FRAME + 10) + b"\n")
        f = s.makefile("rb")
        assert json.loads(f.readline())["error"]["code"] == -32600
        assert f.readline() == b""
    # A flood of 400 pipelined requests that need the key: some are answered
    # busy at once, every one is answered, and another connection is served
    # meanwhile.
    flood = _raw(t.home)
    lines = [
        json.dumps(
            {"jsonrpc": "2.0", "id": i, "method": "send", "params": {"contact": "x", "text": "y"}}
        ).encode()
        + b"\n"
        for i in range(400)
    ]
    flood.sendall(b"".join(lines))
    started = time.monotonic()
    with AgentClient(t.home, timeout=30) as owner:
        assert owner.call("version")["protocol"] == 1
    assert time.monotonic() - started < 10
    f = flood.makefile("rb")
    answers = [json.loads(f.readline()) for _ in lines]
    flood.close()
    codes = [a["error"]["code"] for a in answers]
    assert sorted(a["id"] for a in answers) == list(range(400))
    assert set(codes) <= {-32000, -32002} and -32002 in codes and -32000 in codes
    # Too many connections: the 65th is refused, the agent survives.
    held = [_raw(t.home) for _ in range(64)]
    try:
        _wait_for(lambda: True)
        extra = _raw(t.home)
        f = extra.makefile("rb")
        assert json.loads(f.readline())["error"]["code"] == -32002
        extra.close()
    finally:
        for s in held:
            s.close()
    with AgentClient(t.home) as owner:
        assert owner.status().locked is False


def test_sigkilled_agent_leaves_a_stale_socket_that_the_next_replaces(
    pair: tuple[Party, Party],
) -> None:
    t, _ = pair
    t.ok("agent", "start")
    with AgentClient(t.home) as agent:
        pid = agent.status().pid
    os.kill(pid, signal.SIGKILL)
    # The leader turns zombie before its other threads are gone, and the
    # listening socket closes with the last of them: wait for that.
    _wait_for(lambda: _refused(socket_path(t.home)))
    assert socket_path(t.home).exists()  # left behind
    with pytest.raises(AgentUnavailable):
        AgentClient(t.home)
    assert t.run("status").returncode == 0  # the lock died with it
    t.ok("agent", "start")
    with AgentClient(t.home) as agent:
        assert agent.status().pid != pid


def _refused(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            return True
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_another_user_is_refused_by_peer_credentials(
    pair: tuple[Party, Party], runtime: Path
) -> None:
    """Open the folder and the socket to everyone (as a careless admin
    might): the credential check still refuses the uid nobody."""
    t, _ = pair
    t.ok("agent", "start")
    path = socket_path(t.home)
    os.chmod(runtime, 0o711)  # noqa: S103 - the careless admin of this test
    os.chmod(path.parent, 0o711)  # noqa: S103
    os.chmod(path, 0o666)  # noqa: S103
    first, rest = _connect_as(65534, path)
    assert json.loads(first)["error"] == {"code": -32600, "message": "not the agent's owner"}
    assert rest == b""  # closed
    log = (t.home / "agent.log").read_text()
    assert "refused a connection from uid 65534" in log


def _connect_as(uid: int, path: Path) -> tuple[bytes, bytes]:
    """Connect from a forked child that dropped to ``uid`` (no interpreter
    needed: the child is this process); returns the first line the agent
    sent and whatever followed until it closed."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect(str(path))
            # The agent refuses before reading a byte: nothing needs sending
            # (and what was sent unread would make the close a reset).
            f = s.makefile("rb")
            first = f.readline()
            rest = f.read()
            os.write(write_fd, json.dumps([first.decode(), rest.decode()]).encode())
            code = 0
        except BaseException as e:  # reported to the parent through the pipe
            os.write(write_fd, repr(e).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    first, rest = json.loads(data)
    return first.encode(), rest.encode()


def test_sigkill_mid_send_loses_nothing_and_delivers_once(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    """The agent dies while posting a 16 MiB file (512 envelopes): what it
    stored in the outbox is posted by the next command in-process, and the
    recipient gets the file exactly once, whole."""
    t, w = pair
    data = os.urandom(16 << 20)
    source = tmp_path / "dossier.bin"
    source.write_bytes(data)
    t.ok("agent", "start")
    with AgentClient(t.home) as agent:
        pid = agent.status().pid
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with AgentClient(t.home) as c:
                c.send_file("washington", source)
        except BaseException as e:  # the agent was killed under it
            errors.append(e)

    import threading

    sender = threading.Thread(target=send)
    sender.start()
    # Kill once the relay confirmed some of the file's envelopes, not all.
    _wait_for(lambda: 0 < _outbox(t) < CHUNKS, timeout=120)
    os.kill(pid, signal.SIGKILL)
    sender.join(60)
    assert errors and isinstance(errors[0], AgentUnavailable), errors
    _wait_for(lambda: _zombie(pid) or not Path(f"/proc/{pid}").exists())
    left = _outbox(t)
    assert 0 < left < CHUNKS, left  # killed mid-send: some posted, some kept
    t.ok("receive")  # in-process: flushes the outbox
    assert _outbox(t) == 0
    download = tmp_path / "in"
    outputs = []
    for _ in range(6):  # a receive pass takes at most 200 envelopes a queue today
        proc = w.run("receive", "--json", "--download", download)
        assert proc.returncode == 0, transcript(proc)
        outputs.append(proc.stdout)
        if download.exists() and any(download.iterdir()):
            break
    files = sorted(download.iterdir())
    assert [f.read_bytes() == data for f in files] == [True], files
    assert "rejected" not in "".join(outputs), outputs
    # Nothing arrives twice: one more pass brings no second copy.
    again = w.run("receive", "--json", "--download", download)
    assert again.returncode == 0 and sorted(download.iterdir()) == files, transcript(again)


CHUNKS = 512  # 16 MiB in 32 KiB chunks (protocol/payload.py CHUNK_SIZE)


def _outbox(party: Party) -> int:
    """Rows in ``party``'s outbox (deleted as the relay confirms each one),
    read from its client.db; -1 while it cannot be read."""
    import sqlite3

    conn = sqlite3.connect(f"file:{party.home / 'client.db'}?mode=ro", uri=True, timeout=5)
    try:
        (total,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        return int(total)
    except sqlite3.Error:
        return -1
    finally:
        conn.close()


def test_the_command_line_goes_through_the_agent_and_prints_the_same(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    """send, receive, history and status through a running agent print what
    they print in-process, with the same exit codes; a locked agent is
    unlocked from $SECURECHAN_PASSPHRASE; the process loads no cryptography."""
    t, w = pair
    inproc = {args: t.run(*args) for args in (("history",), ("history", "--json"), ("status",))}
    t.ok("agent", "start")
    sent = t.run("send", "washington", "through the thin command line")
    assert sent.returncode == 0, transcript(sent)
    assert re.fullmatch(r"Message \d+ to washington: sent\n", sent.stderr), sent.stderr
    w.ok("send", "tehran", "an answer for the agent")
    got = t.run("receive", "--json")
    assert got.returncode == 0, transcript(got)
    assert "an answer for the agent" in got.stdout
    unknown = t.run("send", "nobody", "x")
    assert unknown.returncode == 2 and "no contact named" in unknown.stderr, transcript(unknown)
    # The same rows, from the agent, as the in-process history printed
    # before plus the two new messages.
    via = t.run("history")
    before = inproc[("history",)].stdout.splitlines()
    assert via.stdout.splitlines()[: len(before)] == before
    assert len(via.stdout.splitlines()) == len(before) + 2
    status = t.run("status")
    assert status.returncode == 0
    assert [x.split(":")[0] for x in status.stdout.splitlines()] == [
        x.split(":")[0] for x in inproc[("status",)].stdout.splitlines()
    ]
    # Locked: the next command unlocks it from the environment.
    with AgentClient(t.home) as agent:
        agent.lock()
    again = t.run("history", "--json")
    assert again.returncode == 0, transcript(again)
    earlier = [json.loads(x) for x in inproc[("history", "--json")].stdout.splitlines()]
    assert [json.loads(x) for x in again.stdout.splitlines()][: len(earlier)] == earlier
    # The thin process imported neither click, the client nor the cryptography.
    probe = (
        "import sys, runpy; sys.argv = ['securechan', '--home', sys.argv[1], 'history'];\n"
        "from securechan.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('click', 'aiohttp', 'cryptography', 'nacl',"
        " 'securechan.client.channel') if m in sys.modules), file=sys.stderr)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe, str(t.home)],
        capture_output=True,
        text=True,
        env=clean_env(t.passphrase),
        timeout=60,
        check=False,
    )
    assert loaded.stderr.strip().splitlines()[-1] == "[]", loaded.stderr
    version = t.run("--version")
    assert version.stdout == "securechan, version 0.1.0\n"


def test_a_relay_outage_is_reported_to_subscribers_and_retried(
    pristine: Path, tmp_path: Path, runtime: Path
) -> None:
    """The relay dies while the agent runs: subscribers get relayUnavailable
    (with the backoff), and once the relay is back on its port the agent's
    next pass and a send through it work again, without a restart."""
    relay = RelayProcess(tmp_path / "own-relay")
    relay.start()
    try:
        people = make_people(
            pristine,
            tmp_path,
            {"tehran": PASSPHRASES["tehran"], "washington": PASSPHRASES["washington"]},
        )
        t, w = people["tehran"], people["washington"]
        asyncio.run(asyncio.wait_for(introduce(t, relay.url, w, relay.url), 60))
        t.ok("agent", "start", "--poll", "0.5")
        try:

            async def outage() -> dict[str, Any]:
                async with await AsyncAgentClient.connect(t.home) as sub:
                    await sub.call("subscribeReceive")
                    relay.kill()
                    while True:
                        method, params = await asyncio.wait_for(sub.next_notification(), 30)
                        assert method in ("receive", "relayUnavailable"), method
                        if method == "relayUnavailable":
                            return params

            params = asyncio.run(outage())
            assert params["retry_in"] >= 1 and relay.url.removeprefix("http://") in params["error"]
            relay.start()
            w.ok("send", "tehran", "after the outage")

            def arrived() -> bool:
                with AgentClient(t.home) as agent:
                    return agent.status().pending > 0

            _wait_for(arrived, timeout=90)  # the backoff is at most 60 s
            with AgentClient(t.home) as agent:
                texts = [getattr(x, "text", None) for x in agent.receive()]
                assert "after the outage" in texts
                assert agent.send_text("washington", "we are back").pending == 0
        finally:
            t.run("agent", "stop")
    finally:
        relay.close()
