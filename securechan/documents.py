"""Detached signatures for documents (communiqués, minutes, drafts).

A signature file (``FILE.sig``) is armoured text whose body is a
``DocumentSignature`` record: a signed ``DocumentStatement`` (the signer's
name and fingerprint, the signing time, the document's size and SHA-512, an
optional comment) and the composite signature over that statement, made
for the context ``securechan/v1/document``. As in minisign, the comment is
signed too ("trusted comment"), so nobody can change it unnoticed.

The document is hashed in chunks, so files of any size are signed and
verified in constant memory. ``docs/PROTOCOL.md`` §8 is the normative text.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, BinaryIO, Self

from securechan import armor, wire
from securechan.errors import BadSignature, MalformedInput
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity, check_name
from securechan.primitives import HYBRID_SIGNATURE_SIZE, constant_time_equal, sha512_hasher

__all__ = [
    "CONTEXT_DOCUMENT",
    "DocumentSignature",
    "DocumentStatement",
    "hash_document",
    "sign_document",
    "verify_document",
]

CONTEXT_DOCUMENT = b"securechan/v1/document"
_CHUNK = 1024 * 1024
_ARMOR_LABEL = "SIGNATURE"
_ARMOR_HEADERS = frozenset({"Signer", "Fingerprint", "Created", "Comment"})
COMMENT_MAX = 1024
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last time a header can show

Progress = Callable[[int], None]


def _check_comment(comment: str | None) -> None:
    if comment is not None and (
        not comment
        or len(comment) > COMMENT_MAX
        or not comment.isprintable()
        or comment != comment.strip()
    ):
        raise MalformedInput(
            "a comment is 1..1024 printable characters on one line, without outer blanks"
        )


@wire.record(0x0030, "DocumentStatement")
@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentStatement(wire.Record):
    """What a document signature asserts."""

    signer_name: Annotated[str, wire.text(1, max_len=64)]
    signer_fingerprint: Annotated[Fingerprint, wire.bytes_(2, size=32)]
    created: Annotated[int, wire.uint(3)]
    size: Annotated[int, wire.uint(4)]
    sha512: Annotated[bytes, wire.bytes_(5, size=64)]
    comment: Annotated[str | None, wire.text(6, max_len=COMMENT_MAX)] = None

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode strictly; raise :class:`MalformedInput`."""
        st = wire.decode_record(cls, data)
        _check_comment(st.comment)
        if st.created > MAX_TIME:
            raise MalformedInput("the signing time is after the year 9999")
        check_name(st.signer_name)
        return st


DOCUMENT_STATEMENT = wire.schema_of(DocumentStatement)


@wire.record(0x0031, "DocumentSignature")
@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentSignature:
    """A statement and the signer's composite signature over it.

    Parsing does not verify; :func:`verify_document` does. (Hence no
    ``from_bytes``: the decoder says in its name that it does not verify.)
    """

    statement: Annotated[DocumentStatement, wire.nested(1, max_len=2048)]
    signature: Annotated[bytes, wire.bytes_(2, size=HYBRID_SIGNATURE_SIZE)]

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0031)."""
        return wire.encode_record(self)

    @classmethod
    def from_bytes_unverified(cls, data: bytes) -> DocumentSignature:
        """Decode strictly, without checking the signature."""
        return wire.decode_record(cls, data)

    def to_text(self) -> str:
        """The ``.sig`` file's text."""
        return armor.armor(_ARMOR_LABEL, self.to_bytes(), _headers(self.statement))

    @classmethod
    def from_text_unverified(cls, text: str) -> DocumentSignature:
        """Parse a ``.sig`` file without checking the signature.

        The readable headers must agree with the signed statement.
        """
        block = armor.dearmor(text, _ARMOR_LABEL, allowed_headers=_ARMOR_HEADERS)
        sig = cls.from_bytes_unverified(block.body)
        expected = dict(_headers(sig.statement))
        for name, value in block.headers.items():
            if expected.get(name) != value:
                raise MalformedInput(f"the {name} header does not match the signed statement")
        return sig


DOCUMENT_SIGNATURE = wire.schema_of(DocumentSignature)


def _headers(st: DocumentStatement) -> list[tuple[str, str]]:
    """The readable headers of a ``.sig`` file: a copy of signed fields."""
    created = _dt.datetime.fromtimestamp(st.created, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = [
        ("Signer", st.signer_name),
        ("Fingerprint", str(st.signer_fingerprint)),
        ("Created", created),
    ]
    if st.comment is not None:
        headers.append(("Comment", st.comment))
    return headers


def hash_document(stream: BinaryIO, progress: Progress | None = None) -> tuple[int, bytes]:
    """Return ``(size, SHA-512)`` of a stream, read in 1 MiB chunks."""
    h = sha512_hasher()
    size = 0
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return size, h.digest()


def sign_document(
    identity: Identity,
    stream: BinaryIO,
    *,
    now: int,
    comment: str | None = None,
    progress: Progress | None = None,
) -> DocumentSignature:
    """Sign the document read from ``stream``; ``now`` is the Unix time."""
    _check_comment(comment)
    size, digest = hash_document(stream, progress)
    statement = DocumentStatement(
        signer_name=identity.name,
        signer_fingerprint=identity.fingerprint,
        created=now,
        size=size,
        sha512=digest,
        comment=comment,
    )
    sig = identity.sign(statement.to_bytes(), context=CONTEXT_DOCUMENT)
    return DocumentSignature(statement=statement, signature=sig)


def verify_document(
    signer: PublicIdentity,
    stream: BinaryIO,
    signature: DocumentSignature,
    *,
    progress: Progress | None = None,
) -> DocumentStatement:
    """Check that ``signer`` signed exactly the document in ``stream``.

    Returns the verified statement. Raises :class:`BadSignature` when the
    signature is by another key, does not verify, or covers other content.
    """
    st = signature.statement
    if st.signer_fingerprint != signer.fingerprint:
        raise BadSignature(
            f"signed by another key ({st.signer_fingerprint}), not by the expected "
            f"{signer.fingerprint}"
        )
    signer.verify(signature.signature, st.to_bytes(), context=CONTEXT_DOCUMENT)
    size, digest = hash_document(stream, progress)
    if size != st.size or not constant_time_equal(digest, st.sha512):
        raise BadSignature("the document does not match the signature (changed or truncated)")
    return st
