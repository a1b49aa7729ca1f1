"""Peer keys (issue 11, class "peer keys"): every public key a peer or a relay
supplies is validated when it is parsed, and nothing a peer or a relay sends
reaches the CLI user as a traceback.

Three layers, each written as the attacker would act:

* the checks in ``securechan.primitives`` (X25519 low-order points, the
  FIPS 203 §7.2 ML-KEM-768 modulus check, Ed25519 points) and every parse
  site that calls them (prekeys, ratchet headers, identities and contact
  cards, relay and witness keys);
* end to end: a contact signs a prekey whose X25519 half has low order and
  its relay serves it; ``securechan send`` refuses it with one line and exit
  1 (before the fix: a ``ValueError`` traceback from HPKE);
* a property test over the real CLI: mutated identity files and contact
  cards to ``contact add``, mutated statement files to ``statement verify``,
  hostile prekey bundles from a malicious relay to ``send``; always a
  documented exit code, one ``securechan: `` line on stderr, no traceback.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import x25519 as _x25519
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from securechan import wire
from securechan.audit.note import VerifierKey
from securechan.cli import cli
from securechan.errors import BundleRejected, MalformedInput, VerificationFailed
from securechan.identity import Identity, PublicIdentity
from securechan.primitives import (
    HYBRID_KEM_PUBLIC_KEY_SIZE,
    MLDSA65_PUBLIC_KEY_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    Ed25519SigningKey,
    HybridKemKeyPair,
    HybridVerifyKey,
    MlKemKeyPair,
    X25519KeyPair,
    check_ed25519_public_key,
    check_hybrid_kem_public_key,
    check_mlkem768_public_key,
    check_x25519_public_key,
    hpke_seal,
)
from securechan.protocol import ratchet as ratchet_mod
from securechan.protocol.address import ContactCard, seal_prekey_blob
from securechan.protocol.prekeys import CONTEXT_PREKEY, KIND_SIGNED, Prekey
from securechan.protocol.ratchet import RatchetHeader
from tests.adversary import RelayProcess, audit_rejections, b64e, running_relay, session_states
from tests.adversary.parties import Party, transcript
from tests.adversary.world import PASSPHRASES, World, world_of
from tests.conftest import fixed_identity
from tests.ndjson import ndjson

pytestmark = pytest.mark.timeout(240)

P = 2**255 - 19
# libsodium's X25519 blocklist (crypto_scalarmult/curve25519/ref10/x25519_ref10.c,
# ``has_small_order``), written out independently of primitives.py.
LIBSODIUM_BLOCKLIST = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]
# The same points with the (ignored, RFC 7748 §5) top bit set.
LOW_ORDER_X25519 = LIBSODIUM_BLOCKLIST + [
    k[:31] + bytes([k[31] | 0x80]) for k in LIBSODIUM_BLOCKLIST
]
# Small-order or non-canonical Ed25519 encodings (RFC 8032 §5.1.3 decoding).
BAD_ED25519 = [
    bytes([1]) + bytes(31),  # the neutral element
    bytes(32),  # order 4
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # y = -1
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # y = p
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
]
KEM = MlKemKeyPair(bytes(range(64)))
NOW = 1_767_225_600


def _set_coefficient(ek: bytes, index: int, value: int) -> bytes:
    """An ML-KEM encapsulation key with 12-bit coefficient ``index`` set
    (FIPS 203 ByteEncode_12: two coefficients per three bytes, little-endian)."""
    b = bytearray(ek)
    t = index // 2 * 3
    if index % 2 == 0:
        b[t] = value & 0xFF
        b[t + 1] = (b[t + 1] & 0xF0) | (value >> 8)
    else:
        b[t + 1] = (b[t + 1] & 0x0F) | ((value & 0x0F) << 4)
        b[t + 2] = value >> 4
    return bytes(b)


# --- the checks in primitives --------------------------------------------------------


@pytest.mark.parametrize("point", LOW_ORDER_X25519, ids=lambda k: k.hex()[:8] + k.hex()[-2:])
def test_low_order_x25519_keys_are_refused(point: bytes) -> None:
    # Each one really is low order: X25519 with it is all zeros (OpenSSL refuses).
    with pytest.raises(ValueError):  # noqa: PT011 - OpenSSL's all-zero refusal has no type
        _x25519.X25519PrivateKey.generate().exchange(
            _x25519.X25519PublicKey.from_public_bytes(point)
        )
    with pytest.raises(MalformedInput):
        check_x25519_public_key(point)
    with pytest.raises(MalformedInput):
        check_hybrid_kem_public_key(KEM.public + point)
    with pytest.raises(MalformedInput):  # before the fix: ValueError from HPKE
        hpke_seal(KEM.public + point, b"seed", info=b"securechan/v1/test")
    with pytest.raises(MalformedInput):
        X25519KeyPair.generate().exchange(point)


def test_hpke_open_refuses_a_low_order_ephemeral() -> None:
    """The first message's HPKE enc carries the initiator's ephemeral X25519
    key: a low-order one is the same opaque VerificationFailed as any forgery."""
    pair = HybridKemKeyPair.generate()
    sealed = hpke_seal(pair.public, b"seed", info=b"securechan/v1/test")
    assert pair.hpke_open(sealed, info=b"securechan/v1/test") == b"seed"
    for point in LOW_ORDER_X25519:
        bad = sealed[:1088] + point + sealed[1120:]
        with pytest.raises(VerificationFailed, match="HPKE decryption failed"):
            pair.hpke_open(bad, info=b"securechan/v1/test")


def test_valid_x25519_keys_pass() -> None:
    for _ in range(200):
        check_x25519_public_key(X25519KeyPair.generate().public)
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(MalformedInput):
            check_x25519_public_key(bad)


@pytest.mark.parametrize("index", [0, 1, 255, 256, 511, 766, 767])
def test_mlkem_modulus_check(index: int) -> None:
    """FIPS 203 §7.2: every coefficient of the encoded vector is below q."""
    check_mlkem768_public_key(_set_coefficient(KEM.public, index, 3328))
    for value in (3329, 4095):
        bad = _set_coefficient(KEM.public, index, value)
        with pytest.raises(MalformedInput, match="modulus"):
            check_mlkem768_public_key(bad)
        with pytest.raises(MalformedInput):
            check_hybrid_kem_public_key(bad + X25519KeyPair.generate().public)


def test_mlkem_length_check() -> None:
    for n in (0, MLKEM768_PUBLIC_KEY_SIZE - 1, MLKEM768_PUBLIC_KEY_SIZE + 1):
        with pytest.raises(MalformedInput):
            check_mlkem768_public_key(
                KEM.public[:n] if n <= len(KEM.public) else KEM.public + b"\0"
            )
    with pytest.raises(MalformedInput):
        check_hybrid_kem_public_key(bytes(HYBRID_KEM_PUBLIC_KEY_SIZE - 1))


@pytest.mark.parametrize("point", BAD_ED25519, ids=lambda k: k.hex()[:8])
def test_bad_ed25519_keys_are_refused(point: bytes) -> None:
    with pytest.raises(MalformedInput):
        check_ed25519_public_key(point)
    mldsa = bytes(fixed_identity("alice").public.public_key)[:MLDSA65_PUBLIC_KEY_SIZE]
    with pytest.raises(MalformedInput):
        HybridVerifyKey(mldsa + point)


def test_valid_ed25519_keys_pass() -> None:
    for _ in range(50):
        check_ed25519_public_key(Ed25519SigningKey.generate().public)


# --- every parse site ----------------------------------------------------------------


def _prekey(
    owner: Identity, public_key: bytes, *, kind: int = KIND_SIGNED, now: int = NOW
) -> Prekey:
    """A prekey its owner really signed (a malicious contact can do this)."""
    unsigned = Prekey(
        owner=owner.fingerprint,
        kind=kind,
        prekey_id=7,
        public_key=public_key,
        created=now,
        expires=now + 86400,
        signature=b"",
    )
    return replace(unsigned, signature=owner.sign(unsigned.body_bytes(), context=CONTEXT_PREKEY))


def test_prekey_parse_site() -> None:
    bob = fixed_identity("bob")
    good = HybridKemKeyPair.generate().public
    Prekey.from_bytes(_prekey(bob, good).to_bytes()).verify(bob.public, kind=KIND_SIGNED, now=NOW)
    for bad in [
        good[:MLKEM768_PUBLIC_KEY_SIZE] + LIBSODIUM_BLOCKLIST[2],
        good[:MLKEM768_PUBLIC_KEY_SIZE] + bytes(32),
        _set_coefficient(good[:MLKEM768_PUBLIC_KEY_SIZE], 100, 3329) + good[-32:],
    ]:
        with pytest.raises(BundleRejected, match="public key is invalid"):
            Prekey.from_bytes(_prekey(bob, bad).to_bytes())


def test_ratchet_header_parse_site() -> None:
    fields = {
        "dh": X25519KeyPair.generate().public,
        "kem_pub": KEM.public,
        "root_ct": bytes(1088),
        "pn": 0,
        "n": 0,
        "epoch_ct": None,
        "guard": bytes(32),
    }
    RatchetHeader.from_bytes(wire.encode(ratchet_mod.HEADER, fields))
    for change in [
        *({"dh": p} for p in LOW_ORDER_X25519),
        {"kem_pub": _set_coefficient(KEM.public, 0, 3329)},
        {"kem_pub": _set_coefficient(KEM.public, 767, 4095)},
    ]:
        with pytest.raises(MalformedInput):
            RatchetHeader.from_bytes(wire.encode(ratchet_mod.HEADER, fields | change))


def test_identity_and_contact_card_parse_site() -> None:
    alice = fixed_identity("alice")
    raw = alice.public.to_bytes()
    ed = alice.public.public_key.ed25519_bytes
    assert raw.count(ed) == 1
    for point in BAD_ED25519:
        # Refused as a malformed key, before the self-signature is looked at.
        with pytest.raises(MalformedInput):
            PublicIdentity.from_bytes(raw.replace(ed, point))
    card = ContactCard.make(alice, (), now=NOW).to_bytes()
    assert card.count(ed) == 1
    with pytest.raises(MalformedInput):
        ContactCard.from_bytes(card.replace(ed, BAD_ED25519[0]))


def test_relay_and_witness_key_parse_site() -> None:
    key = Ed25519SigningKey.generate()
    good = VerifierKey(name="relay.example", sig_type=1, public_key=key.public)
    assert VerifierKey.from_text(good.to_text()) == good
    for point in BAD_ED25519:
        bad = VerifierKey(name="relay.example", sig_type=1, public_key=point)
        with pytest.raises(MalformedInput):
            VerifierKey.from_text(bad.to_text())


# --- end to end: a low-order signed prekey served by a relay --------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay")) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pristine")


def _hostile_bundle(sender: Party, owner: Party, public_key: bytes, *, sign: bool = True) -> bytes:
    """The bundle answer a relay (or the owner) serves: ``public_key`` in a
    signed prekey of ``owner``, sealed with the address key of its card."""
    card = ContactCard.from_bytes(sender.keystore.contacts.get(owner.name).card or b"")
    record = _prekey(owner.identity, public_key, now=int(time.time()))
    if not sign:
        record = replace(record, signature=bytes(len(record.signature)))
    blob = seal_prekey_blob(card.addresses[0].key, record.to_bytes())
    return json.dumps({"signed": b64e(blob), "one_time": None}).encode()


def test_low_order_signed_prekey_is_one_line_not_a_traceback(
    relay: RelayProcess, pristine: Path, tmp_path: Path
) -> None:
    """Issue 11, "peer keys": washington signs a prekey whose X25519 half is a
    low-order point and its relay serves it. Before the fix the bundle
    verified and ``send`` died in HPKE with a ValueError traceback
    (``Party.run`` fails on any traceback); now the prekey is refused when it
    is parsed: exit 1, one line, nothing sent, the state unchanged, the
    refusal in the audit log."""
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as world:
        world.introduce("tehran", "washington", hello=False)
        t, w, fw = world.t, world.w, world.front["washington"]
        good = HybridKemKeyPair.generate().public
        answer = _hostile_bundle(t, w, good[:MLKEM768_PUBLIC_KEY_SIZE] + LIBSODIUM_BLOCKLIST[2])
        fw.on_response("bundle", lambda x, status, body: (200, answer))
        before, rejections = session_states(t.home), len(audit_rejections(t.home))
        proc = t.run("send", "washington", "Tehran: for washington's eyes")
        assert proc.returncode == 1, transcript(proc)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("securechan: "), transcript(proc)
        assert "bundle" in lines[0] and "public key is invalid" in lines[0], transcript(proc)
        assert proc.stdout == ""
        assert session_states(t.home) == before
        assert [r["reason"] for r in audit_rejections(t.home)[rejections:]] == ["bundle-rejected"]
        assert [x for x in fw.sent() if x.status < 300] == []
        # The honest bundle still works.
        fw.reset()
        t.ok("send", "washington", "Tehran: for washington's eyes")


# --- a property test over the CLI ------------------------------------------------------

DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5}  # docs/CLI.md; 70 (internal error) is a bug here
_BLOCK = re.compile(
    r"-----BEGIN SECURECHAN ([A-Z ]+)-----\n(.*?)\n-----END SECURECHAN \1-----\n?", re.S
)
NASTY_KEYS = [*LIBSODIUM_BLOCKLIST, *BAD_ED25519, b"\xff" * 32]


@dataclass
class Files:
    """Real files made by real parties, to mutate."""

    identity_file: str  # washington's `id export`: public identity + contact card
    statement: str  # tehran's statement of one message
    washington_ed25519: bytes
    home: Path  # cairo's home, for `contact add`
    world: World


@pytest.fixture(scope="module")
def files(
    relay: RelayProcess, pristine: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Files]:
    root = tmp_path_factory.mktemp("fuzz")
    with world_of(relay, pristine, root, ["tehran", "washington", "cairo"]) as world:
        world.introduce("tehran", "washington", hello=True)
        world.introduce("cairo", "washington", hello=False)
        t, w = world.t, world.w
        t.ok("send", "washington", "Tehran: the ceasefire holds")
        w.ok("receive")
        rows = ndjson(t.ok("history", "washington", "--json"))
        mid = next(r["id"] for r in rows if "ceasefire" in str(r.get("summary", "")))
        path = root / "one.statement"
        t.ok("statement", "export", mid, "-o", path)
        home = root / "adder"
        shutil.copytree(pristine / "cairo", home)
        yield Files(
            identity_file=w.ok("id", "export"),
            statement=path.read_text(),
            washington_ed25519=w.identity.public.public_key.ed25519_bytes,
            home=home,
            world=world,
        )


def _mutate_block(text: str, block: int, change: st.DataObject, targets: list[bytes]) -> str:
    """Decode one armoured block, change its bytes, armour it again."""
    blocks = list(_BLOCK.finditer(text))
    m = blocks[block % len(blocks)]
    lines = m.group(2).split("\n")
    blank = lines.index("")
    headers, body = lines[:blank], base64.b64decode("".join(lines[blank + 1 :]))
    how = change.draw(st.sampled_from(["flip", "truncate", "insert", "key", "target"]))
    pos = change.draw(st.integers(0, max(len(body) - 1, 0)))
    if how == "flip":
        body = body[:pos] + bytes([body[pos] ^ change.draw(st.integers(1, 255))]) + body[pos + 1 :]
    elif how == "truncate":
        body = body[:pos]
    elif how == "insert":
        body = body[:pos] + change.draw(st.binary(min_size=1, max_size=40)) + body[pos:]
    elif how == "key":
        body = body[:pos] + change.draw(st.sampled_from(NASTY_KEYS)) + body[pos + 32 :]
    else:  # a real key in the file replaced by a small-order or non-canonical one
        target = change.draw(st.sampled_from(targets))
        body = body.replace(target, change.draw(st.sampled_from(NASTY_KEYS)))
    encoded = base64.b64encode(body).decode()
    rows = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    label = m.group(1)
    new = "\n".join(
        [
            f"-----BEGIN SECURECHAN {label}-----",
            *headers,
            "",
            *rows,
            f"-----END SECURECHAN {label}-----",
        ]
    )
    return text[: m.start()] + new + "\n" + text[m.end() :]


def _check_contract(result: Result, args: list[str]) -> None:
    where = f"securechan {' '.join(args)}\nexit {result.exit_code}\n{result.stderr}"
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"{where}\nescaped: {exc!r}"
    assert "Traceback" not in result.stderr + result.stdout, where
    assert result.exit_code in DOCUMENTED_EXIT_CODES, where
    if result.exit_code != 0:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("securechan: "), where


def _cli(args: list[str], passphrase: str | None = None) -> Result:
    env = {"SECURECHAN_HOME": None, "SECURECHAN_PASSPHRASE": passphrase}
    result = CliRunner().invoke(cli, args, env=env)
    _check_contract(result, args)
    return result


FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(block=st.integers(0, 1), change=st.data())
def test_cli_contact_add_hostile_files(files: Files, block: int, change: st.DataObject) -> None:
    hostile = _mutate_block(files.identity_file, block, change, [files.washington_ed25519])
    path = files.home.parent / "hostile.id"
    path.write_text(hostile, encoding="utf-8")
    _cli(["--home", str(files.home), "contact", "add", "--name", "probe", str(path)])


@FUZZ
@given(change=st.data())
def test_cli_statement_verify_hostile_files(files: Files, change: st.DataObject) -> None:
    hostile = _mutate_block(files.statement, 0, change, [files.washington_ed25519])
    path = files.home.parent / "hostile.statement"
    path.write_text(hostile, encoding="utf-8")
    nobody = files.home.parent / "nobody"
    _cli(["--home", str(nobody), "statement", "verify", str(path)])


def _bundle_variants() -> st.SearchStrategy[tuple[str, int, bool]]:
    return st.tuples(
        st.sampled_from(["low-order", "modulus", "random", "json"]),
        st.integers(0, 10**6),
        st.booleans(),
    )


@settings(FUZZ, max_examples=8)
@given(variant=_bundle_variants())
@example(variant=("low-order", 2, True))
def test_cli_send_hostile_bundles(files: Files, variant: tuple[str, int, bool]) -> None:
    """cairo sends to washington for the first time; washington's relay front
    serves a hostile bundle. Fails on the old code (the low-order example:
    a ValueError traceback from HPKE)."""
    kind, n, sign = variant
    world = files.world
    c, w, fw = world.c, world.w, world.front["washington"]
    good = HybridKemKeyPair.generate().public
    if kind == "low-order":
        key = good[:MLKEM768_PUBLIC_KEY_SIZE] + LOW_ORDER_X25519[n % len(LOW_ORDER_X25519)]
    elif kind == "modulus":
        key = (
            _set_coefficient(good[:MLKEM768_PUBLIC_KEY_SIZE], n % 768, 3329 + n % 767) + good[-32:]
        )
    else:
        key = bytes((n * 7 + i * 13) % 256 for i in range(HYBRID_KEM_PUBLIC_KEY_SIZE))
    if kind == "json":
        answers = [
            b"[]",
            b'{"signed": 5}',
            b'{"signed": "%%%"}',
            b"\xff\xfe",
            b'{"one_time": null}',
        ]
        answer = answers[n % len(answers)]
    else:
        answer = _hostile_bundle(c, w, key, sign=sign)
    fw.on_response("bundle", lambda x, status, body: (200, answer))
    try:
        before = session_states(c.home)
        result = _cli(
            ["--home", str(c.home), "send", "washington", "Cairo: hello"], PASSPHRASES["cairo"]
        )
        assert result.exit_code != 0
        assert session_states(c.home) == before
    finally:
        fw.on_response("bundle", None)


def test_verification_errors_keep_their_family() -> None:
    # BundleRejected stays a verification failure (exit 1 in docs/CLI.md).
    assert issubclass(BundleRejected, VerificationFailed)


def test_cli_last_safety_net(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An exception outside the error tree (a bug) is one line and exit 70,
    naming only its type: its text may hold peer bytes or secrets."""
    import securechan

    def broken(text: str) -> PublicIdentity:
        raise RuntimeError("peer-controlled \x1b]52;c;text and a secret")

    monkeypatch.setattr(securechan.PublicIdentity, "from_text", broken)
    path = tmp_path / "x.id"
    path.write_text("anything")
    args = ["--home", str(tmp_path / "home"), "contact", "add", str(path)]
    result = CliRunner().invoke(cli, args, env={"SECURECHAN_DEBUG": None})
    assert result.exit_code == 70, result.stderr
    assert result.stderr.splitlines() == [
        "securechan: internal error (RuntimeError); please report it "
        "(SECURECHAN_DEBUG=1 shows the traceback)"
    ]
    debug = CliRunner().invoke(cli, args, env={"SECURECHAN_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)
