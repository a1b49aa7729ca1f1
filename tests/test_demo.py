"""``securechan demo`` (issue 7, "Must show"): the whole back-channel story
as a real process, with its relays as real child processes; every step and
every detection must report success, in under a minute."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securechan.audit.statement import Statement, verify_statement
from tests.cli_schema import validate
from tests.ndjson import one

pytestmark = pytest.mark.timeout(120)

# What the mediator must be caught doing, by step id.
ATTACKS = {
    "attack-read",
    "attack-tamper",
    "attack-replay",
    "attack-drop",
    "attack-split-view",
    "attack-statement-edit",
    "attack-terminal",
    "attack-group-removed",
    "attack-group-equivocation",
}


def _securechan() -> list[str]:
    found = shutil.which("securechan", path=str(Path(sys.executable).parent))
    assert found is not None
    return [found]


def test_demo_json_every_step_and_detection(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    keep = tmp_path / "demo"
    t0 = time.monotonic()
    proc = subprocess.run(
        [*_securechan(), "demo", "--json", "--keep", str(keep)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=110,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"
    data = one(proc.stdout)  # one NDJSON line ...
    validate(data, "DemoReport")  # ... valid against docs/cli-json.schema.json
    assert data["ok"] is True
    steps = {s["id"]: s for s in data["steps"]}
    assert len(steps) == len(data["steps"]), "step ids are unique"
    assert all(s["ok"] is True for s in data["steps"]), data["steps"]
    assert {i for i, s in steps.items() if s["attack"]} >= ATTACKS
    for name in ("tehran", "washington"):
        assert f"identity-{name}" in steps
        assert f"audit-log-{name}" in steps
    for want in (
        "relays",
        "verify-contacts",
        "message",
        "redundant",
        "file",
        "receipt",
        "witness",
        "statement",
        "group",
    ):
        assert want in steps
    # muscat refused service at first contact: the message came through geneva.
    assert steps["message"]["details"]["text"].startswith("Tehran: we accept a ceasefire")
    assert steps["redundant"]["details"]["shown again"] == "none"
    # The detections say what caught them.
    assert steps["attack-tamper"]["details"]["refused as"] != "NOT REFUSED"
    assert steps["attack-replay"]["details"]["refused as"] == "replay"
    assert "have not arrived" in steps["attack-drop"]["details"]["reported"]
    split = steps["attack-split-view"]["details"]
    assert split["washington"] == split["tehran"] == "SPLIT VIEW reported"
    assert steps["attack-read"]["details"]["secrets found"] == "none"
    # The mediator's hostile error text, as a person would see it: visible, inert.
    shown = steps["attack-terminal"]["details"]["shown as"]
    assert "\\x1b]0;muscat owns this window\\x07" in shown
    assert not any(c < " " or "\x7f" <= c <= "\x9f" or c == "\u202e" for c in shown)
    assert steps["witness"]["details"]["cosigned by"] == "geneva.example/witness"
    # The statement's checkpoint is the witnessed one, with geneva's cosignature.
    assert "geneva.example/witness at" in steps["statement"]["details"]["cosigned by"]
    # The statement it wrote verifies here too, independently of the demo.
    statement = Statement.from_text((keep / "statement.txt").read_text("ascii"))
    verified = verify_statement(statement)
    assert verified.log is not None
    assert [c.cosigner.name for c in verified.log.cosignatures] == ["geneva.example/witness"]
    assert (verified.sender.name, verified.recipient.name) == ("tehran", "washington")
    # Both relays were stopped: their data folders are closed files now.
    assert (keep / "muscat" / "data" / "relay.db").exists()


def test_demo_text_output_is_a_readable_transcript(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    proc = subprocess.run(
        [*_securechan(), "demo"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=110,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(1 for line in lines if line.startswith("[CAUGHT]")) >= len(ATTACKS)
    assert not any(line.startswith(("[MISSED]", "[FAILED]")) for line in lines)
    assert "\x1b[" not in proc.stdout, "no colour codes when stdout is not a terminal"
    assert lines[-1].startswith("every step held")


def test_a_step_gives_its_own_json() -> None:
    """`demo --json` prints each step's to_json(): the documented keys, the
    details copied (the caller cannot change the step through them)."""
    from securechan.demo import Step

    step = Step(id="attack-read", title="muscat reads", ok=True, attack=True, details={"db": "x"})
    data = step.to_json()
    assert data == {
        "id": "attack-read",
        "title": "muscat reads",
        "ok": True,
        "attack": True,
        "details": {"db": "x"},
    }
    assert json.loads(json.dumps(data)) == data
    assert data["details"] is not step.details
