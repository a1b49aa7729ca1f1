"""A throwaway PostgreSQL server for tests and benchmarks.

`running_postgres()` creates a cluster with Debian's `initdb` in a temporary
folder, starts it with `pg_ctl` on 127.0.0.1 and a free port (its Unix socket
stays in the same folder), yields a `PostgresServer` whose `url` is a libpq
connection string, and stops and deletes the cluster on exit.

PostgreSQL refuses to run as root; when the tests run as root (CI does), the
server runs as the `postgres` user that Debian's package creates, and the
folder is handed to it. Nothing here is used by the relay itself.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir", "running_postgres"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (or no user to run them as)."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh empty database on this server; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name chosen by the test
        return self.url(name)


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's layout."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_postgres(*, settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("initdb/pg_ctl not found (Debian: apt-get install postgresql)")
    run_as: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable("running as root and there is no 'postgres' user") from exc
    folder = Path(tempfile.mkdtemp(prefix="securechan-pg-"))
    data = folder / "data"
    user = "securechan"
    port = _free_port()
    if run_as is not None:
        os.chown(folder, run_as.pw_uid, run_as.pw_gid)

    def call(*args: str) -> None:
        subprocess.run(  # noqa: S603 - our own argv: Debian's initdb/pg_ctl
            list(args),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
            cwd=folder,
        )

    options = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(folder),
        "fsync": "on",
        "max_connections": "200",
        **(settings or {}),
    }
    started = False
    try:
        call(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        conf = "".join(f"{k} = '{v}'\n" for k, v in options.items())
        with open(data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(conf)
        call(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "start")
        started = True
        yield PostgresServer(host="127.0.0.1", port=port, user=user, folder=folder)
    finally:
        if started:
            with suppress(subprocess.CalledProcessError):
                call(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
