"""``securechan relay serve --db postgresql://...`` (and ``db =`` in the config
file): real relay processes on the session's throwaway PostgreSQL server.

Two relay processes on one database serve the same queues: a queue created
through one is used through the other, a receiver whose WebSocket is held by
process A gets, pushed, an envelope that process B took (LISTEN/NOTIFY), and
the DSN's password appears in no output. (Each process still keeps its own
transparency log in its data folder until the log moves to PostgreSQL; the
receipts here are each process's own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechan.primitives import Ed25519SigningKey
from securechan.transport import RelayClient, RetryPolicy
from tests.adversary.relay import HOST, RelayProcess, clean_env, free_port, securechan_command

PASSWORD = "pw-Sekrit-4711"  # noqa: S105 (a test password the relay must not print)
ONE_TRY = RetryPolicy(attempts=1, timeout=10.0)


def _with_password(url: str) -> str:
    # The test server trusts 127.0.0.1, so any password is accepted: the
    # point is that the relay never prints it.
    user, rest = url.removeprefix("postgresql://").split("@", 1)
    return f"postgresql://{user}:{PASSWORD}@{rest}"


class _FlagRelay:
    """``securechan relay serve --db URL`` (the flag; RelayProcess uses the config file)."""

    def __init__(self, root: Path, db: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.out, self.err = root / "relay.out", root / "relay.err"
        args = [*securechan_command(), "relay", "serve", "--host", HOST, "--port", str(self.port)]
        args += ["--data", str(root / "relay-data"), "--db", db]
        with self.out.open("wb") as fout, self.err.open("wb") as ferr:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr, env=clean_env()
            )
        deadline = time.monotonic() + 30
        while f"listening on {self.url}" not in self.out.read_text("utf-8"):
            assert self.proc.poll() is None, self.err.read_text("utf-8")
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.02)

    def stop(self) -> str:
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0, self.err.read_text("utf-8")
        return self.out.read_text("utf-8") + self.err.read_text("utf-8")


@pytest.fixture
def two_relays(tmp_path: Path, postgres_url: str) -> Iterator[tuple[_FlagRelay, RelayProcess]]:
    db = _with_password(postgres_url)
    a = _FlagRelay(tmp_path / "a", db)
    b = RelayProcess(tmp_path / "b", config=f'db = "{db}"\n')
    # One relay in two processes: the same key (the log in the database is
    # the log of one key and origin), so the same data folder.
    b.data = tmp_path / "a" / "relay-data"
    try:
        b.start()
        yield a, b
    finally:
        b.close()
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(timeout=10)


def test_two_processes_share_queues_and_push_across_processes(
    two_relays: tuple[_FlagRelay, RelayProcess],
) -> None:
    a, b = two_relays
    rkey, skey = Ed25519SigningKey.generate(), Ed25519SigningKey.generate()

    async def main() -> None:
        async with (
            RelayClient(a.url, retry=ONE_TRY) as ca,
            RelayClient(b.url, retry=ONE_TRY) as cb,
        ):
            ids = await ca.create_queue(rkey, sender_key=skey.public)  # created through A
            pushed: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

            async def listen() -> None:
                async for env in ca.subscribe(ids.rid, rkey):  # the socket is held by A
                    await pushed.put((env.seq, env.data))

            listener = asyncio.create_task(listen())
            try:
                # Wait until A holds the socket: A's own sends are pushed then.
                deadline = time.monotonic() + 10
                n = 0
                while pushed.empty():
                    assert time.monotonic() < deadline, "A never pushed its own send"
                    n += 1
                    await ca.send(ids.sid, b"through A %d" % n, os.urandom(16), sender=skey)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(_peek(pushed)), timeout=0.3)
                while not pushed.empty():
                    pushed.get_nowait()
                # A send taken by B reaches the receiver connected to A.
                seq, dup = await cb.send(ids.sid, b"through B", os.urandom(16), sender=skey)
                assert not dup and seq == n + 1
                got = await asyncio.wait_for(pushed.get(), timeout=10)
                assert got == (seq, b"through B")
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            # Both processes see one queue: fetch through B, ack through A.
            held = await cb.fetch(ids.rid, rkey, limit=100)
            assert [e.seq for e in held] == list(range(1, n + 2))
            assert await ca.ack(ids.rid, rkey, up_to=n + 1) == n + 1
            assert await cb.fetch(ids.rid, rkey) == []

    asyncio.run(main())
    out = a.stop()
    b.stop()
    b.assert_no_traceback()
    assert "Traceback" not in out
    for text in (out, b.stderr(), *(p.read_text() for p in b.root.glob("relay-*.out"))):
        assert PASSWORD not in text
    assert "storage and log: PostgreSQL postgresql://securechan@127.0.0.1:" in out


async def _peek(q: asyncio.Queue[tuple[int, bytes]]) -> None:
    while q.empty():
        await asyncio.sleep(0.02)


def _serve_fails(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [*securechan_command(), "relay", "serve", "--port", "0", "--data", str(tmp_path)]
    return subprocess.run(
        [*args, *extra], capture_output=True, text=True, env=clean_env(), timeout=60, check=False
    )


def test_db_that_is_not_a_postgres_url_is_refused(tmp_path: Path) -> None:
    done = _serve_fails(tmp_path / "d", "--db", "sqlite:///relay.db")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "postgresql://" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://relay:{PASSWORD}@127.0.0.1:1/relaydb?connect_timeout=3"
    done = _serve_fails(tmp_path / "d", "--db", url)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout
    assert "cannot connect to postgresql://relay@127.0.0.1:1/relaydb" in done.stderr
