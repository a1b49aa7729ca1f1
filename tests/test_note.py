"""C2SP signed notes, checkpoints and cosignatures: published vectors, an
independent parser written from the C2SP text, byte-level tampering, fuzzing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.audit.checkpoint import (
    Checkpoint,
    add_cosignature,
    cosign_checkpoint,
    open_checkpoint,
    open_cosigned_checkpoint,
    sign_checkpoint,
)
from securechan.audit.merkle import EMPTY_ROOT, leaf_hash
from securechan.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    NoteSignature,
    NoteSigner,
    SignedNote,
    VerifierKey,
    add_signatures,
    keep_signatures,
    open_note,
    sign_note,
)
from securechan.errors import (
    BadSignature,
    MalformedInput,
    SecurechanError,
    VerificationFailed,
)
from securechan.primitives import Ed25519SigningKey

# --- vectors ---------------------------------------------------------------------
# Source: golang.org/x/mod/sumdb/note, note.go (package doc) and note_test.go
# (TestNewVerifier, TestSign, TestOpen): the signed-note format C2SP
# standardised. Ed25519 is deterministic, so signing must give these bytes.

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_B64 = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)
PETER_SIG = f"— PeterNeumann {PETER_B64}\n"
ENOCH_SIG = (
    "— EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# Source: transparency-dev/formats, note/note_cosigv1_test.go
# (TestCoSigV1NewVerifier, TestCosignatureTimestamp): a native type-0x04
# cosigner key, a type-0x01 key whose base64 holds a "+", and a cosignature
# whose timestamp is 1727964367.
COSIGNER_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
PLUS_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
COSIG_B64 = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gx"
    "EHWWOworDcFiEBYJXORmnFBOBA=="
)

# Source: c2sp.org/tlog-cosignature, the example checkpoint with a
# cosignature, and its example signed message ("time 1679315147").
C2SP_COSIGNED = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "— example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— witness.example.com/w1 "
    "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+"
    "mbIUBkBIfZ+qnA==\n"
)

# Test keys, derived from public strings (PUBLIC TEST DATA).
LOG_NAME = "relay.example/log"
LOG_KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test log key").digest())
WITNESS_NAME = "witness.example/w1"
WITNESS_KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test witness key").digest())
OTHER_KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test other key").digest())
LOG_VKEY = VerifierKey(name=LOG_NAME, sig_type=SIG_ED25519, public_key=LOG_KEY.public)
WITNESS_VKEY = VerifierKey(
    name=WITNESS_NAME, sig_type=SIG_COSIGNATURE_V1, public_key=WITNESS_KEY.public
)
NOW = 1_790_000_000

CHECKPOINT = Checkpoint(origin=LOG_NAME, size=20852163, root_hash=leaf_hash(b"some root"))


def test_go_note_vectors() -> None:
    signer = NoteSigner.from_text_secret(PETER_SKEY)
    assert signer.verifier == VerifierKey.from_text(PETER_VKEY)
    assert signer.verifier.to_text() == PETER_VKEY
    assert signer.to_text_secret() == PETER_SKEY
    assert signer.verifier.key_id.hex() == "c74f20a3"
    assert sign_note(TEXT, [signer]) == TEXT + "\n" + PETER_SIG

    peter, enoch = VerifierKey.from_text(PETER_VKEY), VerifierKey.from_text(ENOCH_VKEY)
    msg = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    opened = open_note(msg, [peter])
    assert opened.text == TEXT
    assert [v.key for v in opened.verified] == [peter]
    assert [s.name for s in opened.unverified] == ["EnochRoot"]
    opened = open_note(msg.encode(), [peter, enoch])
    assert [v.key for v in opened.verified] == [peter, enoch]
    assert opened.unverified == ()
    with pytest.raises(BadSignature):
        open_note(msg, [])
    with pytest.raises(ValueError, match="same name"):
        open_note(msg, [peter, peter])
    # A known key's bad signature rejects the whole note.
    with pytest.raises(BadSignature):
        open_note(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], [peter])
    # TestOpen's malformed messages, and a repeated signature (we refuse it).
    for bad in (
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "— Bad Name " + PETER_B64,
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG + PETER_SIG,
    ):
        with pytest.raises(MalformedInput):
            open_note(bad, [peter])
    with pytest.raises(MalformedInput):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [peter])
    with pytest.raises(MalformedInput):  # 101 signatures
        SignedNote.from_text_unverified(
            TEXT + "\n" + "".join(f"— k{i} AAAAAAA=\n" for i in range(101))
        )


def test_go_verifier_key_manglings_are_refused() -> None:
    """TestNewVerifier: every proper substring and every incremented byte fails."""
    b = PETER_VKEY.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(MalformedInput):
                    VerifierKey.from_text(b[i:j].decode())
    for i in range(len(b)):
        mangled = b[:i] + bytes([b[i] + 1]) + b[i + 1 :]
        with pytest.raises(MalformedInput):
            VerifierKey.from_text(mangled.decode())
    for bad in (
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case ID
    ):
        with pytest.raises(MalformedInput):
            VerifierKey.from_text(bad)


def test_go_signer_key_manglings_are_refused() -> None:
    b = PETER_SKEY.encode()
    for i in range(len(b)):
        mangled = b[:i] + bytes([b[i] + 1]) + b[i + 1 :]
        with pytest.raises(MalformedInput):
            NoteSigner.from_text_secret(mangled.decode())
    for cut in range(len(b)):
        with pytest.raises(MalformedInput):
            NoteSigner.from_text_secret(b[:cut].decode())


def test_cosigner_and_plus_keys_from_transparency_dev() -> None:
    cosigner = VerifierKey.from_text(COSIGNER_VKEY)
    assert cosigner.sig_type == SIG_COSIGNATURE_V1
    assert cosigner.key_id.hex() == "da77ade7"
    assert cosigner.to_text() == COSIGNER_VKEY
    plus = VerifierKey.from_text(PLUS_VKEY)
    assert (plus.name, plus.sig_type, plus.to_text()) == ("TEST", SIG_ED25519, PLUS_VKEY)
    raw = base64.b64decode(COSIG_B64)
    assert struct.unpack(">Q", raw[4:12]) == (1727964367,)


def test_c2sp_cosigned_example_parses() -> None:
    note = SignedNote.from_text_unverified(C2SP_COSIGNED)
    assert Checkpoint.from_text(note.text) == Checkpoint(
        origin="example.com/behind-the-sofa",
        size=20852163,
        root_hash=base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    log_sig, cosig = note.signatures
    assert log_sig.name == "example.com/behind-the-sofa" and len(log_sig.signature) == 64
    assert cosig.name == "witness.example.com/w1" and len(cosig.signature) == 72
    assert struct.unpack(">Q", cosig.signature[:8]) == (1679315147,)
    assert note.to_text() == C2SP_COSIGNED


# --- an independent parser, written from the C2SP text only ------------------------


@dataclass
class IndependentCheckpoint:
    origin: str
    size: int
    root: bytes
    log_key_ok: bool
    cosignature_times: dict[str, int]


def independent_open(
    note: bytes, log: tuple[str, bytes], witnesses: dict[str, bytes]
) -> IndependentCheckpoint:
    """c2sp.org/signed-note, tlog-checkpoint and tlog-cosignature, from their text."""
    text = note.decode("utf-8")
    assert not any(ord(c) < 0x20 and c != "\n" for c in text)
    split = text.rindex("\n\n")  # "separated from the signatures by the last empty line"
    body, block = text[: split + 1], text[split + 2 :]
    assert block.endswith("\n")
    lines = body.split("\n")
    assert lines[-1] == ""
    origin, size, root = lines[0], lines[1], lines[2]
    assert re.fullmatch(r"0|[1-9][0-9]*", size)
    root_hash = base64.b64decode(root, validate=True)
    assert len(root_hash) == 32
    log_ok, times = False, {}
    for line in block[:-1].split("\n"):
        assert line.startswith("\u2014 ")
        name, b64 = line[2:].split(" ")
        raw = base64.b64decode(b64, validate=True)
        if name == log[0]:
            want_id = hashlib.sha256(name.encode() + b"\n" + b"\x01" + log[1]).digest()[:4]
            if raw[:4] == want_id:
                Ed25519PublicKey.from_public_bytes(log[1]).verify(raw[4:], body.encode())
                log_ok = True
        elif name in witnesses:
            pub = witnesses[name]
            want_id = hashlib.sha256(name.encode() + b"\n" + b"\x04" + pub).digest()[:4]
            if raw[:4] == want_id:
                assert len(raw) == 4 + 8 + 64
                timestamp = int.from_bytes(raw[4:12], "big")
                message = f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()
                Ed25519PublicKey.from_public_bytes(pub).verify(raw[12:], message)
                times[name] = timestamp
    return IndependentCheckpoint(origin, int(size), root_hash, log_ok, times)


def _signed() -> str:
    return sign_checkpoint(LOG_KEY, LOG_NAME, CHECKPOINT)


def _cosigned(timestamp: int = NOW) -> str:
    line = cosign_checkpoint(WITNESS_KEY, WITNESS_NAME, CHECKPOINT, timestamp=timestamp)
    return add_cosignature(_signed(), line, WITNESS_VKEY)


def test_independent_parser_agrees() -> None:
    note = _cosigned()
    got = independent_open(
        note.encode(), (LOG_NAME, LOG_KEY.public), {WITNESS_NAME: WITNESS_KEY.public}
    )
    assert got == IndependentCheckpoint(
        CHECKPOINT.origin, CHECKPOINT.size, CHECKPOINT.root_hash, True, {WITNESS_NAME: NOW}
    )
    assert open_checkpoint(note, LOG_VKEY) == CHECKPOINT
    # And our key IDs are the ones the C2SP formula gives.
    assert (
        LOG_VKEY.key_id
        == hashlib.sha256(LOG_NAME.encode() + b"\n\x01" + LOG_KEY.public).digest()[:4]
    )
    assert (
        WITNESS_VKEY.key_id
        == (hashlib.sha256(WITNESS_NAME.encode() + b"\n\x04" + WITNESS_KEY.public).digest()[:4])
    )
    # The independent parser rejects what ours rejects: a forged log signature.
    forged = note.replace(
        CHECKPOINT.to_text(), CHECKPOINT.to_text().replace("20852163", "20852164")
    )
    with pytest.raises(InvalidSignature):
        independent_open(forged.encode(), (LOG_NAME, LOG_KEY.public), {})
    with pytest.raises(BadSignature):
        open_checkpoint(forged, LOG_VKEY)


def test_checkpoint_text_round_trip_and_strictness() -> None:
    cp = Checkpoint(origin=LOG_NAME, size=5, root_hash=EMPTY_ROOT[::-1], extensions=("ext one",))
    assert Checkpoint.from_text(cp.to_text()) == cp
    assert Checkpoint.from_text(cp.to_text().encode()) == cp
    empty = Checkpoint(origin=LOG_NAME, size=0, root_hash=EMPTY_ROOT)
    assert empty.to_text() == f"{LOG_NAME}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    root = base64.b64encode(EMPTY_ROOT[::-1]).decode()
    good = f"{LOG_NAME}\n5\n{root}\n"
    # The same 32 bytes with a padding bit set in the last base64 symbol.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    loose = root[:-2] + alphabet[alphabet.index(root[-2]) | 1] + "="
    assert base64.b64decode(loose) == base64.b64decode(root)
    assert Checkpoint.from_text(good).size == 5
    bad = [
        good[:-1],  # no final newline
        f"{LOG_NAME}\n5\n",  # no root
        f"{LOG_NAME}\n05\n{root}\n",  # leading zero
        f"{LOG_NAME}\n+5\n{root}\n",
        f"{LOG_NAME}\n 5\n{root}\n",
        f"{LOG_NAME}\n1_0\n{root}\n",
        f"{LOG_NAME}\n\u0665\n{root}\n",  # a non-ASCII digit
        f"{LOG_NAME}\n{2**64}\n{root}\n",
        f"{LOG_NAME}\n5\n{loose}\n",  # non-canonical base64
        f"{LOG_NAME}\n5\n{base64.b64encode(bytes(31)).decode()}\n",
        f"{LOG_NAME}\n5\n{root}\n\n",  # empty extension line
        f"{LOG_NAME}\n0\n{root}\n",  # an empty tree with a non-empty root
        f"log name\n5\n{root}\n",  # origin with a space
        f"log+name\n5\n{root}\n",
        f"\n5\n{root}\n",
        f"{LOG_NAME}\n5\n{root}\n" + "x\n" * 17,  # too many extension lines
    ]
    for text in bad:
        with pytest.raises(MalformedInput):
            Checkpoint.from_text(text)
    with pytest.raises(MalformedInput):
        Checkpoint.from_text(b"\xff\n0\n")
    with pytest.raises(ValueError, match="empty tree"):
        Checkpoint(origin=LOG_NAME, size=0, root_hash=bytes(32))


def test_signed_checkpoint_round_trip() -> None:
    note = _signed()
    assert open_checkpoint(note, LOG_VKEY) == CHECKPOINT
    assert open_checkpoint(note.encode(), LOG_VKEY) == CHECKPOINT
    parsed = SignedNote.from_text_unverified(note)
    assert parsed.to_text() == note and parsed.text == CHECKPOINT.to_text()
    with pytest.raises(ValueError, match="origin"):
        sign_checkpoint(LOG_KEY, "other.example/log", CHECKPOINT)
    # A note whose key name is not the origin is refused even if it verifies.
    other = NoteSigner("other.example/log", LOG_KEY)
    note = sign_note(CHECKPOINT.to_text(), [other])
    with pytest.raises(VerificationFailed, match="origin"):
        open_checkpoint(note, other.verifier)
    # The right name with another key is an unknown key: no known signature.
    with pytest.raises(BadSignature):
        open_checkpoint(sign_checkpoint(OTHER_KEY, LOG_NAME, CHECKPOINT), LOG_VKEY)
    with pytest.raises(ValueError, match="0x01"):
        open_checkpoint(_signed(), WITNESS_VKEY)


def _refused(opener: Callable[[bytes], object], data: bytes) -> bool:
    try:
        opener(data)
    except SecurechanError:
        return True
    return False


def test_every_single_byte_change_of_a_signed_checkpoint_fails() -> None:
    for note, opener in (
        (_signed().encode(), lambda b: open_checkpoint(b, LOG_VKEY)),
        (
            _cosigned().encode(),
            lambda b: open_cosigned_checkpoint(b, LOG_VKEY, [WITNESS_VKEY], required=1),
        ),
    ):
        opener(note)
        for pos in range(len(note)):
            for mask in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF):
                changed = note[:pos] + bytes([note[pos] ^ mask]) + note[pos + 1 :]
                assert _refused(opener, changed), f"accepted byte {pos} xor {mask:#x}"


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 10_000), value=st.integers(0, 255), insert=st.booleans())
def test_any_byte_replaced_or_inserted_fails(pos: int, value: int, insert: bool) -> None:
    note = _cosigned().encode()
    pos %= len(note)
    if insert:
        changed = note[:pos] + bytes([value]) + note[pos:]
    else:
        if note[pos] == value:
            return
        changed = note[:pos] + bytes([value]) + note[pos + 1 :]
    with pytest.raises(SecurechanError):
        open_cosigned_checkpoint(changed, LOG_VKEY, [WITNESS_VKEY], required=1)


def test_cosignature_round_trip_and_refusals() -> None:
    note = _cosigned()
    got = open_cosigned_checkpoint(note, LOG_VKEY, [WITNESS_VKEY], required=1, now=NOW)
    assert got.checkpoint == CHECKPOINT
    assert [(c.cosigner, c.timestamp) for c in got.cosignatures] == [(WITNESS_VKEY, NOW)]
    # The log's own verification ignores the cosignature (an unknown key to it).
    assert open_checkpoint(note, LOG_VKEY) == CHECKPOINT
    # A fresh cosignature by the same witness replaces the old one.
    later = cosign_checkpoint(WITNESS_KEY, WITNESS_NAME, CHECKPOINT, timestamp=NOW + 60)
    renewed = add_cosignature(note, later, WITNESS_VKEY)
    assert len(SignedNote.from_text_unverified(renewed).signatures) == 2
    got = open_cosigned_checkpoint(renewed, LOG_VKEY, [WITNESS_VKEY], required=1)
    assert got.cosignatures[0].timestamp == NOW + 60

    line = cosign_checkpoint(WITNESS_KEY, WITNESS_NAME, CHECKPOINT, timestamp=NOW)
    sig = NoteSignature.from_line(line[:-1])
    # Wrong timestamp: the signed message names the time.
    moved = NoteSignature(
        name=sig.name, key_id=sig.key_id, signature=struct.pack(">Q", NOW + 1) + sig.signature[8:]
    )
    with pytest.raises(BadSignature):
        add_cosignature(_signed(), moved.to_line(), WITNESS_VKEY)
    with pytest.raises(BadSignature):
        open_cosigned_checkpoint(
            add_signatures(_signed(), [moved]), LOG_VKEY, [WITNESS_VKEY], required=1
        )
    # Wrong body: a cosignature of another checkpoint.
    other = Checkpoint(origin=LOG_NAME, size=CHECKPOINT.size + 1, root_hash=CHECKPOINT.root_hash)
    elsewhere = cosign_checkpoint(WITNESS_KEY, WITNESS_NAME, other, timestamp=NOW)
    with pytest.raises(BadSignature):
        add_cosignature(_signed(), elsewhere, WITNESS_VKEY)
    # Wrong key: another key under the witness's name has another key ID.
    impostor = cosign_checkpoint(OTHER_KEY, WITNESS_NAME, CHECKPOINT, timestamp=NOW)
    with pytest.raises(BadSignature, match="not by this cosigner"):
        add_cosignature(_signed(), impostor, WITNESS_VKEY)
    unknown = add_signatures(_signed(), [NoteSignature.from_line(impostor[:-1])])
    with pytest.raises(VerificationFailed, match="cosignatures"):
        open_cosigned_checkpoint(unknown, LOG_VKEY, [WITNESS_VKEY], required=1)
    # A plain (type 0x01) signature by the witness key is not a cosignature.
    plain = NoteSigner(WITNESS_NAME, WITNESS_KEY).sign(CHECKPOINT.to_text())
    with pytest.raises(BadSignature):
        add_cosignature(_signed(), plain.to_line(), WITNESS_VKEY)
    # A cosignature dated in the future is not counted.
    future = _cosigned(timestamp=NOW + 3600)
    with pytest.raises(VerificationFailed, match="cosignatures"):
        open_cosigned_checkpoint(future, LOG_VKEY, [WITNESS_VKEY], required=1, now=NOW)
    # Without the log's signature nothing counts.
    only_cosig = SignedNote(text=CHECKPOINT.to_text(), signatures=(sig,)).to_text()
    with pytest.raises(BadSignature):
        open_cosigned_checkpoint(only_cosig, LOG_VKEY, [WITNESS_VKEY], required=0)
    with pytest.raises(ValueError, match="0x04"):
        add_cosignature(_signed(), line, LOG_VKEY)


def test_signers_and_keys_refuse_misuse() -> None:
    cosigner = NoteSigner(WITNESS_NAME, WITNESS_KEY, sig_type=SIG_COSIGNATURE_V1)
    with pytest.raises(ValueError, match="timestamp"):
        cosigner.sign(TEXT)
    with pytest.raises(ValueError, match="timestamp"):
        cosigner.sign(TEXT, timestamp=2**63)
    with pytest.raises(ValueError, match="timestamp"):
        NoteSigner(LOG_NAME, LOG_KEY).sign(TEXT, timestamp=NOW)
    for text in ("no newline", "tab\there\n", "\ud800\n"):
        with pytest.raises(ValueError, match="note text"):
            NoteSigner(LOG_NAME, LOG_KEY).sign(text)
    for name in ("", "a b", "a+b", "a\u3000b", "a\nb", "x" * 256):
        with pytest.raises(ValueError, match="key name"):
            NoteSigner(name, LOG_KEY)
    with pytest.raises(ValueError, match="type"):
        VerifierKey(name=LOG_NAME, sig_type=2, public_key=LOG_KEY.public)
    assert "<secret>" in repr(cosigner)
    assert NoteSigner.from_text_secret(cosigner.to_text_secret()).verifier == cosigner.verifier


# --- fuzzing: only SecurechanError, never anything else -------------------------------

_note_like = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300),
    st.builds(
        lambda a, b: a + "\n\n— " + b + "\n",
        st.text(max_size=60),
        st.text(max_size=120),
    ),
    st.builds(
        lambda cut, junk: _cosigned()[:cut] + junk,
        st.integers(0, 400),
        st.text(max_size=30),
    ),
)


@settings(max_examples=400, deadline=None)
@given(data=_note_like)
def test_fuzz_note_parsers(data: bytes | str) -> None:
    for parse in (
        SignedNote.from_text_unverified,
        lambda d: open_note(d, [LOG_VKEY, WITNESS_VKEY]),
        lambda d: open_checkpoint(d, LOG_VKEY),
        lambda d: open_cosigned_checkpoint(d, LOG_VKEY, [WITNESS_VKEY], required=1),
        Checkpoint.from_text,
        lambda d: add_cosignature(_signed(), d if isinstance(d, str) else d.hex(), WITNESS_VKEY),
    ):
        with contextlib.suppress(SecurechanError):
            parse(data)


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(st.text(max_size=120), st.from_regex(r"[A-Za-z.+/=0-9]{0,80}", fullmatch=True))
)
def test_fuzz_key_parsers(text: str) -> None:
    for parse in (VerifierKey.from_text, NoteSigner.from_text_secret, NoteSignature.from_line):
        with contextlib.suppress(SecurechanError):
            parse(text)
        with contextlib.suppress(SecurechanError):
            parse("PRIVATE+KEY+" + text)


def test_two_of_two_cosigner_quorum() -> None:
    """The policy of issue 5: each delegation requires both delegations' cosignatures."""
    second_key = Ed25519SigningKey(hashlib.sha256(b"securechan test second witness").digest())
    second = VerifierKey(
        name="witness.example/w2", sig_type=SIG_COSIGNATURE_V1, public_key=second_key.public
    )
    one = _cosigned()
    with pytest.raises(VerificationFailed, match="cosignatures"):
        open_cosigned_checkpoint(one, LOG_VKEY, [WITNESS_VKEY, second], required=2)
    line = cosign_checkpoint(second_key, second.name, CHECKPOINT, timestamp=NOW + 1)
    both = add_cosignature(one, line, second)
    got = open_cosigned_checkpoint(both, LOG_VKEY, [WITNESS_VKEY, second], required=2)
    assert {(c.cosigner.name, c.timestamp) for c in got.cosignatures} == {
        (WITNESS_NAME, NOW),
        (second.name, NOW + 1),
    }
    with pytest.raises(ValueError, match="required"):
        open_cosigned_checkpoint(both, LOG_VKEY, [WITNESS_VKEY], required=2)


def test_keep_signatures_drops_other_lines_only() -> None:
    """keep_signatures: the lines of the keys named stay, in order, and still
    verify; the others go; none left is None."""
    a = NoteSigner("a.example/log", Ed25519SigningKey(bytes([1]) * 32))  # PUBLIC TEST DATA
    b = NoteSigner("b.example/w", Ed25519SigningKey(bytes([2]) * 32))
    c = NoteSigner("c.example/w", Ed25519SigningKey(bytes([3]) * 32))
    note = sign_note("a.example/log\n1\n" + "A" * 43 + "=\n", [a, b, c])
    kept = keep_signatures(note, [a.verifier, c.verifier])
    assert kept is not None
    parsed = SignedNote.from_text_unverified(kept)
    assert [s.name for s in parsed.signatures] == ["a.example/log", "c.example/w"]
    opened = open_note(kept, [a.verifier, b.verifier, c.verifier])
    assert {v.key.name for v in opened.verified} == {"a.example/log", "c.example/w"}
    assert (
        keep_signatures(note, [NoteSigner("d.example/x", Ed25519SigningKey(bytes(32))).verifier])
        is None
    )
