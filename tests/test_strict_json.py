"""Strict JSON everywhere (issue 11, class "Strict JSON everywhere").

Python's ``json.loads`` keeps the last of two equal names and guesses
UTF-16/UTF-32 from the first bytes, so two readers of one document can see
different values: a filter in front of the relay, or an auditor's tool,
reads one thing and securechan another. The tests below attack each JSON
entry point as an adversary would: a client posting to a real relay
process, a malicious relay answering a real client, a witness state file
edited on disk; then fuzz the one loader; then fence the package so a new
entry point cannot bypass it.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan import strict_json
from securechan.audit.checkpoint import Checkpoint, sign_checkpoint
from securechan.audit.merkle import MemoryTree
from securechan.audit.note import VerifierKey
from securechan.audit.witness import WitnessState, witness_checkpoint
from securechan.audit.witness_store import WitnessHome
from securechan.errors import MalformedInput, StorageError
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64e, sign_request
from tests.adversary import RelayProcess, running_relay
from tests.adversary.parties import make_people, transcript
from tests.adversary.proxy import Exchange, MaliciousRelay

PKG = Path(__file__).resolve().parent.parent / "securechan"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loads(data: bytes | str, **kw: Any) -> Any:
    return strict_json.loads(data, max_size=kw.pop("max_size", 1 << 22), **kw)


# --- the loader ---------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(JSON_VALUES, st.booleans())
def test_every_json_value_round_trips(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert loads(text.encode("utf-8")) == value
    assert loads(text) == value


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_malformed_input(data: bytes) -> None:
    with contextlib.suppress(MalformedInput):
        loads(data)


@FUZZ
@given(st.text(max_size=200))
def test_random_text_parse_or_raise_malformed_input(text: str) -> None:
    with contextlib.suppress(MalformedInput):
        loads(text)


@FUZZ
@given(
    st.dictionaries(st.text(max_size=8), JSON_VALUES, min_size=1, max_size=5),
    st.data(),
)
def test_a_repeated_name_is_refused_at_any_depth(obj: dict[str, Any], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(obj)))
    again = json.dumps(name) + ": " + json.dumps(data.draw(JSON_VALUES))
    text = json.dumps(obj)[:-1] + ", " + again + "}"
    wrap = data.draw(st.integers(min_value=0, max_value=5))
    text = '{"a": ' * wrap + text + "}" * wrap
    with pytest.raises(MalformedInput, match="appears twice"):
        loads(text.encode())


@FUZZ
@given(JSON_VALUES, st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]))
def test_utf16_and_utf32_are_refused(value: Any, codec: str) -> None:
    text = json.dumps({"v": value}, ensure_ascii=False)
    assert json.loads(text.encode(codec)) == {"v": value}  # what the old reader did
    with pytest.raises(MalformedInput):
        loads(text.encode(codec))


@FUZZ
@given(JSON_VALUES)
def test_a_byte_order_mark_is_refused(value: Any) -> None:
    with pytest.raises(MalformedInput, match="byte order mark"):
        loads(b"\xef\xbb\xbf" + json.dumps(value).encode())


@FUZZ
@given(st.integers(min_value=0xD800, max_value=0xDFFF), st.booleans())
def test_a_lone_surrogate_escape_is_refused(code: int, as_name: bool) -> None:
    escaped = f'"\\u{code:04x}"'
    text = "{" + escaped + ": 1}" if as_name else "[" + escaped + "]"
    with pytest.raises(MalformedInput, match="surrogate"):
        loads(text)
    assert loads('"\\ud83d\\ude00"') == "\U0001f600"  # a pair is one character


@pytest.mark.parametrize(
    "text", ["NaN", "[Infinity]", '{"a": -Infinity}', "1e400", "[-1e999]", "1" * 5000]
)
def test_numbers_json_does_not_have_are_refused(text: str) -> None:
    with pytest.raises(MalformedInput):
        loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "\x00"}',
        "[1,]",
        "{'a': 1}",
        '"\\x41"',
        "[1] [2]",
        "",
        " ",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
    ],
)
def test_what_rfc_8259_does_not_allow_is_refused(text: str | bytes) -> None:
    with pytest.raises(MalformedInput):
        loads(text)


@FUZZ
@given(st.integers(min_value=1, max_value=80), st.integers(min_value=1, max_value=80))
def test_depth_is_bounded_exactly(depth: int, bound: int) -> None:
    text = "[" * (depth - 1) + '{"x": "[[[[{{{{"}' + "]" * (depth - 1)
    if depth <= bound:
        assert loads(text, max_depth=bound) is not None
    else:
        with pytest.raises(MalformedInput, match="nests deeper"):
            loads(text, max_depth=bound)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * (1 << 20),
        b"{" * (1 << 20),
        b'{"a":' * (200_000),
        b"[]" * (1 << 19),
        b'"' + b'\\"' * (1 << 19),  # an unclosed string full of escapes: still linear
    ],
    ids=["brackets", "braces", "objects", "flat", "unclosed-string"],
)
def test_a_megabyte_of_nesting_is_refused_fast(data: bytes) -> None:
    start = time.monotonic()
    with pytest.raises(MalformedInput):
        loads(data)
    assert time.monotonic() - start < 2.0


def test_size_is_bounded_before_anything_else() -> None:
    with pytest.raises(MalformedInput, match="larger than 10 bytes"):
        strict_json.loads(b"[" + b" " * 10 + b"]", max_size=10)
    with pytest.raises(MalformedInput, match="larger than 10 bytes"):
        strict_json.loads("[" + " " * 10 + "]", max_size=10)
    assert strict_json.loads(b"[1]", max_size=3) == [1]


# --- the fence ----------------------------------------------------------------------------

_READERS = {"load", "loads", "raw_decode", "JSONDecoder", "json", "receive_json"}
# _json: CPython's C scanner behind json (strict_json parses with it).
_JSON_MODULES = {"json", "_json", "simplejson", "ujson", "orjson", "rapidjson"}
# Writers, not readers: securechan/json_text.py escapes strings with it.
_WRITERS = {("_json", "encode_basestring_ascii")}


def _json_reads(path: Path) -> list[str]:
    """Every way of reading JSON in one source file: ``json.load(s)``, a
    decoder, ``from json import loads``, and aiohttp's ``.json()``."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _JSON_MODULES:
            found += [
                f"{node.lineno}: from {node.module} import {a.name}"
                for a in node.names
                if (node.module, a.name) not in _WRITERS
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {a.name}"
                for a in node.names
                if a.name in _JSON_MODULES - {"json"}
            ]
        elif isinstance(node, ast.Attribute) and node.attr in _READERS:
            base = node.value
            if node.attr in ("json", "receive_json", "raw_decode", "JSONDecoder") or (
                isinstance(base, ast.Name) and base.id in _JSON_MODULES
            ):
                found.append(f"{node.lineno}: .{node.attr}")
    return found


def test_no_json_is_read_outside_the_strict_loader() -> None:
    offenders = {
        str(p.relative_to(PKG)): reads
        for p in sorted(PKG.rglob("*.py"))
        if p.name != "strict_json.py" and (reads := _json_reads(p))
    }
    assert offenders == {}, f"read JSON through securechan.strict_json.loads: {offenders}"


def test_the_fence_sees_what_it_fences(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text(
        "import json\nfrom json import loads\nimport orjson\n"
        "json.loads(b'')\njson.load(f)\njson.JSONDecoder().raw_decode('')\n"
        "async def f(r):\n    await r.json()\n    await ws.receive_json()\n"
        "json.dumps({})\n"
    )
    assert len(_json_reads(src)) == 8


# --- the relay: a client posting hostile bodies to a real relay process ------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay")) as r:
        yield r


def _http(
    relay: RelayProcess, method: str, path: str, body: bytes, key: Ed25519SigningKey
) -> tuple[int, Any]:
    """One signed request, as any client can make it; the status and the
    relay's JSON answer (parsed by the strict loader: the relay's own
    answers are strict too)."""
    req = urllib.request.Request(  # noqa: S310 - 127.0.0.1
        relay.url + path,
        data=body,
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": sign_request(key, method, path, body, now=int(time.time())),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, strict_json.loads(resp.read(), max_size=1 << 20)
    except urllib.error.HTTPError as e:
        return e.code, strict_json.loads(e.read(), max_size=1 << 20)


def _bad_json(status: int, answer: Any) -> str:
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_json", answer
    message: str = answer["error"]["message"]
    return message


def test_relay_refuses_a_body_with_a_repeated_name(relay: RelayProcess) -> None:
    """``contact`` twice: a front that keeps the first name sees a private
    queue, the old relay (last one wins) made a contact address."""
    key = Ed25519SigningKey.generate()
    k = json.dumps(b64e(key.public))
    body = f'{{"recipient_key": {k}, "contact": false, "contact": true}}'.encode()
    assert "appears twice" in _bad_json(*_http(relay, "POST", "/v1/queues", body, key))
    body = f'{{"recipient_key": {k}, "recipient_key": {k}}}'.encode()
    _bad_json(*_http(relay, "POST", "/v1/queues", body, key))
    # The same request without the repetition is served.
    status, made = _http(relay, "POST", "/v1/queues", f'{{"recipient_key": {k}}}'.encode(), key)
    assert status == 201 and set(made) == {"rid", "sid"}


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_relay_refuses_a_body_not_in_utf8(relay: RelayProcess, codec: str) -> None:
    """A correctly signed request whose body is UTF-16/32 (or has a BOM):
    the old relay guessed the encoding and created the queue."""
    key = Ed25519SigningKey.generate()
    body = json.dumps({"recipient_key": b64e(key.public), "contact": True}).encode(codec)
    message = _bad_json(*_http(relay, "POST", "/v1/queues", body, key))
    assert "UTF-8" in message or "byte order mark" in message


def test_relay_refuses_deep_nesting_before_parsing(relay: RelayProcess) -> None:
    key = Ed25519SigningKey.generate()
    status, made = _http(
        relay,
        "POST",
        "/v1/queues",
        json.dumps({"recipient_key": b64e(key.public), "contact": True}).encode(),
        key,
    )
    assert status == 201
    path = f"/v1/queues/{made['rid']}/prekeys"
    # Deep enough to be absurd, shallow enough that the old parser took it
    # (and answered "bad_request" only after building it).
    body = b'{"signed": ' + b"[" * 40 + b"]" * 40 + b"}"
    assert "nests deeper" in _bad_json(*_http(relay, "PUT", path, body, key))
    # A megabyte of brackets (the route accepts 3 MB): refused by the scan,
    # quickly, and the relay serves the next request.
    start = time.monotonic()
    assert "nests deeper" in _bad_json(*_http(relay, "PUT", path, b"[" * (1 << 20), key))
    assert time.monotonic() - start < 10
    status, left = _http(relay, "GET", path, b"", key)
    assert status == 200 and left == {"one_time_left": 0}


# --- the client: a malicious relay answering with repeated names ------------------------


def test_client_refuses_a_relay_answer_with_a_repeated_name(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """The relay's info names two keys: a log key checker that keeps the
    first name pins the attacker's, securechan (last one wins) pinned the
    real one, and nobody noticed the answer was ambiguous. Now ``register``
    stops with one line and the usage exit code, and pins nothing."""
    people = make_people(tmp_path / "pristine", tmp_path, {"cairo": "cairo's long passphrase"})
    cairo = people["cairo"]
    front = MaliciousRelay(relay.url, relay.data, tmp_path / "front")
    front.start()
    try:
        forged = json.dumps(b64e(Ed25519SigningKey.generate().public)).encode()

        def twice(x: Exchange, status: int, reply: bytes) -> tuple[int, bytes]:
            assert reply.startswith(b"{")
            return status, b'{"relay_key": ' + forged + b", " + reply[1:]

        front.on_response("info", twice)
        proc = cairo.run("register", "--relay", front.url)
    finally:
        front.close()
    assert proc.returncode == 2, transcript(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, transcript(proc)
    assert "the relay's answer is not strict JSON" in lines[0], transcript(proc)
    assert "appears twice" in lines[0]
    assert proc.stdout == ""


# --- the witness state file: edited on disk ----------------------------------------------


def test_witness_state_with_a_repeated_name_is_refused(tmp_path: Path) -> None:
    """Someone with write access to the witness's folder appends a second
    ``logs`` to its state: the old reader (last one wins) started again from
    nothing and would cosign a rewritten history; the file now reads as
    damaged and the witness stops."""
    relay_key = Ed25519SigningKey.generate()
    origin = "relay.example/strict-json"
    log_key = VerifierKey(name=origin, sig_type=0x01, public_key=relay_key.public)
    tree = MemoryTree()
    for i in range(3):
        tree.append(f"leaf {i}".encode())
    note = sign_checkpoint(
        relay_key, origin, Checkpoint(origin=origin, size=3, root_hash=tree.root(3))
    )
    witness = Ed25519SigningKey.generate()
    done = witness_checkpoint(
        WitnessState(),
        key=witness,
        name="witness.example/w",
        log_key=log_key,
        note=note,
        proof=[],
        now=1_790_000_000,
    )
    home = WitnessHome(tmp_path / "witness")
    with home.locked():
        home.write_state(done.state)
    assert home.read_state().old_size(log_key) == 3
    text = home.state_path.read_text("utf-8")
    assert text.rstrip().endswith("}")
    home.state_path.write_text(text.rstrip()[:-1] + ', "logs": []}\n', "utf-8")
    with pytest.raises(StorageError, match="appears twice"):
        home.read_state()
    # UTF-16 is refused too.
    home.state_path.write_bytes(done.state.to_json().encode("utf-16"))
    with pytest.raises(StorageError):
        home.read_state()
    with pytest.raises(MalformedInput):
        WitnessState.from_json(done.state.to_json().encode("utf-16"))


def test_floats_are_finite() -> None:
    assert loads("[1.5, -0.0, 1e300]") == [1.5, -0.0, 1e300]
    assert all(math.isfinite(x) for x in loads("[1.5, 2e-300]"))
