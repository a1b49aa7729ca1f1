"""The HAProxy configuration of docs/RELAY.md ("N processes behind a reverse
proxy"), run from Debian's ``haproxy`` in front of two real relay processes.

The configuration is taken from the document itself (its ``haproxy`` code
block), with only the TLS bind line and the server addresses rewritten for
127.0.0.1. Each relay here has its own data folder and so its own relay key,
which is how the test tells which process answered (in a real deployment all
share one key and one PostgreSQL database). Checked: requests reach both
processes; with one SIGKILLed, every request is still answered (HAProxy
redispatches what it could not connect) and the health check on /healthz
takes the dead one out.

Skipped when ``haproxy`` is not installed (``apt-get install haproxy``),
except under ``.ci/run`` (``SECURECHAN_REQUIRE_HAPROXY``), which installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversary.relay import RelayProcess, free_port

pytestmark = pytest.mark.timeout(120)

DOC = Path(__file__).resolve().parent.parent / "docs" / "RELAY.md"


def documented_config() -> str:
    text = DOC.read_text("utf-8")
    section = text[text.index("### N processes behind a reverse proxy") :]
    match = re.search(r"```haproxy\n(.*?)```", section, re.S)
    assert match, "RELAY.md shows an HAProxy configuration"
    return match.group(1)


def local_config(ports: list[int], listen: int) -> str:
    out = []
    for line in documented_config().splitlines():
        if line.strip().startswith("bind "):
            line = f"    bind 127.0.0.1:{listen}"
        elif line.strip().startswith("server "):
            if not ports:
                continue
            name = line.split()[1]
            line = f"    server {name} 127.0.0.1:{ports.pop(0)}"
        out.append(line)
    assert not ports
    return "\n".join(out) + "\n"


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    rs = [RelayProcess(tmp_path / f"r{i}") for i in range(2)]
    try:
        for r in rs:
            r.start()
        yield rs
    finally:
        for r in rs:
            r.close()


def relay_key(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/relay", timeout=10) as reply:  # noqa: S310 - 127.0.0.1
        text = reply.read().decode()
    match = re.search(r'"relay_key":\s*"([^"]+)"', text)
    assert match
    return match.group(1)


def test_the_documented_haproxy_config_spreads_and_fails_over(
    relays: list[RelayProcess], tmp_path: Path
) -> None:
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if haproxy is None:
        if os.environ.get("SECURECHAN_REQUIRE_HAPROXY"):
            pytest.fail("SECURECHAN_REQUIRE_HAPROXY is set but haproxy is not installed")
        pytest.skip("haproxy not installed (Debian: apt-get install haproxy)")
    listen = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(local_config([r.port for r in relays], listen), encoding="utf-8")
    check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with (tmp_path / "haproxy.log").open("wb") as out:
        proxy = subprocess.Popen(  # Debian's haproxy, our own config
            [haproxy, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{listen}"
        direct = {relay_key(r.url) for r in relays}
        deadline = time.monotonic() + 20
        seen: set[str] = set()
        while seen != direct and time.monotonic() < deadline:
            try:
                seen.add(relay_key(url))
            except OSError:
                time.sleep(0.1)
        assert seen == direct, "HAProxy spreads requests over both processes"
        survivor = relay_key(relays[1].url)
        relays[0].kill()
        answered = [relay_key(url) for _ in range(20)]  # no request is lost
        assert set(answered) == {survivor}
        time.sleep(5)  # fall 2 x inter 2s: the health check took it out
        assert {relay_key(url) for _ in range(10)} == {survivor}
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
