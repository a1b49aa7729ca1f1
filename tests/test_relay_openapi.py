"""The relay's API is described once (``securechan/relay/api.py``).

* ``docs/openapi.yaml`` is exactly what ``securechan.relay.openapi`` makes
  from that description (regenerate: ``python -m securechan.relay.openapi --write``);
* the server serves exactly the routes of the table, and nothing else;
* every JSON type goes both ways, and a request with a field the type does
  not have, or a malformed one, is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from securechan.audit.receipt import Receipt
from securechan.errors import MalformedInput
from securechan.primitives import Ed25519SigningKey
from securechan.relay import api, openapi
from securechan.relay.app import make_app

REPO = Path(__file__).resolve().parent.parent


def test_the_committed_openapi_document_is_the_generated_one() -> None:
    committed = (REPO / "docs" / "openapi.yaml").read_text("utf-8")
    assert committed == openapi.render(), (
        "docs/openapi.yaml differs from securechan/relay/api.py:"
        " run python -m securechan.relay.openapi --write"
    )


@pytest.mark.parametrize("with_log", [False, True])
def test_the_server_serves_exactly_the_route_table(with_log: bool) -> None:
    # Construction touches neither storage nor log: stand-ins are enough here
    # (the relay tests run the real process).
    app = make_app(object(), Ed25519SigningKey.generate(), tlog=object() if with_log else None)  # type: ignore[arg-type]
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    table = {(r.method, r.path) for r in api.ROUTES if with_log or not r.log}
    assert served == table


def test_every_route_of_the_document_is_in_the_table() -> None:
    doc = openapi.document()["paths"]
    listed = {(m.upper(), p) for p, ops in doc.items() for m in ops}
    assert listed == {(r.method, r.path) for r in api.ROUTES}


def test_match_finds_the_route_and_its_ids() -> None:
    rid = bytes(range(16))
    path = api.route("fetch").url(rid=rid)
    found = api.match("GET", path)
    assert found is not None
    assert found[0].name == "fetch"
    assert found[1] == {"rid": path.split("/")[3]}
    assert api.match("POST", path) is None
    assert api.match("GET", "/v1/nowhere") is None
    with pytest.raises(ValueError, match="needs"):
        api.route("send").url()


KEY = bytes(range(32))
ID = bytes(range(16))
KEY_TEXT = api.to_json(api.SecureQueueRequest(sender_key=KEY))["sender_key"]
EXAMPLES: list[Any] = [
    api.CreateQueueRequest(recipient_key=KEY),
    api.CreateQueueRequest(recipient_key=KEY, sender_key=KEY, contact=False),
    api.CreateQueueReply(rid=ID, sid=ID),
    api.SecureQueueRequest(sender_key=KEY),
    api.AckRequest(up_to=2**63 - 1),
    api.AckReply(deleted=3),
    api.PrekeysRequest(signed=b"s", one_time=(b"a", b"b"), replace_one_time=True),
    api.PrekeyCount(one_time_left=0),
    api.BundleReply(signed=b"s", one_time=None, one_time_left=0),
    api.FetchReply(messages=(api.Message(seq=1, msg_id=ID, data=b"x", received=5),), more=True),
    api.SendReply(seq=1, duplicate=False),
    api.InclusionReply(index=0, size=1, hashes=()),
    api.ConsistencyReply(old=1, new=2, hashes=(bytes(32),)),
    api.RelayInfo(api="v1", relay_key=KEY, fingerprint="ab", max_envelope=1, ttl=2),
]


@pytest.mark.parametrize("value", EXAMPLES, ids=lambda v: type(v).__name__)
def test_every_api_type_round_trips(value: Any) -> None:
    assert api.from_json(type(value), api.to_json(value)) == value


@pytest.mark.parametrize("value", EXAMPLES, ids=lambda v: type(v).__name__)
def test_a_request_with_another_field_is_refused_but_a_reply_may_grow(value: Any) -> None:
    data = {**api.to_json(value), "surprise": 1}
    with pytest.raises(MalformedInput):
        api.from_json(type(value), data)
    assert api.from_json(type(value), data, exact=False) == value


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (api.AckRequest, {"up_to": -1}),
        (api.AckRequest, {"up_to": 2**63}),
        (api.AckRequest, {"up_to": True}),
        (api.AckRequest, {}),
        (api.CreateQueueRequest, {"recipient_key": "AAAA"}),
        (api.CreateQueueRequest, {"recipient_key": KEY_TEXT, "contact": None}),
        (api.SecureQueueRequest, {"sender_key": None}),
        (api.PrekeysRequest, {"signed": "AA", "one_time": "AA"}),
        (api.FetchReply, {"messages": [{"seq": 1}]}),
        (api.FetchReply, []),
    ],
)
def test_malformed_values_are_refused(cls: type, data: Any) -> None:
    with pytest.raises(MalformedInput):
        api.from_json(cls, data)


def test_send_reply_carries_a_receipt_when_the_relay_logs() -> None:
    receipt = Receipt(leaf_index=0, checkpoint="origin\n1\nAAAA\n", inclusion_proof=())
    reply = api.SendReply(seq=1, duplicate=True, receipt=receipt)
    data = api.to_json(reply)
    assert data["receipt"] == receipt.to_json()
    assert dataclasses.replace(reply, receipt=None) == api.from_json(
        api.SendReply, {"seq": 1, "duplicate": True}
    )
