"""atheris harness: what the relay and the client parse from each other.

The first input byte picks the target, the rest is its text:

* mode 0: an ``Authorization`` header: ``parse_authorization`` raises only
  ``MalformedInput``; a parsed header then goes to ``verify_request``
  (which raises only ``BadSignature``) for a fixed key and request;
* mode 1: a base64url value: ``b64d`` raises only ``MalformedInput``, and
  what it accepts is canonical (``b64e`` gives the text back);
* mode 2: a JSON envelope as a relay sends it (fetch answer item or
  WebSocket frame): ``transport._envelope`` raises only ``MalformedInput``;
* mode 3: a JSON request body as a client sends it: the relay's body
  parser (``Relay._object`` with each route's fields) and its position
  parser (``Relay._position``) answer only with 4xx errors.

    python fuzz/fuzz_relay_auth.py -max_total_time=600 fuzz/corpus/relay_auth fuzz/seeds/relay_auth
"""

from __future__ import annotations

import contextlib
import hashlib
import json

from _fixtures import NOW, check, run

from securechan.errors import BadSignature, MalformedInput
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64d, b64e, parse_authorization, verify_request
from securechan.relay.app import Relay, _HttpError
from securechan.transport import _envelope

KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test relay client").digest())
# The body fields of each relay route that takes JSON (docs/openapi.yaml).
ROUTES: list[tuple[set[str], frozenset[str]]] = [
    ({"recipient_key"}, frozenset({"sender_key", "contact"})),
    ({"sender_key"}, frozenset()),
    ({"up_to"}, frozenset()),
    ({"signed"}, frozenset({"one_time", "replace_one_time"})),
]


def _authorization(text: str) -> None:
    try:
        req = parse_authorization(text)
    except MalformedInput:
        return
    with contextlib.suppress(BadSignature):
        verify_request(KEY.public, req, "GET", "/v1/queues/x/messages", b"", now=NOW)


def _base64url(text: str) -> None:
    try:
        raw = b64d(text)
    except MalformedInput:
        return
    check(b64e(raw) == text, "b64d accepted a non-canonical value")


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None
    except RecursionError:
        # The client's json.loads catches ValueError only: RESULTS.md, finding T1.
        return None


def _relay_envelope(text: str) -> None:
    item = _json(text)
    if item is None:
        return
    try:
        _envelope(item)
    except MalformedInput:
        pass
    except OverflowError:
        # An infinite number (JSON "Infinity", 1e999): RESULTS.md, finding T2.
        pass


def _client_body(text: str) -> None:
    body = text.encode("utf-8", "surrogatepass")
    for required, optional in ROUTES:
        try:
            data = Relay._object(body, required, optional)
        except _HttpError as e:
            check(400 <= e.status < 500, f"the body parser answered {e.status}")
            continue
        for name, value in data.items():
            try:
                Relay._position(value, name)
            except _HttpError as e:
                check(e.status == 400, f"the position parser answered {e.status}")
    try:
        Relay._position(text, "after", text=True)
    except _HttpError as e:
        check(e.status == 400, f"the query parser answered {e.status}")


TARGETS = (_authorization, _base64url, _relay_envelope, _client_body)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", "surrogateescape")
    TARGETS[data[0] % len(TARGETS)](text)


if __name__ == "__main__":
    run(test_one_input)
