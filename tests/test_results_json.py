"""``--json`` output comes from result types (docs/CLI.md, "JSON output").

Each result type's ``to_json()`` gives exactly the fields the doc lists for
it, each of the documented JSON type, and survives a trip through JSON text
unchanged; the doc lists every result type and invents none; and no command
builds its JSON by hand any more.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

from securechan.agent import methods as agent_methods
from securechan.audit.checkpoint import Cosignature
from securechan.audit.note import SIG_COSIGNATURE_V1, VerifierKey
from securechan.cli import results as cli_results
from securechan.client import group_results
from securechan.client import results as client_results
from securechan.errors import Reason
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.payload import ContentType

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = ROOT / "docs" / "CLI.md"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
NOW = 1_796_000_000  # 2026-11-30, any fixed time
# PUBLIC TEST DATA: a witness's cosignature key from a fixed, public seed.
_WITNESS_KEY = VerifierKey(
    name="witness.example/json",
    sig_type=SIG_COSIGNATURE_V1,
    public_key=Ed25519SigningKey(hashlib.sha256(b"securechan json test witness").digest()).public,
)


def _documented() -> dict[str, dict[str, tuple[str, bool]]]:
    """type name -> field -> (JSON type, optional)."""
    text = CLI_DOC.read_text(encoding="utf-8")
    part = text.split("<!-- json:begin -->")[1].split("<!-- json:end -->")[0]
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for line in part.splitlines():
        m = re.fullmatch(r"\| `(\w+)` \| [^|]+ \| (.+) \|", line.strip())
        if not m:
            continue
        fields = {}
        for item in m[2].split(", "):
            f = re.fullmatch(r"`(\w+)`(\?)? ([a-z ]+)", item.strip())
            assert f, f"cannot read {item!r} in the row of {m[1]}"
            fields[f[1]] = (f[3], bool(f[2]))
        out[m[1]] = fields
    return out


def _result_types() -> dict[str, Any]:
    found = {}
    for module in (client_results, cli_results, agent_methods, group_results):
        for name in module.__all__:
            obj = getattr(module, name)
            # (a nested type without JSON_FIELDS, GroupMemberInfo, is
            # described with the type it is nested in)
            if inspect.isclass(obj) and hasattr(obj, "JSON_FIELDS"):
                found[name] = obj
    return found


def _samples() -> list[Any]:
    r, c = client_results, cli_results
    return [
        r.Received(
            contact="washington",
            fingerprint="ab" * 32,
            verified=True,
            conversation=b"\x01" * 16,
            seq=3,
            sent_at=NOW,
            content_type=ContentType.TEXT,
            text="hello \u202e",
            notes=("messages 1..2 have not arrived",),
        ),
        r.Rejected(reason=Reason.REPLAY, error="already processed"),
        r.Rejected(reason=Reason.SPLIT_VIEW, error="two roots", evidence=("note a", "note b")),
        r.SendResult(contact="tehran", seqs=(4, 5), delivered=1, pending=1),
        r.HistoryEntry("tehran", "out", 4, NOW, "hi", "00" * 8),
        r.Status(
            identity="muscat",
            relays=("https://relay.example",),
            queues=2,
            sessions=1,
            outbox=0,
            held=0,
            rolled_back=("tehran",),
        ),
        c.IdentityCreated(name="tehran", fingerprint="ab" * 32, home="/h"),
        c.IdentityInfo(name="tehran", fingerprint="ab" * 32, created=NOW, home="/h"),
        c.ContactInfo(
            name="w",
            identity_name="washington",
            fingerprint="cd" * 32,
            verified=False,
            added=NOW,
            verified_at=None,
        ),
        c.ContactInfo(
            name="w",
            identity_name="washington",
            fingerprint="cd" * 32,
            verified=True,
            added=NOW,
            verified_at=NOW + 5,
            safety_number="1" * 60,
            safety_words=("apple", "zulu"),
        ),
        c.DocumentSigned(signature="a.sig", size=10, signer="tehran"),
        c.DocumentVerified(
            signer="tehran", fingerprint="ab" * 32, created=NOW, comment=None, contact_verified=None
        ),
        c.Registered(relays=("https://r",), relay_fingerprints={"https://r": "ef" * 32}),
        c.LogEntry(index=0, time=NOW, kind="rejected", fields={"reason": "SplitView"}),
        c.LogVerified(
            entries=3,
            checkpoints=1,
            last_checkpoint=2,
            unsigned=0,
            head_checkpoint=2,
            identity="tehran",
            fingerprint="ab" * 32,
        ),
        c.StatementExported(
            file="s.txt", message_id="00" * 8, log=True, witnessed=False, delivery_receipt=False
        ),
        c.StatementVerified(
            message_id="00" * 8,
            sender={"name": "a", "fingerprint": "ab" * 32, "role": "initiator"},
            recipient={"name": "b", "fingerprint": "cd" * 32, "role": "responder"},
            conversation="01" * 16,
            transcript_hash="02" * 32,
            seq=1,
            sent_at=NOW,
            content_type="text",
            content="hi",
            payload_sha256="03" * 32,
            prev_hash="04" * 32,
            log=None,
            delivery={"receipt_id": "05" * 8, "up_to_seq": 1, "signed_at": "2026-11-30T00:00:00Z"},
        ),
        c.WitnessKeyInfo(name="w.example/1", verifier_key="w.example/1+0011+AAAA"),
        c.CosignRound(
            origin="o", size=5, root="AAAA", old_size=4, status="cosigned", timestamp=NOW
        ),
        c.CosignRound(
            origin="o", size=5, root="AAAA", old_size=5, status="unchanged", timestamp=None
        ),
        c.PolicyInfo(relay="https://r"),
        c.PolicyInfo(relay="https://r", witnesses=("k",), required=1, error="relay down"),
        c.PolicyInfo(
            relay="https://r",
            witnesses=("k",),
            required=1,
            witnessed_size=7,
            cosigned_by=(Cosignature(cosigner=_WITNESS_KEY, timestamp=NOW),),
        ),
        c.DemoReport(ok=True, seconds=1.5, steps=({"id": "x", "ok": True},)),
        r.QueuedMessage(
            id="00" * 8,
            contact="washington",
            kind="file",
            size=10,
            file_name="draft.txt",
            seqs=(3, 4),
            parts=2,
            posted=1,
            created=NOW,
            relays=("https://r",),
        ),
        r.Cancelled(
            id="00" * 8,
            contact="washington",
            kind="text",
            parts=1,
            withdrawn=1,
            posted=0,
            in_flight=0,
            retired=True,
        ),
        agent_methods.AgentStatus(
            home="/h", pid=7, locked=True, expires_in=0, idle_ttl=600.0, max_ttl=7200.0, pending=0
        ),
        *_group_samples(),
    ]


def _group_samples() -> list[Any]:
    g = group_results
    me = g.GroupMemberInfo(
        name="tehran", fingerprint="ab" * 32, admin=True, verified=True, you=True
    )
    stranger = g.GroupMemberInfo(name=None, fingerprint="cd" * 32, admin=False, verified=False)
    return [
        g.GroupInfo(
            name="talks \u202e",
            group_id="01" * 16,
            epoch=2,
            members=(me, stranger),
            head="02" * 32,
            records=7,
        ),
        g.GroupSent(
            group="talks",
            id="03" * 8,
            seq=4,
            position=9,
            log_index=120,
            delivered=("washington",),
            pending=("muscat",),
        ),
        g.GroupEntry(
            group="talks",
            id="04" * 8,
            epoch=1,
            position=3,
            sender="washington",
            seq=2,
            sent_at=NOW,
            status="shown",
            summary="text",
            text="We accept.",
        ),
        g.GroupEntry(
            group="talks",
            id="05" * 8,
            epoch=1,
            position=4,
            sender="ef" * 32,
            seq=0,
            sent_at=NOW,
            status="change",
            summary="removed muscat",
        ),
    ]


def _is(kind: str, value: Any) -> bool:
    if kind.endswith(" or null"):
        return value is None or _is(kind.removesuffix(" or null"), value)
    if kind.endswith(" list"):
        return isinstance(value, list) and all(_is(kind.removesuffix(" list"), v) for v in value)
    return {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: type(v) is int,
        "number": lambda v: type(v) in (int, float),
        "boolean": lambda v: type(v) is bool,
        "object": lambda v: isinstance(v, dict),
        "time": lambda v: isinstance(v, str) and TIME.fullmatch(v) is not None,
        "code": lambda v: v in {r.value for r in Reason},
    }[kind](value)


def test_the_doc_lists_every_result_type_and_no_other() -> None:
    assert set(_documented()) == set(_result_types())


@pytest.mark.parametrize("name", sorted(_result_types()))
def test_declared_fields_match_the_doc(name: str) -> None:
    cls = _result_types()[name]
    doc = _documented()[name]
    assert list(doc) == list(cls.JSON_FIELDS)
    assert {f for f, (_, optional) in doc.items() if optional} == set(cls.JSON_OPTIONAL)


def test_every_type_has_a_sample() -> None:
    assert {type(s).__name__ for s in _samples()} == set(_result_types())


@pytest.mark.parametrize("sample", _samples(), ids=lambda s: type(s).__name__)
def test_json_round_trips_through_the_documented_fields(sample: Any) -> None:
    doc = _documented()[type(sample).__name__]
    data = sample.to_json()
    # Through JSON text and back, as a program reading --json gets it.
    assert json.loads(json.dumps(data, ensure_ascii=True)) == data
    required = {f for f, (_, optional) in doc.items() if not optional}
    assert required <= set(data) <= set(doc)
    for field, value in data.items():
        assert _is(doc[field][0], value), (field, value, doc[field][0])
    if isinstance(sample, cli_results.PolicyInfo) and sample.cosigned_by:
        assert data["cosigned_by"] == [
            {"witness": "witness.example/json", "at": "2026-11-30T00:53:20Z"}
        ]


def test_received_carries_the_saved_file() -> None:
    r = _samples()[0]
    assert r.to_json()["file"] is None
    assert r.to_json(file="/tmp/x (1).pdf")["file"] == "/tmp/x (1).pdf"


def test_status_from_the_channels_mapping() -> None:
    info = {
        "identity": "tehran",
        "relays": ["https://r"],
        "queues": 1,
        "sessions": 0,
        "outbox": 2,
        "held": 0,
        "rolled_back": [],
    }
    # The mapping Channel.status() returns, and the relays that did not
    # answer (the CLI's status asks each one) as ``unreachable``.
    assert client_results.Status.from_mapping(info).to_json() == {**info, "unreachable": []}
    down = {**info, "unreachable": ["https://r"]}
    assert client_results.Status.from_mapping(down).to_json() == down


def test_no_command_builds_json_by_hand() -> None:
    # _emit_json (and the cosign line) take a result type's to_json(), or a
    # list of them, never a dict or list literal made in the command.
    for path in sorted((ROOT / "securechan" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name not in ("_emit_json", "_emit_json_lines", "dumps"):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.ListComp | ast.GeneratorExp):
                arg = arg.elt
            assert not isinstance(arg, ast.Dict | ast.List | ast.DictComp), (
                f"{path.name}:{node.lineno} builds JSON by hand; use a result type's to_json()"
            )
