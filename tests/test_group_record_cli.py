"""Group transcripts and statements end to end (issue 17, Deliver 3): real
relay process on 127.0.0.1, real homes and SQLite files, the group client
through the library, then ``securechan group export``, ``group statement``
and ``verify-transcript`` as real CLI processes, and a third party who holds
only the file and the relay's log key. The exporter and the file are played
as the attacker would: one byte edited, another relay key, an existing
output file, a range beyond the transcript."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.adversary.relay import clean_env, securechan_command
from tests.cli_schema import validate
from tests.group_world import PASSPHRASE, copy_members, make_pristine, mesh, pump, run
from tests.test_relay_crash import running_relay


def _cli(home: Path | None, *args: object) -> subprocess.CompletedProcess[str]:
    pre = ["--home", str(home)] if home is not None else []
    proc = subprocess.run(
        [*securechan_command(), *pre, *map(str, args)],
        capture_output=True,
        text=True,
        env=clean_env(PASSPHRASE),
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def talks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """alpha creates "talks" with bravo and charlie; all three speak; alpha
    adds delta (who joins from its welcome); delta and bravo speak."""
    root = tmp_path_factory.mktemp("group-record")
    m = copy_members(make_pristine(root / "pristine"), root)
    out: dict[str, Any] = {"root": root, "homes": {n: p.home for n, p in m.items()}}

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c, d = (chs[n] for n in ("alpha", "bravo", "charlie", "delta"))
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            await a.send_group("talks", text="opening statement")
            await pump(chs)
            await b.send_group("talks", text="we propose a freeze")
            await pump(chs)
            await c.send_group("talks", text="the mediator notes it")
            await pump(chs)
            await a.group_add("talks", ["delta"])
            await pump(chs, rounds=3)
            await d.send_group("talks", text="delta joins the talks")
            await pump(chs)
            out["ids"] = {e.text: e.id for e in b.group_history("talks") if e.text}
            out["log_key"] = (await a.logs.key(url)).to_text()
        finally:
            for ch in chs.values():
                await ch.close()

    (root / "relay").mkdir()
    with running_relay(root / "relay") as relay:
        run(go(relay.url))
        out["relay"] = relay
        yield out


def test_a_whole_transcript_exported_and_verified_by_a_third_party(
    talks: dict[str, Any], tmp_path: Path
) -> None:
    f = tmp_path / "talks.sctr"
    proc = _cli(talks["homes"]["alpha"], "group", "export", "talks", "--output", f, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    validate(info, "TranscriptExported")
    assert info["records"] == 6 and info["disclosed"] == 4
    # The third party: no home, only the file and the relay's log key.
    proc = _cli(None, "verify-transcript", f, "--relay-key", talks["log_key"])
    assert proc.returncode == 0, proc.stderr
    assert "Group transcript: VALID" in proc.stdout
    for text in ("opening statement", "we propose a freeze", "delta joins the talks"):
        assert text in proc.stdout
    proc = _cli(None, "verify-transcript", f, "--relay-key", talks["log_key"], "--json")
    result = json.loads(proc.stdout)
    validate(result, "TranscriptVerified")
    assert [e["epoch"] for e in result["epochs"]] == [0, 1]
    assert len(result["epochs"][1]["members"]) == 4 and result["statement"] is False
    # The head every member holds.
    assert result["final_head"] == info["final_head"]


def test_a_range_discloses_only_its_contents(talks: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "range.sctr"
    home = talks["homes"]["bravo"]
    proc = _cli(home, "group", "export", "talks", "-o", f, "--from", "3", "--to", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["disclosed"] == 2
    out = _cli(None, "verify-transcript", f, "--relay-key", talks["log_key"]).stdout
    assert "opening statement" not in out and "we propose a freeze" in out
    assert "the mediator notes it" in out and "content not disclosed" in out
    assert "delta joins" not in out
    # Beyond the transcript, or an existing file: usage errors, nothing written.
    proc = _cli(home, "group", "export", "talks", "-o", tmp_path / "x", "--to", "99")
    assert proc.returncode == 2 and not (tmp_path / "x").exists()
    proc = _cli(home, "group", "export", "talks", "-o", f)
    assert proc.returncode == 2 and "exists" in proc.stderr


def test_a_statement_of_one_group_message(talks: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "freeze.sctr"
    mid = talks["ids"]["we propose a freeze"]
    proc = _cli(talks["homes"]["charlie"], "group", "statement", mid, "-o", f, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    validate(info, "TranscriptExported")
    assert info["message_id"] == mid and info["disclosed"] == 1
    proc = _cli(None, "verify-transcript", f, "--relay-key", talks["log_key"])
    assert proc.returncode == 0, proc.stderr
    assert "Statement of one group message: VALID" in proc.stdout
    assert f"PROVES: message {mid}" in proc.stdout and "epoch 0 (3 members)" in proc.stdout
    assert "NOT PROVEN: that any member received or read it" in proc.stdout
    assert "opening statement" not in proc.stdout
    result = json.loads(
        _cli(None, "verify-transcript", f, "--relay-key", talks["log_key"], "--json").stdout
    )
    assert result["statement"] and result["message"]["content"] == "we propose a freeze"
    # The sender's own export of its message says the same.
    own = tmp_path / "own.sctr"
    proc = _cli(talks["homes"]["bravo"], "group", "statement", mid, "-o", own)
    assert proc.returncode == 0, proc.stderr
    again = _cli(None, "verify-transcript", own, "--relay-key", talks["log_key"], "--json")
    assert json.loads(again.stdout)["message"] == result["message"]
    # Unknown id: not found (2).
    proc = _cli(talks["homes"]["charlie"], "group", "statement", "00" * 8, "-o", tmp_path / "n")
    assert proc.returncode == 2


def test_a_joiner_exports_from_its_join(talks: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "delta.sctr"
    proc = _cli(talks["homes"]["delta"], "group", "export", "talks", "-o", f)
    assert proc.returncode == 0, proc.stderr
    proc = _cli(None, "verify-transcript", f, "--relay-key", talks["log_key"])
    assert proc.returncode == 0, proc.stderr
    assert "from the exporter's join" in proc.stdout and "delta joins the talks" in proc.stdout
    assert "opening statement" not in proc.stdout  # before its time


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.9, 0.999])
def test_a_statement_edited_in_one_byte_is_refused(
    talks: dict[str, Any], tmp_path: Path, where: float
) -> None:
    f = tmp_path / "s.sctr"
    mid = talks["ids"]["the mediator notes it"]
    assert _cli(talks["homes"]["bravo"], "group", "statement", mid, "-o", f).returncode == 0
    data = bytearray(f.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    f.write_bytes(bytes(data))
    proc = _cli(None, "verify-transcript", f, "--relay-key", talks["log_key"])
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "VALID" not in proc.stdout and proc.stderr.count("\n") == 1


def test_another_relay_key_is_refused(talks: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "t.sctr"
    assert _cli(talks["homes"]["alpha"], "group", "export", "talks", "-o", f).returncode == 0
    name, _, rest = talks["log_key"].partition("+")
    from securechan.audit.note import SIG_ED25519, VerifierKey
    from securechan.primitives import Ed25519SigningKey

    other = VerifierKey(
        name=name, sig_type=SIG_ED25519, public_key=Ed25519SigningKey(bytes(32)).public
    )  # PUBLIC TEST DATA
    proc = _cli(None, "verify-transcript", f, "--relay-key", other.to_text())
    assert proc.returncode == 4 and "not signed by the relay key you pinned" in proc.stderr
    assert _cli(None, "verify-transcript", f, "--relay-key", "junk").returncode == 2
    assert rest
