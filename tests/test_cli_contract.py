"""The CLI's contract with scripts (issue 13): exit codes, relay URLs, NDJSON.

Against real ``securechan`` processes and a real relay process:

- every command that prints JSON is run with ``--json``; every line it
  prints is one compact object (NDJSON) valid against its type's schema in
  docs/cli-json.schema.json, and that schema lists exactly the fields of
  docs/CLI.md's table;
- a relay that does not answer (a port with nothing listening) is exit 3
  with one line naming the relay, for ``receive``, ``status``,
  ``policy show`` and ``register``;
- a malformed relay URL is exit 2 at once, before any passphrase or
  network, for every option that takes one, and in the library;
- a wrong ``--relay-fingerprint`` names the fingerprint seen and the one given;
- docs/CLI.md's exit-code table is what ``_exit_code`` does.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest

from securechan import errors
from securechan.errors import BadRelayUrl, SecurechanError
from securechan.transport import RelayClient, check_relay_url
from tests.adversary.relay import RelayProcess, clean_env, free_port, securechan_command
from tests.cli_schema import schema, validate
from tests.ndjson import ndjson
from tests.test_results_json import _documented

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = ROOT / "docs" / "CLI.md"
PASS = "correct horse battery staple"  # noqa: S105 - PUBLIC TEST DATA
KDF = ("--kdf", "interactive")


@dataclass
class Home:
    path: Path
    seen: dict[str, int] = field(default_factory=dict)  # command -> JSON lines checked

    def run(self, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*securechan_command(), "--home", str(self.path), *map(str, args)],
            capture_output=True,
            text=True,
            env=clean_env(PASS),
            cwd=cwd,
            timeout=120,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def ok(self, *args: object) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def json(self, command: str, *args: object, types: tuple[str, ...]) -> list[dict[str, Any]]:
        """``securechan COMMAND ARGS --json``: every line NDJSON and valid."""
        proc = self.run(*command.split(), *args, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        items = ndjson(proc.stdout)
        for item in items:
            validate(item, *types)
        self.seen[command] = self.seen.get(command, 0) + len(items)
        return items


# --json commands whose lines their own end-to-end tests validate against
# this schema (they need a queued message, a second party or an agent):
ELSEWHERE = {
    "outbox": "tests/test_cli_send_receive.py",
    "outbox cancel": "tests/test_cli_send_receive.py",
    "pair": "tests/test_pairing_e2e.py",
    "agent status": "tests/test_agent.py",
    "group export": "tests/test_group_record_cli.py",
    "group statement": "tests/test_group_record_cli.py",
    "verify-transcript": "tests/test_group_record_cli.py",
    "group create": "tests/test_cli_groups.py",
    "group add": "tests/test_cli_groups.py",
    "group remove": "tests/test_cli_groups.py",
    "group admin": "tests/test_group_admins.py",
    "group rekey": "tests/test_group_admins.py",
    "group leave": "tests/test_cli_groups.py",
    "group list": "tests/test_cli_groups.py",
    "group show": "tests/test_cli_groups.py",
}


def test_the_commands_validated_elsewhere_are() -> None:
    root = Path(__file__).resolve().parent.parent
    for command, test_file in ELSEWHERE.items():
        text = (root / test_file).read_text(encoding="utf-8")
        assert "cli_schema" in text and "validate(" in text, (command, test_file)


def _json_commands() -> set[str]:
    """Every command path that has a --json option (walks the click tree)."""
    from securechan.cli import cli

    out: set[str] = set()

    def walk(cmd: click.Command, path: str) -> None:
        has_json = any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option))
        if isinstance(cmd, click.Group):
            if has_json:  # a group that prints too (outbox)
                out.add(path)
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(sub, f"{path} {name}".strip())
        elif has_json:
            out.add(path)

    walk(cli, "")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("contract")
    wit = Home(root / "witness")
    wkey = wit.json("witness init", "--name", "witness.example/w", *KDF, types=("WitnessKeyInfo",))
    relay = RelayProcess(root / "relay")
    relay.data.mkdir(mode=0o700, parents=True)
    (relay.data / "witnesses.txt").write_text(wkey[0]["verifier_key"] + "\n", encoding="utf-8")
    relay.start()
    try:
        out = (root / "relay" / "relay-0.out").read_text(encoding="utf-8")
        log_key = re.search(r"^log verifier key: (\S+)$", out, re.M)
        assert log_key, out
        yield {"root": root, "relay": relay, "witness": wit, "log_key": log_key[1]}
    finally:
        relay.close()


def test_every_json_command_prints_valid_ndjson(world: dict[str, Any]) -> None:
    root: Path = world["root"]
    relay: RelayProcess = world["relay"]
    t, w, nobody = Home(root / "t"), Home(root / "w"), Home(root / "nobody")
    for home, name in ((t, "tehran"), (w, "washington")):
        home.json("init", "--name", name, *KDF, types=("IdentityCreated",))
        home.json("id show", types=("IdentityInfo",))
        home.json("register", "--relay", relay.url, types=("Registered",))
        home.ok("id", "export", "-o", root / f"{name}.pub")
    t.json("contact add", root / "washington.pub", types=("ContactInfo",))
    w.json("contact add", root / "tehran.pub", types=("ContactInfo",))
    (shown,) = t.json("contact show", "washington", types=("ContactInfo",))
    t.json("contact verify", "washington", shown["safety_number"], types=("ContactInfo",))
    assert len(t.json("contact list", types=("ContactInfo",))) == 1

    t.json("send", "washington", "hello, line one\nline two", types=("SendResult",))
    doc = root / "communique.txt"
    doc.write_text("the draft communique\n" * 100, encoding="utf-8")
    t.json("send", "washington", "--file", doc, types=("SendResult",))
    download = root / "downloads"
    got = w.json("receive", "--download", download, types=("Received", "Rejected"))
    assert [g.get("type") for g in got] == ["hello", "text", "file"], got
    t.json("send", "washington", "third", types=("SendResult",))
    followed = w.json(
        "receive", "--follow", "--timeout", "3", "--download", download, types=("Received",)
    )
    assert [f["text"] for f in followed] == ["third"]
    rows = w.json("history", types=("HistoryEntry",))
    assert len(rows) == 3
    assert len(t.json("history", "washington", types=("HistoryEntry",))) == 3
    t.json("status", types=("Status",))

    t.json("log show", types=("LogEntry",))
    t.json("log verify", types=("LogVerified",))
    t.json("sign", doc, types=("DocumentSigned",))
    w.json("verify", doc, "--from", "tehran", types=("DocumentVerified",))
    statement = root / "statement.txt"
    t.json("statement export", rows[0]["id"], "-o", statement, types=("StatementExported",))
    nobody.json("statement verify", statement, types=("StatementVerified",))

    wit: Home = world["witness"]
    wit.json("witness key", types=("WitnessKeyInfo",))
    wit.json(
        "witness cosign",
        "--relay",
        relay.url,
        "--log-key",
        world["log_key"],
        types=("CosignRound",),
    )
    wkey = wit.ok("witness", "key").strip()
    t.json("policy set", "--relay", relay.url, "--witness", wkey, types=("PolicyInfo",))
    t.json("policy show", types=("PolicyInfo",))

    seen = set(t.seen) | set(w.seen) | set(nobody.seen) | set(wit.seen)
    # demo --json: tests/test_demo.py validates its line against the schema;
    # the commands of ELSEWHERE, their own end-to-end tests.
    assert seen | {"demo"} | set(ELSEWHERE) == _json_commands()
    assert all(n >= 1 for h in (t, w, nobody, wit) for n in h.seen.values())


def test_the_schema_has_exactly_the_documented_fields() -> None:
    """docs/CLI.md's table and docs/cli-json.schema.json name the same types,
    fields and optional fields, with the same JSON types."""
    simple = {
        "string": {"type": "string"},
        "boolean": {"type": "boolean"},
        "integer": {"type": "integer"},
        "number": {"type": "number"},
        "time": {"$ref": "#/$defs/time"},
        "code": {"$ref": "#/$defs/code"},
        "string or null": {"type": ["string", "null"]},
        "integer or null": {"type": ["integer", "null"]},
        "boolean or null": {"type": ["boolean", "null"]},
        "time or null": {"anyOf": [{"$ref": "#/$defs/time"}, {"type": "null"}]},
        "string list": {"type": "array", "items": {"type": "string"}},
        "integer list": {"type": "array", "items": {"type": "integer"}},
    }
    defs = schema()["$defs"]
    documented = _documented()
    assert set(documented) == set(defs) - {
        "time",
        "code",
        "cosigner",
        "groupMember",
        "auditGroupMessage",
        "auditGroupChange",
    }
    for name, fields in documented.items():
        d = defs[name]
        assert d["additionalProperties"] is False, name
        assert set(d["properties"]) == set(fields), name
        assert set(d["required"]) == {f for f, (_, opt) in fields.items() if not opt}, name
        for f, (kind, _) in fields.items():
            got = d["properties"][f]
            if kind in simple:
                assert got == simple[kind], (name, f)
            else:  # object, object or null, object list: nested, typed in the schema
                first = kind.split()[0]
                assert "object" in str(got) or "$ref" in str(got), (name, f, got)
                assert first == "object", (name, f)
    # The reason codes a line can carry are exactly errors.Reason's (a new
    # code needs its line in the schema too).
    assert sorted(defs["code"]["enum"]) == sorted(r.value for r in errors.Reason)
    time_pattern = defs["time"]["pattern"]
    assert re.fullmatch(time_pattern, "2026-12-05T03:00:00Z")
    assert not re.fullmatch(time_pattern, "1796000000")


# --- relays that do not answer: exit 3, one line naming the relay -----------------


@pytest.fixture(scope="module")
def orphan(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home registered at a relay that has since stopped (nothing listens
    on its port any more)."""
    root = tmp_path_factory.mktemp("orphan")
    home = Home(root / "home")
    home.ok("init", "--name", "tehran", *KDF)
    relay = RelayProcess(root / "relay")
    relay.start()
    try:
        home.ok("register", "--relay", relay.url)
        home.ok("policy", "set", "--relay", relay.url, "--witness", _some_witness_key(root))
    finally:
        relay.stop()
    home.seen["url"] = 0
    home.path.joinpath("relay-url").write_text(relay.url, encoding="utf-8")
    return home


def _some_witness_key(root: Path) -> str:
    wit = Home(root / "witness")
    wit.ok("witness", "init", "--name", "witness.example/x", *KDF)
    return wit.ok("witness", "key").strip()


def _one_line_naming(proc: subprocess.CompletedProcess[str], url: str) -> None:
    lines = proc.stderr.splitlines()
    assert lines, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"securechan: relay {url} is unreachable: "), proc.stderr
    assert "refused an envelope" not in proc.stderr
    assert "ClientConnectorError" not in proc.stderr and "ssl:default" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [("receive",), ("receive", "--follow", "--timeout", "2"), ("status",), ("policy", "show")],
    ids=lambda a: " ".join(a),
)
def test_an_unreachable_relay_is_exit_3_with_one_line(orphan: Home, args: tuple[str, ...]) -> None:
    url = (orphan.path / "relay-url").read_text(encoding="utf-8")
    proc = orphan.run(*args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    _one_line_naming(proc, url)


def test_an_unreachable_relay_in_json(orphan: Home) -> None:
    """--json: the data still comes (NDJSON, valid), the line and exit 3 too."""
    url = (orphan.path / "relay-url").read_text(encoding="utf-8")
    proc = orphan.run("receive", "--json")
    assert proc.returncode == 3, proc.stderr
    (item,) = ndjson(proc.stdout)
    validate(item, "Rejected")
    assert item["relay"] == url
    proc = orphan.run("status", "--json")
    assert proc.returncode == 3, proc.stderr
    (status,) = ndjson(proc.stdout)
    validate(status, "Status")
    assert status["unreachable"] == [url]
    _one_line_naming(proc, url)


def test_register_at_a_port_with_nothing_listening(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.ok("init", "--name", "tehran", *KDF)
    url = f"http://127.0.0.1:{free_port()}"
    proc = home.run("register", "--relay", url)
    assert proc.returncode == 3, proc.stderr
    _one_line_naming(proc, url)


# --- malformed relay URLs: exit 2 at once -------------------------------------------

BAD_URLS = {
    "ftp://relay.example": "http:// or https://",
    "relay.example:8080": "http:// or https://",
    "http://127.0.0.1:99999": "port",
    "http://127.0.0.1:0": "port",
    "http://relay.example:": "port",
    "http://user:secret@relay.example": "user name or password",
    "http://relay.example/#top": "fragment",
    "http://relay.example/?q=1": "query",
    "http://": "no host",
    "http://relay example": "spaces",
    "http://relay_example.org": "host",
}


@pytest.mark.parametrize("url", sorted(BAD_URLS))
def test_a_malformed_relay_url_is_refused_by_the_library(url: str) -> None:
    with pytest.raises(BadRelayUrl, match=re.escape(BAD_URLS[url])):
        check_relay_url(url)
    with pytest.raises(BadRelayUrl):
        RelayClient(url)
    assert issubclass(BadRelayUrl, errors.UsageError)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "https://relay.example",
        "https://relay.example/sc/",
        "http://[::1]:80",
    ],
)
def test_a_good_relay_url_passes(url: str) -> None:
    assert check_relay_url(url) == url


@pytest.mark.parametrize(
    "command",
    [
        ("register", "--relay", "{url}"),
        ("witness", "cosign", "--relay", "{url}", "--log-key", "x+0+AA"),
        ("policy", "set", "--relay", "{url}"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
@pytest.mark.parametrize("url", ["ftp://relay.example", "http://127.0.0.1:99999"])
def test_a_malformed_relay_url_is_a_usage_error_at_once(
    tmp_path: Path, command: tuple[str, ...], url: str
) -> None:
    home = Home(tmp_path / "home")  # no identity, no passphrase needed: refused first
    t0 = time.monotonic()
    proc = home.run(*(a.replace("{url}", url) for a in command))
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and f"bad relay URL {url}" in lines[0], proc.stderr
    assert elapsed < 2.0, f"took {elapsed:.1f} s: not refused at once"
    assert not home.path.exists(), "nothing is created for a usage error"


# --- a wrong --relay-fingerprint names both ------------------------------------------


def test_a_wrong_relay_fingerprint_shows_the_one_seen(world: dict[str, Any]) -> None:
    relay: RelayProcess = world["relay"]
    home = Home(world["root"] / "pinner")
    home.ok("init", "--name", "geneva", *KDF)
    given = "ab" * 32
    proc = home.run("register", "--relay", relay.url, "--relay-fingerprint", given)
    assert proc.returncode == 4, proc.stderr
    (line,) = proc.stderr.splitlines()
    seen = re.search(r"fingerprint ([0-9a-f]{64}), not the ([0-9a-f]{64}) you gave", line)
    assert seen, line
    assert seen[2] == given and seen[1] != given
    assert relay.url in line
    right = home.run("register", "--relay", relay.url, "--relay-fingerprint", seen[1])
    assert right.returncode == 0, right.stderr


# --- docs/CLI.md's exit-code table ----------------------------------------------------


def _exit_table() -> dict[int, str]:
    text = CLI_DOC.read_text(encoding="utf-8")
    part = text.split("## Exit codes")[1].split("\n## ")[0]
    rows = {}
    for line in part.splitlines():
        m = re.fullmatch(r"\|\s*(\d+)\s*\|([^|]*)\|(.*)\|", line.strip())
        if m:
            rows[int(m[1])] = m[3]
    return rows


def test_the_exit_code_table_is_what_the_cli_does() -> None:
    from securechan import cli

    table = _exit_table()
    constants = {getattr(cli, n) for n in dir(cli) if n.startswith("EXIT_")}
    assert set(table) == constants | {130}, "a code in the table the CLI never uses, or missing"
    # Every class of the error tree named in a row maps to that row's code.
    named = 0
    for code, text in table.items():
        for name in re.findall(r"`(\w+)`", text):
            cls = getattr(errors, name, None)
            if isinstance(cls, type) and issubclass(cls, SecurechanError):
                exc = cls.__new__(cls)  # the mapping looks at the class only
                assert cli._exit_code(exc) == code, (name, code)
                named += 1
    assert named >= 6
    # And every class's code is a row of the table.
    for cls in [errors.SecurechanError, *_subclasses(errors.SecurechanError)]:
        assert cli._exit_code(cls.__new__(cls)) in table, cls


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out
