"""Identities, fingerprints and safety numbers (securechan.identity.keys, .safety)."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.documents import CONTEXT_DOCUMENT
from securechan.errors import BadSignature, MalformedInput, UnsupportedVersion, UsageError
from securechan.identity import Fingerprint, Identity, PublicIdentity, check_name, safety_number
from securechan.identity.keys import CONTEXT_IDENTITY_SELF
from tests.conftest import NOW, fixed_identity


@pytest.fixture(scope="module")
def alice() -> Identity:
    return fixed_identity("alice")


@pytest.fixture(scope="module")
def bob() -> Identity:
    return fixed_identity("bob")


def test_public_identity_roundtrips(alice: Identity) -> None:
    pub = alice.public
    assert PublicIdentity.from_bytes(pub.to_bytes()) == pub
    assert PublicIdentity.from_text(pub.to_text()) == pub
    text = pub.to_text()
    assert text.startswith("-----BEGIN SECURECHAN PUBLIC IDENTITY-----\nVersion: 1\nName: alice\n")
    assert f"Fingerprint: {pub.fingerprint}\n" in text


def test_pasted_from_an_email_still_reads(alice: Identity) -> None:
    text = "Dear colleague,\r\nhere is our key:\r\n\r\n" + alice.public.to_text().replace(
        "\n", "\r\n"
    )
    assert PublicIdentity.from_text(text + "\r\nRegards\r\n") == alice.public


def test_every_single_byte_change_of_a_public_identity_is_refused(alice: Identity) -> None:
    raw = alice.public.to_bytes()
    # A byte change anywhere (header, lengths, name, time, key, signature)
    # either fails to parse or fails the self-signature. Positions are visited
    # with a stride inside the long signature to keep the test quick.
    positions = list(range(0, 2200)) + list(range(2200, len(raw), 7))
    for i in positions:
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises((MalformedInput, BadSignature)):
            PublicIdentity.from_bytes(bytes(bad))


def test_name_header_must_match_the_signed_name(alice: Identity) -> None:
    text = alice.public.to_text().replace("Name: alice", "Name: mallory")
    with pytest.raises(MalformedInput, match="Name header"):
        PublicIdentity.from_text(text)
    other = fixed_identity("carol").fingerprint
    text = alice.public.to_text().replace(str(alice.fingerprint), str(other))
    with pytest.raises(MalformedInput, match="Fingerprint header"):
        PublicIdentity.from_text(text)


def test_a_name_cannot_be_moved_to_another_key(alice: Identity, bob: Identity) -> None:
    # Re-using alice's self-signature with bob's key, or a new name with
    # alice's key, fails: the claim (name, time, key) is what is signed.
    with pytest.raises(BadSignature):
        PublicIdentity(
            name="alice",
            created=NOW,
            public_key=bob.public.public_key,
            self_signature=alice.public.self_signature,
        )
    with pytest.raises(BadSignature):
        PublicIdentity(
            name="mallory",
            created=NOW,
            public_key=alice.public.public_key,
            self_signature=alice.public.self_signature,
        )
    with pytest.raises(BadSignature):
        PublicIdentity(
            name="alice",
            created=NOW + 1,
            public_key=alice.public.public_key,
            self_signature=alice.public.self_signature,
        )


def test_signatures_do_not_cross_contexts(alice: Identity) -> None:
    claim = alice.public._claim_bytes()
    doc_sig = alice.sign(claim, context=CONTEXT_DOCUMENT)
    with pytest.raises(BadSignature):
        PublicIdentity(
            name="alice", created=NOW, public_key=alice.public.public_key, self_signature=doc_sig
        )
    with pytest.raises(BadSignature):
        alice.public.verify(alice.public.self_signature, claim, context=CONTEXT_DOCUMENT)
    alice.public.verify(alice.public.self_signature, claim, context=CONTEXT_IDENTITY_SELF)


def test_fingerprint_depends_on_the_key_only(alice: Identity) -> None:
    renamed = Identity(name="alice-2", created=NOW + 5, key=alice._key)
    assert renamed.fingerprint == alice.fingerprint
    assert fixed_identity("bob").fingerprint != alice.fingerprint
    text = str(alice.fingerprint)
    assert re.fullmatch(r"([0-9A-F]{4} ){15}[0-9A-F]{4}", text)
    assert Fingerprint.parse(text) == alice.fingerprint
    assert Fingerprint.parse(text.replace(" ", "").lower()) == alice.fingerprint
    for bad in ("", "XYZ", text[:-1], text + "0"):
        with pytest.raises(MalformedInput):
            Fingerprint.parse(bad)


@pytest.mark.parametrize("name", ["tehran", "washington", "a", "A.b_c-9", "x" * 64, "0ops"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-lead",
        ".hidden",
        "_x",
        "x" * 65,
        "a b",
        "../etc",
        "a/b",
        "nul\x00",
        "tëhran",
        "téhran",
        "a\nb",
        "Ꭺpple",
        "x;rm",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(MalformedInput):
        check_name(name)
    with pytest.raises(MalformedInput):
        Identity.generate(name, now=NOW)


def test_secret_roundtrip_keeps_the_key(alice: Identity) -> None:
    back = Identity.from_secret_bytes(alice.secret_bytes())
    assert back.public == alice.public
    assert back.fingerprint == alice.fingerprint
    assert "alice" in repr(back) and alice._key.seed_bytes_secret()[0].hex() not in repr(back)


def test_wire_version_is_checked(alice: Identity) -> None:
    raw = bytearray(alice.public.to_bytes())
    raw[0] = 2
    with pytest.raises(UnsupportedVersion):
        PublicIdentity.from_bytes(bytes(raw))


# --- safety numbers -------------------------------------------------------


def test_safety_number_is_order_independent(alice: Identity, bob: Identity) -> None:
    ab = safety_number(alice.public, bob.public)
    ba = safety_number(bob.public, alice.public)
    assert ab == ba
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", str(ab))
    assert len(ab.words) == 28
    assert ab.words == ba.words
    assert safety_number(alice.fingerprint, bob.fingerprint) == ab


def test_safety_number_changes_with_either_key(alice: Identity, bob: Identity) -> None:
    carol = fixed_identity("carol")
    ab = safety_number(alice.public, bob.public)
    assert safety_number(alice.public, carol.public) != ab
    assert safety_number(carol.public, bob.public) != ab
    assert safety_number(alice.public, carol.public).words != ab.words


def _aligned_halves(words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    half = len(words) // 2
    return words[:half], words[half:]


def test_spoken_safety_number_encodes_each_party_separately(alice: Identity, bob: Identity) -> None:
    """Issue 11, finding 3: the spoken form must not be a collision target.

    A man-in-the-middle gives alice a key M_b and bob a key M_a and wins if the
    words alice hears for (alice, M_b) equal those bob hears for (M_a, bob).
    If the words are one short hash of *both* keys (the old 16-word form, a
    128-bit SHA-256 of the digits), M_a and M_b vary independently and a
    birthday collision (~2^64 per side) suffices. We cannot compute such a
    collision, so we test the property that rules it out: each party's key
    alone fixes a run of >= 100 bits of the words, whoever the other party is,
    and changing one party's key changes only that party's run. Then equal
    words for (A, M_b) and (M_a, B) force half(M_b) == half(B) and
    half(M_a) == half(A): two second preimages. On the old code the words of
    (alice, bob) and (alice, carol) share no such run, so this fails.
    """
    others = [bob] + [fixed_identity(n) for n in ("carol", "dave", "erin")]
    runs: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for other in others:
        words = safety_number(alice.public, other.public).words
        low, high = _aligned_halves(words)
        own = safety_number(other.public, alice.public).words
        assert own == words  # the same sequence on both sides
        runs.append((low, high))
    # alice's run: the half common to every pairing that includes her.
    common = set(runs[0]) & set(runs[1])
    assert len(common) == 1, "alice's words must appear as one whole half in every pairing"
    (alice_run,) = common
    for low, high in runs:
        assert alice_run in (low, high)
    # at least 100 bits that depend on alice's key alone (8 bits per PGP word)
    assert len(alice_run) * 8 >= 100
    # changing only the other party's key changes only the other party's half
    others_runs = [high if low == alice_run else low for low, high in runs]
    assert len(set(others_runs)) == len(others_runs)
    # and that half is the other party's own: the same with any partner
    for other, run in zip(others, others_runs, strict=True):
        seen = safety_number(other.public, fixed_identity("zed").public).words
        assert run in _aligned_halves(seen)


def test_safety_number_matching(alice: Identity, bob: Identity) -> None:
    sn = safety_number(alice.public, bob.public)
    assert sn.matches(str(sn))
    assert sn.matches(sn.digits)
    assert sn.matches("-".join(str(sn).split()))
    assert sn.matches(sn.words_text)
    assert sn.matches(" ".join(w.upper() for w in sn.words))
    wrong = str((int(sn.digits[-1]) + 1) % 10)
    assert not sn.matches(sn.digits[:-1] + wrong)
    swapped = list(sn.words)
    swapped[0], swapped[2] = swapped[2], swapped[0]
    assert not sn.matches(" ".join(swapped))
    old_form = " ".join(sn.words[:16])  # the pre-issue-11 length: refused, not compared
    # Typed by the user: a usage mistake, not a peer's malformed bytes.
    for junk in ("", "123", sn.digits + "1", "hello world", "aardvark " * 27, "12 ab", old_form):
        with pytest.raises(UsageError):
            sn.matches(junk)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_safety_number_matching_never_crashes(text: str) -> None:
    sn = safety_number(fixed_identity("alice").fingerprint, fixed_identity("bob").fingerprint)
    with contextlib.suppress(UsageError):
        assert sn.matches(text) is False
