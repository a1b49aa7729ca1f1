"""A GnuPG home with a throwaway key, timed as a whole process: the
reference ``bench_cli.py`` and ``bench_gpg.py`` compare securechan with."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from process_timing import Timing, clean_env, timed

NO_CACHE = "default-cache-ttl 0\nmax-cache-ttl 0\n"


class Gpg:
    """One GnuPG home with a throwaway key."""

    def __init__(self, exe: str, home: Path, name: str, passfile: Path) -> None:
        self.exe = exe
        self.home = home
        self.name = name
        self.passfile = passfile
        home.mkdir(mode=0o700)
        (home / "gpg-agent.conf").write_text(NO_CACHE)
        self.env = {**clean_env(), "GNUPGHOME": str(home)}

    def argv(self, *args: object) -> list[str]:
        return [
            self.exe,
            "--batch",
            "--quiet",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase-file",
            str(self.passfile),
            *map(str, args),
        ]

    def run(self, *args: object) -> Timing:
        return timed(self.argv(*args), self.env, self.home.parent)

    def generate(self) -> str:
        self.run("--quick-gen-key", f"{self.name} <{self.name}@example.invalid>", "future-default")
        listing = self.run("--with-colons", "--fingerprint", self.name).out.stdout
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))

    def stop_agent(self) -> None:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            subprocess.run([gpgconf, "--kill", "gpg-agent"], env=self.env, check=False)


def gpg_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    lines = out.stdout.splitlines()
    return ", ".join(lines[:2]) if lines else "unknown"
