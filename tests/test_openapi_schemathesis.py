"""Schemathesis against the relay's own OpenAPI document (issue 6, item 4).

A real ``securechan relay serve`` runs as a subprocess on 127.0.0.1 (port 0,
its own data folder). ``docs/openapi.yaml`` is loaded with schemathesis, and
for every operation it lists, a bounded number of requests (see ``EXAMPLES``)
is generated in three kinds:

* *positive*: values that fit the schema (random ids, keys, headers);
* *negative*: values that violate it (wrong types, patterns, ranges);
* *aimed* (``AIMED`` more): requests at real queues that the test made
  first (a secured private queue holding envelopes, a contact address with
  published prekeys), with a correct ``SC1`` signature added by the HTTP
  session just before sending: valid ones, so that the success answers are
  checked too (each such operation must get at least one 2xx), and invalid
  ones, so that the relay's own body and query validation is reached past
  the id lookup and authentication. This run is derandomized, so its
  requests are the same on every run.

Every answer must hold schemathesis's checks: no 5xx
(``not_a_server_error``), a status the operation documents
(``status_code_conformance``), a documented content type and, where the
document gives a schema, a body and headers that conform to it
(``response_schema_conformance``, ``content_type_conformance``,
``response_headers_conformance``). Requests go to loopback only, bounded
in number; the relay is stopped with SIGTERM and must exit 0 with no
traceback in its log. The operations are read from the document, so a route
added to it is tested without a change here. Not covered: the WebSocket
upgrade (schemathesis speaks plain HTTP; ``tests/test_relay_api.py`` tests it).

schemathesis is a test dependency (the ``[test]`` extra); without it this
file is skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (pip install 'securechan[test]')"
)

import requests  # noqa: E402 - installed with schemathesis
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from securechan.primitives import Ed25519SigningKey  # noqa: E402
from securechan.protocol.relay_auth import b64e, sign_request  # noqa: E402
from securechan.transport import RelayClient, RetryPolicy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "docs" / "openapi.yaml"
EXE = Path(sys.executable).with_name("securechan")
EXAMPLES = 30  # per operation: positive and negative together
AIMED = 15  # per operation, aimed at real queues
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Creation limits raised so that setting up queues is never rate limited;
# every other limit keeps its default (429 is documented where it can occur).
# The failed-authentication budget too: the fuzzer's many unsigned and
# badly signed requests would otherwise turn every later answer into a 429.
LIMITS = {
    "create_rate": 1000.0,
    "create_burst": 10000,
    "auth_failure_rate": 1000.0,
    "auth_failure_burst": 100_000,
}
SIGN_AS = "X-Test-Sign-As"  # removed by SigningSession before the request leaves

SCHEMA = schemathesis.openapi.from_path(SPEC)
OPERATIONS = sorted(
    (op.method.upper(), op.path) for result in SCHEMA.get_all_operations() for op in [result.ok()]
)


# --- the relay process --------------------------------------------------------------


@dataclass
class RelayProcess:
    proc: subprocess.Popen[bytes]
    url: str
    stderr: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the relay did not stop within 15 s of SIGTERM") from None
        log = self.stderr.read_text("utf-8", "replace")
        assert rc == 0, f"the relay exited {rc} after SIGTERM:\n{log[-3000:]}"
        assert "Traceback" not in log, f"the relay logged a traceback:\n{log[-3000:]}"


def start_relay(root: Path) -> RelayProcess:
    """``securechan relay serve --port 0``; wait for its "listening on" line."""
    config = root / "relay.toml"
    config.write_text("[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in LIMITS.items()))
    out, err = root / "relay.stdout", root / "relay.stderr"
    args = [str(EXE), "relay", "serve", "--port", "0", "--data", str(root / "data")]
    args += ["--config", str(config)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(args, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 20
    while True:
        m = re.search(r"^listening on (http://127\.0\.0\.1:\d+)$", out.read_text(), re.M)
        if m:
            return RelayProcess(proc=proc, url=m[1], stderr=err)
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise AssertionError(f"the relay did not start: {err.read_text()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path_factory.mktemp("schemathesis-relay"))
    try:
        yield process
    finally:
        process.stop()


# --- real queues to aim at ------------------------------------------------------------


def _key(label: str) -> Ed25519SigningKey:
    seed = hashlib.sha256(f"securechan test schemathesis {label}".encode()).digest()
    return Ed25519SigningKey(seed)


RECIPIENT = _key("recipient")
SENDER = _key("sender")
OWNER = _key("contact owner")
KEYS = {"recipient": RECIPIENT, "sender": SENDER, "owner": OWNER}


@dataclass(frozen=True)
class Queues:
    rid: str  # a private queue secured with SENDER, holding envelopes
    sid: str
    contact_rid: str  # a contact address with published prekeys
    contact_sid: str


async def _make_queues(url: str) -> Queues:
    async with RelayClient(url, retry=RetryPolicy(attempts=3, timeout=10.0)) as client:
        private = await client.create_queue(RECIPIENT, sender_key=SENDER.public)
        for i in range(3):
            await client.send(private.sid, b"envelope %d" % i, bytes([i]) * 16, sender=SENDER)
        contact = await client.create_queue(OWNER, contact=True)
        await client.put_prekeys(
            contact.rid, OWNER, signed=b"sealed signed prekey", one_time=[b"one", b"two"]
        )
    return Queues(
        rid=b64e(private.rid),
        sid=b64e(private.sid),
        contact_rid=b64e(contact.rid),
        contact_sid=b64e(contact.sid),
    )


@pytest.fixture
def queues(relay: RelayProcess) -> Queues:
    """Fresh queues for each operation, so one operation's deletes and acks
    do not change what the next one sees."""
    return asyncio.run(_make_queues(relay.url))


class SigningSession(requests.Session):
    """Adds a fresh ``SC1`` signature to requests marked with ``SIGN_AS``,
    over the exact method, path, query and body bytes that go out."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        who = request.headers.pop(SIGN_AS, None)
        if who is not None:
            body = request.body or b""
            if isinstance(body, str):
                body = body.encode("utf-8")
            assert isinstance(body, bytes), "a streamed body cannot be signed"
            request.headers["Authorization"] = sign_request(
                KEYS[str(who)],
                request.method or "GET",
                request.path_url,
                body,
                now=int(time.time()),
            )
        return super().send(request, **kwargs)


def _blob(max_size: int = 64) -> st.SearchStrategy[str]:
    return st.binary(min_size=1, max_size=max_size).map(b64e)


def _set(case: Any, headers: dict[str, str] | None = None, body: Any = None) -> Any:
    if headers:
        case.headers = {**(case.headers or {}), **headers}
    if body is not None:
        case.body = body
    return case


def _aimed(operation: Any, method: str, path: str, q: Queues) -> st.SearchStrategy[Any] | None:
    """Cases aimed at the real queues, signed where the route needs it; or None."""
    fixed: dict[str, Any] = {}
    body: st.SearchStrategy[Any] = st.none()
    headers: st.SearchStrategy[dict[str, str]] = st.just({})
    if "{rid}" in path:
        contact = path.endswith("/prekeys")
        fixed["path_parameters"] = {"rid": q.contact_rid if contact else q.rid}
        fixed["headers"] = {SIGN_AS: "owner" if contact else "recipient"}
        if path.endswith("/sender-key"):
            # The key it holds (accepted again) or another one (409).
            keys = st.one_of(st.just(SENDER.public), st.binary(min_size=32, max_size=32))
            body = keys.map(lambda k: {"sender_key": b64e(k)})
        elif (method, path) == ("PUT", "/v1/queues/{rid}/prekeys"):
            body = st.fixed_dictionaries(
                {"signed": _blob()},
                optional={
                    "one_time": st.lists(_blob(), max_size=5),
                    "replace_one_time": st.booleans(),
                },
            )
        elif path.endswith("/ack"):
            body = st.integers(0, 10).map(lambda n: {"up_to": n})
    elif path == "/v1/send/{sid}":
        fixed["path_parameters"] = {"sid": q.sid}
        fixed["headers"] = {SIGN_AS: "sender"}
        # A fresh id mostly; now and then a resend of the first envelope.
        ids = st.one_of(st.binary(min_size=16, max_size=16), st.just(bytes(16)))
        headers = ids.map(lambda i: {"X-Message-Id": b64e(i)})
    elif path == "/v1/contact/{sid}/bundle":
        fixed["path_parameters"] = {"sid": q.contact_sid}
    elif (method, path) == ("POST", "/v1/queues"):
        fixed["headers"] = {SIGN_AS: "recipient"}
        fixed["body"] = {"recipient_key": b64e(RECIPIENT.public), "contact": False}
    else:
        return None
    cases = operation.as_strategy(GenerationMode.POSITIVE, **fixed)
    aimed = st.builds(_set, cases, headers, body)
    if "path_parameters" in fixed and (method, path) != ("POST", "/v1/contact/{sid}/bundle"):
        # Invalid queries, bodies and headers that get past the id lookup and,
        # signed, past authentication, to the relay's own validation.
        invalid = operation.as_strategy(GenerationMode.NEGATIVE, **fixed)
        aimed = st.one_of(aimed, st.builds(_set, invalid, headers))
    return aimed


# Operations whose aimed requests cannot succeed here: schemathesis speaks
# plain HTTP, so the WebSocket route answers 400 (no Upgrade header).
NO_SUCCESS_EXPECTED = {("GET", "/v1/queues/{rid}/ws")}
# A finding in docs/openapi.yaml, pinned by test_openapi_document_body_matches_its_schema.
KNOWN_SCHEMA_MISMATCH = {("GET", "/v1/openapi.yaml")}


def _checks(method: str, path: str) -> list[Any]:
    if (method, path) in KNOWN_SCHEMA_MISMATCH:
        return [c for c in CHECKS if c is not response_schema_conformance]
    return CHECKS


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms(relay: RelayProcess, queues: Queues, method: str, path: str) -> None:
    operation = SCHEMA[path][method]
    checks = _checks(method, path)
    generated = st.one_of(
        st.tuples(st.just("positive"), operation.as_strategy(GenerationMode.POSITIVE)),
        st.tuples(st.just("negative"), operation.as_strategy(GenerationMode.NEGATIVE)),
    )
    aimed = _aimed(operation, method, path, queues)
    session = SigningSession()
    seen: Counter[tuple[str, int]] = Counter()

    def call(kind: str, case: Any) -> None:
        response = case.call_and_validate(
            base_url=relay.url, session=session, checks=checks, timeout=10
        )
        seen[(kind, response.status_code)] += 1

    bounded = settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )

    @bounded
    @given(item=generated)
    def run_generated(item: tuple[str, Any]) -> None:
        call(*item)

    @settings(bounded, max_examples=AIMED, derandomize=True)
    @given(case=aimed if aimed is not None else st.nothing())
    def run_aimed(case: Any) -> None:
        call("aimed", case)

    try:
        run_generated()
        if aimed is not None:
            run_aimed()
    finally:
        session.close()
    # The run reached the relay, and requests aimed at real queues got past
    # authentication to a success answer (so success bodies were checked too).
    assert seen, "no request was made"
    if aimed is not None and (method, path) not in NO_SUCCESS_EXPECTED:
        ok = {status for kind, status in seen if kind == "aimed" and 200 <= status < 300}
        assert ok, f"no aimed request succeeded: {dict(seen)}"


def test_openapi_document_body_matches_its_schema(relay: RelayProcess) -> None:
    case = SCHEMA["/v1/openapi.yaml"]["GET"].Case()
    case.call_and_validate(base_url=relay.url, checks=[response_schema_conformance], timeout=10)
