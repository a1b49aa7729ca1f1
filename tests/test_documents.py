"""Detached document signatures (securechan.documents)."""

from __future__ import annotations

import base64
import io
import os

import pytest

from securechan.documents import (
    CONTEXT_DOCUMENT,
    DocumentSignature,
    DocumentStatement,
    sign_document,
    verify_document,
)
from securechan.errors import BadSignature, MalformedInput, UnsupportedVersion
from securechan.identity import Identity
from securechan.identity.keys import CONTEXT_IDENTITY_SELF
from tests.conftest import NOW, fixed_identity

DOC = b"Minutes of the meeting of 26 November.\nPresent: both delegations.\n"


@pytest.fixture(scope="module")
def signer() -> Identity:
    return fixed_identity("tehran")


@pytest.fixture(scope="module")
def sig(signer: Identity) -> DocumentSignature:
    return sign_document(signer, io.BytesIO(DOC), now=NOW, comment="minutes, final")


def test_sign_and_verify(signer: Identity, sig: DocumentSignature) -> None:
    st = verify_document(signer.public, io.BytesIO(DOC), sig)
    assert (st.signer_name, st.size, st.created, st.comment) == (
        "tehran",
        len(DOC),
        NOW,
        "minutes, final",
    )
    again = DocumentSignature.from_text_unverified(sig.to_text())
    assert again == sig
    verify_document(signer.public, io.BytesIO(DOC), again)


@pytest.mark.parametrize(
    "doc",
    [DOC[:-1], DOC + b"\n", b"", DOC.replace(b"26", b"27"), b"X" + DOC[1:]],
    ids=["truncated", "appended", "empty", "edited", "first-byte"],
)
def test_changed_document_is_refused(signer: Identity, sig: DocumentSignature, doc: bytes) -> None:
    with pytest.raises(BadSignature, match="does not match"):
        verify_document(signer.public, io.BytesIO(doc), sig)


def test_other_signer_is_refused(sig: DocumentSignature) -> None:
    other = fixed_identity("washington")
    with pytest.raises(BadSignature, match="not by the expected"):
        verify_document(other.public, io.BytesIO(DOC), sig)


def test_statement_fields_are_covered(signer: Identity, sig: DocumentSignature) -> None:
    st = sig.statement
    for field, value in (
        ("size", st.size + 1),
        ("created", NOW + 1),
        ("comment", "minutes, draft"),
        ("signer_name", "washington"),
        ("sha512", bytes(64)),
        ("comment", None),
    ):
        kwargs = {
            "signer_name": st.signer_name,
            "signer_fingerprint": st.signer_fingerprint,
            "created": st.created,
            "size": st.size,
            "sha512": st.sha512,
            "comment": st.comment,
        }
        kwargs[field] = value
        forged = DocumentSignature(statement=DocumentStatement(**kwargs), signature=sig.signature)  # type: ignore[arg-type]
        with pytest.raises(BadSignature):
            verify_document(signer.public, io.BytesIO(DOC), forged)


def test_every_byte_change_of_the_signature_record_is_refused(
    signer: Identity, sig: DocumentSignature
) -> None:
    raw = sig.to_bytes()
    positions = list(range(0, 400)) + list(range(400, len(raw), 5))
    for i in positions:
        bad = bytearray(raw)
        bad[i] ^= 0x02
        try:
            parsed = DocumentSignature.from_bytes_unverified(bytes(bad))
        except MalformedInput:
            continue
        with pytest.raises(BadSignature):
            verify_document(signer.public, io.BytesIO(DOC), parsed)


def test_readable_headers_must_match(sig: DocumentSignature) -> None:
    text = sig.to_text()
    for old, new in (
        ("Comment: minutes, final", "Comment: minutes, draft"),
        ("Signer: tehran", "Signer: washington"),
        ("Created: ", "Created: 1"),
    ):
        with pytest.raises(MalformedInput, match="header"):
            DocumentSignature.from_text_unverified(text.replace(old, new))
    with pytest.raises(UnsupportedVersion):
        DocumentSignature.from_text_unverified(text.replace("Version: 1", "Version: 3"))
    # Headers are optional copies: dropping one is harmless.
    without = "\n".join(line for line in text.split("\n") if not line.startswith("Comment:"))
    assert DocumentSignature.from_text_unverified(without) == sig


def test_signature_is_bound_to_its_context(signer: Identity, sig: DocumentSignature) -> None:
    st_bytes = sig.statement.to_bytes()
    signer.public.verify(sig.signature, st_bytes, context=CONTEXT_DOCUMENT)
    with pytest.raises(BadSignature):
        signer.public.verify(sig.signature, st_bytes, context=CONTEXT_IDENTITY_SELF)
    # A self-signature over a claim cannot pose as a document signature.
    forged = DocumentSignature(statement=sig.statement, signature=signer.public.self_signature)
    with pytest.raises(BadSignature):
        verify_document(signer.public, io.BytesIO(DOC), forged)


@pytest.mark.parametrize("comment", ["", " padded", "two\nlines", "x" * 1025, "tab\there"])
def test_bad_comments(signer: Identity, comment: str) -> None:
    with pytest.raises(MalformedInput, match="comment"):
        sign_document(signer, io.BytesIO(DOC), now=NOW, comment=comment)


def test_large_document_streams(signer: Identity, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "big.bin")
    with open(path, "wb") as f:
        for i in range(20):
            f.write(bytes([i]) * (1024 * 1024))
    seen: list[int] = []
    with open(path, "rb") as f:
        s = sign_document(signer, f, now=NOW, progress=seen.append)
    assert sum(seen) == 20 * 1024 * 1024 and len(seen) == 20
    with open(path, "rb") as f:
        verify_document(signer.public, f, s)
    with open(path, "r+b") as f:
        f.seek(15 * 1024 * 1024 + 7)
        f.write(b"\xff")
    with open(path, "rb") as f, pytest.raises(BadSignature):
        verify_document(signer.public, f, s)


def test_time_beyond_year_9999_is_malformed(signer: Identity, sig: DocumentSignature) -> None:
    st = sig.statement
    far = DocumentStatement(
        signer_name=st.signer_name,
        signer_fingerprint=st.signer_fingerprint,
        created=2**63,
        size=st.size,
        sha512=st.sha512,
    )
    raw = DocumentSignature(statement=far, signature=sig.signature).to_bytes()
    with pytest.raises(MalformedInput, match="9999"):
        DocumentSignature.from_bytes_unverified(raw)
    assert base64.b64encode(raw)  # the record itself encodes fine
