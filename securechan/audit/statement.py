"""Statements: one message, proven to a third party who holds only the file.

A statement is what the fact-checking tool hands to someone outside the
conversation (``docs/AUDIT.md``, Statements). It makes two separate claims,
with no keystore and no network, and says which of them it proves:

**(a) authorship and logging** (always):

1. **who said what to whom**: the sender's signed payload (sender, recipient,
   conversation, sequence number, the sender's clock, content, the hash of the
   sender's previous message), with the sender's and the recipient's
   self-signed public identities. The composite signature (ML-DSA-65 +
   Ed25519) makes it non-repudiable.
2. **in which session**: the session's HandshakeTranscript record and the
   initiator's signature over it. It must name exactly the payload's sender
   and recipient (in either role), be signed by the one it names as
   initiator, and give the payload's conversation id; its hash is the
   associated-data prefix of the envelope. A sender can no longer choose an
   arbitrary "transcript hash": only a handshake signed for these two parties
   opens the envelope (:func:`securechan.protocol.handshake.verify_transcript`).
3. **that this is the envelope that travelled**: the envelope exactly as the
   relay stored it, with its message key revealed
   (:mod:`securechan.protocol.opening`). Opening it must give the signed
   payload byte for byte. The key opens this one envelope and no other.
4. **where it sits in the relay's log**, when the exporter has a receipt: the
   relay's log verifier key, the leaf index, the signed checkpoint (with any
   witness cosignatures) and the RFC 9162 inclusion proof of the envelope's
   leaf. Cosignature timestamps bound when the envelope existed.

None of this shows that the recipient ever accepted the message: the sender
alone can make every part of (a), including a handshake the recipient never
completed.

**(b) delivery** (only with the recipient's own signed receipt): a RECEIPT
payload (content type 3) signed by the recipient, in the same conversation,
to the sender, whose ``up_to_seq`` is the message's sequence number and whose
``chain_hash`` is the hash of exactly this signed payload. The recipient's
session signs one chain hash per sequence number, so two different payloads
with one sequence number cannot both carry a delivery claim. A receipt for a
later message would need every signed payload in between to link the hash
chain (each link is the hash of a whole signed record, content included), so
statements only use a receipt that covers exactly the message.

The file is armoured text (``BEGIN SECURECHAN STATEMENT``) around one wire
record (type 0x00D2; the unbound 0x00D0 of before issue 11 is refused).
Verification also demands that the file is exactly the canonical armour of
its record, so that changing any byte of the file makes it fail, and that
every signature line of the checkpoint is by the log key or a witness key the
statement names (an unknown line would otherwise be ignored, as C2SP
signed-note allows, and an edit there would go unnoticed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from securechan import armor, wire
from securechan.audit.checkpoint import Checkpoint, Cosignature, open_cosigned_checkpoint
from securechan.audit.merkle import MAX_PROOF_HASHES
from securechan.audit.note import (
    MAX_NOTE_BYTES,
    SIG_COSIGNATURE_V1,
    SIG_MLDSA44_COSIGNATURE,
    VerifierKey,
    open_note,
)
from securechan.audit.receipt import Receipt, verify_receipt
from securechan.errors import BadSignature, MalformedInput, UntrustedKey, VerificationFailed
from securechan.identity.keys import PublicIdentity
from securechan.primitives import HYBRID_SIGNATURE_SIZE, sha256
from securechan.protocol.handshake import SessionBinding, verify_transcript
from securechan.protocol.opening import open_envelope
from securechan.protocol.payload import ContentType, FileChunk, Payload, SignedPayload
from securechan.protocol.payload import Receipt as MessageReceipt

__all__ = [
    "ARMOR_LABEL",
    "LogPlacement",
    "Statement",
    "VerifiedDelivery",
    "VerifiedStatement",
    "message_id",
    "verify_statement",
]

ARMOR_LABEL = "STATEMENT"
MESSAGE_ID_HEX = 16  # characters of SHA-256(signed payload) shown as the id
_HEADERS = frozenset({"Message", "From", "To"})
_MAX_WITNESSES = 16
# The statement record of before issue 11: it carried a bare "transcript
# hash" the exporter chose, bound to no session. Refused with its own message.
_UNBOUND_STATEMENT_TYPE = 0x00D0
_MAX_TRANSCRIPT = 8192
_MAX_SIGNED = 1 << 17


@wire.record(0x00D1, "StatementWitness")
@dataclass(frozen=True, slots=True, kw_only=True)
class _Witness(wire.Record):
    # An ML-DSA-44 (type 0x06) verifier key is 1,774 characters at most.
    key: Annotated[str, wire.text(1, max_len=2048)]


@wire.record(0x00D2, "Statement")
@dataclass(frozen=True, slots=True, kw_only=True)
class _StatementRecord(wire.Record):
    # The wire form of Statement: its placement flattened into tags 8-12.
    signed: Annotated[bytes, wire.bytes_(1, max_len=_MAX_SIGNED)]
    sender: Annotated[bytes, wire.bytes_(2, max_len=16384)]
    recipient: Annotated[bytes, wire.bytes_(3, max_len=16384)]
    envelope: Annotated[bytes, wire.bytes_(4, max_len=(1 << 20) + 65536)]
    message_key: Annotated[bytes, wire.bytes_(5, size=32)]
    transcript: Annotated[bytes, wire.bytes_(6, max_len=_MAX_TRANSCRIPT)]
    transcript_signature: Annotated[bytes, wire.bytes_(7, size=HYBRID_SIGNATURE_SIZE)]
    log_key: Annotated[str | None, wire.text(8, max_len=512)] = None
    leaf_index: Annotated[int | None, wire.uint(9)] = None
    checkpoint: Annotated[str | None, wire.text(10, max_len=MAX_NOTE_BYTES)] = None
    inclusion_proof: Annotated[bytes | None, wire.bytes_(11, max_len=MAX_PROOF_HASHES * 32)] = None
    witnesses: Annotated[
        tuple[_Witness, ...] | None,
        wire.list_(12, max_len=_MAX_WITNESSES * 2100, max_items=_MAX_WITNESSES),
    ] = None
    # The recipient's signed RECEIPT payload covering exactly this message.
    receipt: Annotated[bytes | None, wire.bytes_(13, max_len=_MAX_SIGNED)] = None


_WITNESS = wire.schema_of(_Witness)
STATEMENT = wire.schema_of(_StatementRecord)


def message_id(signed: bytes) -> str:
    """The id both parties show for a message: the first 16 hex digits of
    SHA-256 of its signed payload record (the link of the sender's chain)."""
    return sha256(signed).hex()[:MESSAGE_ID_HEX]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogPlacement:
    """Where the envelope sits in a relay's transparency log (unverified)."""

    log_key: str
    leaf_index: int
    checkpoint: str
    inclusion_proof: tuple[bytes, ...]
    witnesses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """The evidence for one message, as exported (unverified until
    :func:`verify_statement`)."""

    signed: bytes
    sender: bytes
    recipient: bytes
    envelope: bytes
    message_key: bytes
    # The session's HandshakeTranscript record and the initiator's signature.
    transcript: bytes
    transcript_signature: bytes
    placement: LogPlacement | None = None
    # The recipient's signed receipt covering exactly this message, if any.
    receipt: bytes | None = None

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x00D2)."""
        p = self.placement
        return _StatementRecord(
            signed=self.signed,
            sender=self.sender,
            recipient=self.recipient,
            envelope=self.envelope,
            message_key=self.message_key,
            transcript=self.transcript,
            transcript_signature=self.transcript_signature,
            log_key=p.log_key if p else None,
            leaf_index=p.leaf_index if p else None,
            checkpoint=p.checkpoint if p else None,
            inclusion_proof=b"".join(p.inclusion_proof) if p else None,
            witnesses=tuple(_Witness(key=w) for w in p.witnesses) if p and p.witnesses else None,
            receipt=self.receipt,
        ).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Statement:
        """Decode strictly; the log fields come all together or not at all."""
        if wire.peek_type(data) == _UNBOUND_STATEMENT_TYPE:
            raise MalformedInput(
                "this statement is in the format of before issue 11 (type 0x00D0), which "
                "bound no session and is no longer accepted; ask for a new export"
            )
        rec = _StatementRecord.from_bytes(data)
        placement = None
        if (
            rec.log_key is not None
            and rec.leaf_index is not None
            and rec.checkpoint is not None
            and rec.inclusion_proof is not None
        ):
            proof = rec.inclusion_proof
            if len(proof) % 32:
                raise MalformedInput("an inclusion proof is a whole number of hashes")
            witnesses = rec.witnesses
            if witnesses is not None and not witnesses:
                raise MalformedInput("an empty witness list is encoded as no field")
            placement = LogPlacement(
                log_key=rec.log_key,
                leaf_index=rec.leaf_index,
                checkpoint=rec.checkpoint,
                inclusion_proof=tuple(proof[i : i + 32] for i in range(0, len(proof), 32)),
                witnesses=tuple(w.key for w in witnesses or ()),
            )
        elif any(
            v is not None
            for v in (rec.log_key, rec.leaf_index, rec.checkpoint, rec.inclusion_proof)
        ):
            raise MalformedInput("a statement's log fields come all together")
        elif rec.witnesses is not None:
            raise MalformedInput("witnesses without a log placement")
        return cls(
            signed=rec.signed,
            sender=rec.sender,
            recipient=rec.recipient,
            envelope=rec.envelope,
            message_key=rec.message_key,
            transcript=rec.transcript,
            transcript_signature=rec.transcript_signature,
            placement=placement,
            receipt=rec.receipt,
        )

    def _headers(self) -> list[tuple[str, str]]:
        signed = SignedPayload.from_bytes_unverified(self.signed)
        return [
            ("Message", message_id(self.signed)),
            ("From", str(signed.payload.sender)),
            ("To", str(signed.payload.recipient)),
        ]

    def to_text(self) -> str:
        """The statement file: armour with the message id, sender and
        recipient fingerprints as headers (checked against the body)."""
        return armor.armor(ARMOR_LABEL, self.to_bytes(), self._headers())

    @classmethod
    def from_text(cls, text: str) -> Statement:
        """Parse a statement file. It must be exactly the canonical armour of
        its record: any other byte, anywhere, is refused."""
        block = armor.dearmor(text, ARMOR_LABEL, allowed_headers=_HEADERS)
        statement = cls.from_bytes(block.body)
        try:
            canonical = statement.to_text()
        except (MalformedInput, ValueError):
            raise MalformedInput("the statement's payload does not parse") from None
        if text != canonical:
            raise MalformedInput("the statement file is not in canonical form (edited?)")
        return statement


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedLog:
    """A verified log placement."""

    log_key: VerifierKey
    trusted: bool  # the log key was given by the verifier, not just the file
    leaf_index: int
    checkpoint: Checkpoint
    cosignatures: tuple[Cosignature, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedDelivery:
    """Claim (b): the recipient's own signed receipt covers the message."""

    receipt_id: str  # message_id() of the receipt payload
    up_to_seq: int
    signed_at: int  # the recipient's clock, as it signed


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedStatement:
    """What a verified statement proves: always claim (a), authorship in a
    session between the two parties (and logging, when ``log`` is set);
    claim (b), delivery, only when ``delivery`` is set."""

    message_id: str
    sender: PublicIdentity
    recipient: PublicIdentity
    payload: Payload
    payload_hash: bytes
    session: SessionBinding
    log: VerifiedLog | None
    delivery: VerifiedDelivery | None

    def summary(self) -> str:
        """The content in one line (text as is; files and receipts described)."""
        content = self.payload.content()
        if isinstance(content, str):
            return content
        if isinstance(content, FileChunk):
            return (
                f"[file {content.name!r}, {content.size} bytes, chunk {content.index + 1} "
                f"of {content.count}, SHA-512 {content.sha512.hex()}]"
            )
        if isinstance(content, MessageReceipt):
            return f"[receipt: everything up to #{content.up_to_seq}]"
        return f"[{self.payload.content_type.name.lower()}]"


def verify_statement(
    statement: Statement,
    *,
    trust_relay: VerifierKey | None = None,
    trust_witnesses: Sequence[VerifierKey] = (),
) -> VerifiedStatement:
    """Check everything a statement claims; return what it proves.

    Steps: (1) both identities are self-signed and named by the payload;
    (2) the sender's composite signature over the payload verifies;
    (3) the handshake transcript names exactly these two parties, is signed
    by the one it names as initiator, and gives the payload's conversation
    id; (4) the revealed key opens the envelope, under the transcript's hash
    as associated-data prefix, to exactly the signed payload; (5) with a log
    placement: the checkpoint is signed by the log key (which must equal
    ``trust_relay`` when given), every other signature line is a verifying
    cosignature by a witness the statement names, each of ``trust_witnesses``
    is among them, and the inclusion proof puts the envelope's leaf under the
    checkpoint's root (``trust_relay`` or ``trust_witnesses`` without a
    placement is a failure too); (6) with a receipt: it is a RECEIPT payload
    signed by the recipient, to the sender, in the same conversation, for
    exactly this sequence number and this payload's hash. A file whose
    receipt does not cover the message is refused, not downgraded: it
    claims a delivery it cannot show.

    Raises :class:`MalformedInput`, :class:`BadSignature`,
    :class:`UntrustedKey`, :class:`ProofFailed` or :class:`VerificationFailed`.
    """
    sender = PublicIdentity.from_bytes(statement.sender)
    recipient = PublicIdentity.from_bytes(statement.recipient)
    signed = SignedPayload.from_bytes_unverified(statement.signed)
    p = signed.payload
    if p.sender != sender.fingerprint or p.recipient != recipient.fingerprint:
        raise VerificationFailed("the identities are not the payload's sender and recipient")
    if p.sender == p.recipient:
        raise VerificationFailed("a message to oneself is not a statement")
    try:
        signed.verify(sender)
    except BadSignature:
        raise BadSignature("the sender's signature on the message does not verify") from None
    session = verify_transcript(
        statement.transcript, statement.transcript_signature, (sender, recipient)
    )
    if p.conversation != session.conversation:
        raise VerificationFailed("the message belongs to another conversation than the handshake")
    try:
        opened = open_envelope(statement.envelope, statement.message_key, session.transcript_hash)
    except MalformedInput:
        raise VerificationFailed("the envelope is not a securechan message") from None
    except VerificationFailed:
        raise VerificationFailed(
            "the revealed key does not open the envelope in this session"
        ) from None
    if opened != statement.signed:
        raise VerificationFailed("the envelope carries another message")
    log = _verify_placement(statement, trust_relay, trust_witnesses)
    delivery = None
    if statement.receipt is not None:
        delivery = _verify_delivery(statement.receipt, signed, sender, recipient)
    return VerifiedStatement(
        message_id=message_id(statement.signed),
        sender=sender,
        recipient=recipient,
        payload=p,
        payload_hash=sha256(statement.signed),
        session=session,
        log=log,
        delivery=delivery,
    )


def _verify_delivery(
    receipt_bytes: bytes, signed: SignedPayload, sender: PublicIdentity, recipient: PublicIdentity
) -> VerifiedDelivery:
    """The recipient's signed receipt must acknowledge exactly this payload:
    its sequence number and the hash of its signed record (the link of the
    sender's chain that the recipient's session checked, docs/PROTOCOL.md
    §15). The conversation id ties it to the same session."""
    receipt = SignedPayload.from_bytes_unverified(receipt_bytes)
    r = receipt.payload
    p = signed.payload
    if r.sender != recipient.fingerprint or r.recipient != sender.fingerprint:
        raise VerificationFailed("the receipt is not from the recipient to the sender")
    if r.conversation != p.conversation:
        raise VerificationFailed("the receipt belongs to another conversation")
    if r.content_type is not ContentType.RECEIPT:
        raise VerificationFailed("the recipient's payload is not a receipt")
    try:
        receipt.verify(recipient)
    except BadSignature:
        raise BadSignature("the recipient's signature on the receipt does not verify") from None
    content = r.content()
    if not isinstance(content, MessageReceipt):  # pragma: no cover - checked by content type
        raise VerificationFailed("the recipient's payload is not a receipt")
    if content.up_to_seq != p.seq or content.chain_hash != signed.hash:
        raise VerificationFailed("the recipient's receipt does not acknowledge this message")
    return VerifiedDelivery(
        receipt_id=message_id(receipt_bytes), up_to_seq=content.up_to_seq, signed_at=r.sent_at
    )


def _verify_placement(
    statement: Statement,
    trust_relay: VerifierKey | None,
    trust_witnesses: Sequence[VerifierKey],
) -> VerifiedLog | None:
    placement = statement.placement
    if placement is None:
        if trust_relay is not None or trust_witnesses:
            raise VerificationFailed("the statement carries no relay log receipt")
        return None
    key = VerifierKey.from_text(placement.log_key)
    if trust_relay is not None and key != trust_relay:
        raise UntrustedKey("the statement's log is not the relay key you trust")
    witnesses = [VerifierKey.from_text(w) for w in placement.witnesses]
    if any(w.sig_type not in (SIG_COSIGNATURE_V1, SIG_MLDSA44_COSIGNATURE) for w in witnesses):
        raise MalformedInput("a statement's witness keys are cosignature (type 0x04 or 0x06) keys")
    if len(set(witnesses)) != len(witnesses) or key in witnesses:
        raise MalformedInput("a statement names each key once")
    opened = open_note(placement.checkpoint, [key, *witnesses])
    if opened.unverified:
        raise VerificationFailed(
            "the checkpoint has a signature by a key the statement does not name"
        )
    cosigned = open_cosigned_checkpoint(
        placement.checkpoint, key, witnesses, required=len(witnesses)
    )
    signers = {c.cosigner for c in cosigned.cosignatures}
    missing = [w for w in trust_witnesses if w not in signers]
    if missing:
        raise VerificationFailed(f"not cosigned by the witness {missing[0].name}")
    checkpoint = verify_receipt(
        Receipt(
            leaf_index=placement.leaf_index,
            checkpoint=placement.checkpoint,
            inclusion_proof=placement.inclusion_proof,
        ),
        statement.envelope,
        key,
    )
    return VerifiedLog(
        log_key=key,
        trusted=trust_relay is not None,
        leaf_index=placement.leaf_index,
        checkpoint=checkpoint,
        cosignatures=cosigned.cosignatures,
    )
