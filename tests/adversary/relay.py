"""A real ``securechan relay serve`` subprocess for the adversarial suite.

The relay keeps one port for its whole life so that a SIGKILL and a restart
on the same data folder come back at the same URL (the proxies in front of it
and the clients' pinned relay URLs keep working). Optional: a TOML config
(small limits for denial-of-service tests) and a file-size limit
(``RLIMIT_FSIZE``) that plays a full disk in any CI, root or not.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["HOST", "RelayProcess", "clean_env", "free_port", "securechan_command"]

HOST = "127.0.0.1"


def securechan_command() -> list[str]:
    """The console script next to the running interpreter."""
    path = Path(sys.executable).parent / "securechan"
    assert path.exists(), f"no securechan console script next to {sys.executable}"
    return [str(path)]


def free_port() -> int:
    """A port that was free a moment ago (passed explicitly so restarts reuse it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def clean_env(passphrase: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    env["PYTHONUNBUFFERED"] = "1"
    if passphrase is not None:
        env["SECURECHAN_PASSPHRASE"] = passphrase
    return env


class RelayProcess:
    """``securechan relay serve`` on one data folder and one fixed port."""

    def __init__(self, root: Path, *, config: str | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data = root / "relay-data"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.config: Path | None = None
        if config is not None:
            self.config = root / "relay.toml"
            self.config.write_text(config, encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.logs: list[Path] = []

    def start(self, *, timeout: float = 30.0, max_file_bytes: int | None = None) -> None:
        """Start and wait for "listening on". ``max_file_bytes`` caps every
        file the relay writes (RLIMIT_FSIZE, SIGXFSZ ignored so that a write
        past it fails with EFBIG as on a full disk)."""
        assert self.proc is None, "the relay is already running"
        n = self.starts
        self.starts += 1
        out = self.root / f"relay-{n}.out"
        err = self.root / f"relay-{n}.err"
        self.logs.append(err)
        args = [*securechan_command(), "relay", "serve", "--host", HOST, "--port", str(self.port)]
        args += ["--data", str(self.data)]
        if self.config is not None:
            args += ["--config", str(self.config)]

        def limit() -> None:  # runs in the child, before exec
            if max_file_bytes is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

        with out.open("wb") as fout, err.open("wb") as ferr:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=fout,
                stderr=ferr,
                env=clean_env(),
                preexec_fn=limit if max_file_bytes is not None else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = out.read_text("utf-8", errors="replace")
            if f"listening on {self.url}" in text:
                return
            if self.proc.poll() is not None:
                self.proc = None
                raise AssertionError(
                    f"the relay exited during start-up:\n{text}\n{err.read_text('utf-8')}"
                )
            time.sleep(0.02)
        self.close()
        raise AssertionError(f"the relay did not say 'listening on' within {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory of the running relay, from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def data_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data.rglob("*") if p.is_file())

    def kill(self) -> None:
        """SIGKILL and reap."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=10)
        self.proc = None
        assert rc == -signal.SIGKILL, rc

    def stop(self) -> None:
        """A graceful SIGTERM stop, which must exit 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.proc = None
        assert rc == 0, f"the relay exited {rc} on SIGTERM:\n{self.stderr()}"

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stderr(self) -> str:
        return "\n".join(p.read_text("utf-8", errors="replace") for p in self.logs if p.exists())

    def assert_no_traceback(self) -> None:
        text = self.stderr()
        assert "Traceback" not in text, text


@contextlib.contextmanager
def running_relay(root: Path, *, config: str | None = None) -> Iterator[RelayProcess]:
    """A relay process for a test module: started, yielded, then stopped and
    checked for tracebacks in its log (always closed, even when a test
    failed)."""
    r = RelayProcess(root, config=config)
    r.start()
    try:
        yield r
        r.stop()
        r.assert_no_traceback()
    finally:
        r.close()
