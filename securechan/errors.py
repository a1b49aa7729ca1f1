"""The one exception tree of securechan.

Every error the library raises on purpose is a :class:`SecurechanError`.
Misuse of the API (wrong argument types, impossible parameters) raises the
builtin ``TypeError`` / ``ValueError`` instead, because it is a bug in the
caller, not a condition the user can act on.

Authentication failures are deliberately coarse: one class per operation,
raised ``from None``, with a message that never echoes secret input or the
bytes that failed.  The CLI maps this tree to exit codes in one place
(``securechan.cli._exit_code``), documented in ``docs/CLI.md``; the
whole contract (classes, codes, exit codes) is ``docs/ERRORS.md``.
"""

from __future__ import annotations

from enum import StrEnum

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import ClassVar

__all__ = [
    "AuditLogBroken",
    "BadPassphrase",
    "BadRelayUrl",
    "BadSignature",
    "BundleRejected",
    "ChainBroken",
    "ContactExists",
    "ContactNotFound",
    "ConversationInUse",
    "DecryptionFailed",
    "IdentityExists",
    "KeyChanged",
    "LimitReached",
    "MalformedInput",
    "MessageRejected",
    "Misaddressed",
    "NoIdentity",
    "NotFound",
    "PairingFailed",
    "ProofFailed",
    "Reason",
    "Reflected",
    "RelayError",
    "RelayRefused",
    "RelayUnavailable",
    "Replay",
    "RolledBack",
    "SecurechanError",
    "SplitView",
    "StorageError",
    "TooFarAhead",
    "UnknownPrekey",
    "UnknownSender",
    "UnsupportedVersion",
    "UntrustedKey",
    "UsageError",
    "VerificationFailed",
    "WrongConversation",
    "reason_of",
]


class Reason(StrEnum):
    """Stable codes for why something was refused.

    These are what ``--json`` output and new audit-log entries carry (not
    Python class names, which may change): one code per class of this tree
    (``SecurechanError.code``) plus the reasons a receive pass reports without
    an exception.  A code is never renamed or reused; docs/CLI.md lists them.
    """

    AUDIT_LOG_BROKEN = "audit-log-broken"
    BAD_PASSPHRASE = "bad-passphrase"  # noqa: S105 - a reason code, not a secret
    BAD_RELAY_URL = "bad-relay-url"
    BAD_SIGNATURE = "bad-signature"
    BUNDLE_REJECTED = "bundle-rejected"
    CHAIN_BROKEN = "chain-broken"
    CHECKPOINT_UNCHECKED = "checkpoint-unchecked"
    CONTACT_EXISTS = "contact-exists"
    CONTACT_NOT_FOUND = "contact-not-found"
    CONTACT_SHARE_EXCEEDED = "contact-share-exceeded"
    CONVERSATION_IN_USE = "conversation-in-use"
    COSIGNATURE_REFUSED = "cosignature-refused"
    DECRYPTION_FAILED = "decryption-failed"
    ERROR = "error"
    FILE_CORRUPT = "file-corrupt"
    IDENTITY_EXISTS = "identity-exists"
    INTERNAL_ERROR = "internal-error"
    KEY_CHANGED = "key-changed"
    LIMIT_REACHED = "limit-reached"
    MALFORMED_INPUT = "malformed"
    MESSAGE_REJECTED = "message-rejected"
    MISADDRESSED = "misaddressed"
    NO_IDENTITY = "no-identity"
    NONCE_REUSED = "nonce-reused"
    NOT_FOUND = "not-found"
    PAIRING_FAILED = "pairing-failed"
    PEER_ROLLED_BACK = "peer-rolled-back"
    PROOF_FAILED = "proof-failed"
    QUEUE_FULL = "queue-full"
    QUOTA_EXCEEDED = "quota-exceeded"
    STREAM_FULL = "stream-full"
    REQUEST_REFUSED = "request-refused"
    REKEYED = "rekeyed"
    REFLECTED = "reflected"
    RELAY_ERROR = "relay"
    RELAY_REFUSED = "relay-refused"
    RELAY_UNAVAILABLE = "relay-unavailable"
    REPLAY = "replay"
    ROLLED_BACK = "rolled-back"
    SPLIT_VIEW = "split-view"
    STORAGE_CLOSED = "storage-closed"
    STORAGE_ERROR = "storage"
    TOO_FAR_AHEAD = "too-far-ahead"
    UNKNOWN_PREKEY = "unknown-prekey"
    UNKNOWN_SENDER = "unknown-sender"
    UNSUPPORTED_VERSION = "unsupported-version"
    UNTRUSTED_KEY = "untrusted-key"
    USAGE_ERROR = "usage"
    VERIFICATION_FAILED = "verification-failed"
    WRONG_CONVERSATION = "wrong-conversation"
    # Groups (docs/PROTOCOL.md, Groups).
    GROUP_REJECTED = "group-rejected"
    GROUP_FORKED = "group-forked"
    GROUP_EQUIVOCATION = "group-equivocation"
    # The agent (docs/AGENT.md).
    AGENT_LOCKED = "agent-locked"
    AGENT_UNAVAILABLE = "agent-unavailable"
    HOME_IN_USE = "home-in-use"


def reason_of(error: BaseException) -> Reason:
    """The stable code for ``error``: its class's code, or ``internal-error``
    for anything outside this tree (a bug, reported as such)."""
    if isinstance(error, SecurechanError):
        return error.code
    return Reason.INTERNAL_ERROR


class SecurechanError(Exception):
    """Base of every error securechan raises on purpose."""

    code: ClassVar[Reason] = Reason.ERROR


class MalformedInput(SecurechanError):
    """Bytes or text that do not parse as the expected format."""

    code = Reason.MALFORMED_INPUT


class UnsupportedVersion(MalformedInput):
    """A well-formed input from a format version this build does not know."""

    code = Reason.UNSUPPORTED_VERSION


class VerificationFailed(SecurechanError):
    """A cryptographic or policy check failed."""

    code = Reason.VERIFICATION_FAILED


class BadSignature(VerificationFailed):
    """A signature did not verify (either half of a hybrid signature)."""

    code = Reason.BAD_SIGNATURE


class BadPassphrase(VerificationFailed):
    """The passphrase is wrong or the encrypted key file was altered."""

    code = Reason.BAD_PASSPHRASE


class UntrustedKey(SecurechanError):
    """A key is not pinned, or is pinned but not verified, where policy needs it."""

    code = Reason.UNTRUSTED_KEY


class KeyChanged(UntrustedKey):
    """A contact's name is pinned to a different identity key."""

    code = Reason.KEY_CHANGED

    def __init__(self, name: str, old_fingerprint: str, new_fingerprint: str) -> None:
        self.name = name
        self.old_fingerprint = old_fingerprint
        self.new_fingerprint = new_fingerprint
        super().__init__(
            f"the key for contact {name!r} changed: pinned {old_fingerprint}, "
            f"offered {new_fingerprint}; compare safety numbers, then use --replace"
        )


class UsageError(SecurechanError):
    """A usage mistake: options that do not go together, a bad option value.

    Also a missing passphrase source, an output file that exists. Not
    :class:`MalformedInput`, which is for bytes or text that came from a file,
    a peer or a relay: a usage mistake is never counted as a peer's."""

    code = Reason.USAGE_ERROR


class BadRelayUrl(UsageError):
    """A malformed relay URL (not http(s), no host, bad port, credentials, query, fragment)."""

    code = Reason.BAD_RELAY_URL


class NotFound(SecurechanError):
    """Something the caller named does not exist (a contact, a message id...)."""

    code = Reason.NOT_FOUND


class ContactNotFound(NotFound):
    """No contact of that name is pinned."""

    code = Reason.CONTACT_NOT_FOUND


class ContactExists(SecurechanError):
    """The same identity is already pinned under another name."""

    code = Reason.CONTACT_EXISTS


class NoIdentity(SecurechanError):
    """The home folder holds no identity yet (run ``securechan init``)."""

    code = Reason.NO_IDENTITY


class IdentityExists(SecurechanError):
    """An identity already exists and would be overwritten (use ``--force``)."""

    code = Reason.IDENTITY_EXISTS


class RelayError(SecurechanError):
    """A relay could not be used (exit code 3).

    ``relay`` is the relay's URL when the raiser knows it (the transport
    always does): what a caller reports once per relay."""

    code = Reason.RELAY_ERROR
    relay: str | None = None


class RelayUnavailable(RelayError):
    """A relay did not answer, or kept failing, after every retry."""

    code = Reason.RELAY_UNAVAILABLE

    def __init__(self, message: str, *, relay: str | None = None) -> None:
        super().__init__(message)
        self.relay = relay


class RelayRefused(RelayError):
    """A relay refused a request (a 4xx answer other than 408 and 429)."""

    code = Reason.RELAY_REFUSED

    def __init__(self, status: int, message: str, *, relay: str | None = None) -> None:
        where = f"relay {relay}" if relay else "the relay"
        super().__init__(f"{where} refused the request: {message}")
        self.status = status
        self.relay = relay


class StorageError(SecurechanError):
    """A store (a home-folder file, a relay's database) could not be used."""

    code = Reason.STORAGE_ERROR


class LimitReached(SecurechanError):
    """A configured limit (a queue's length, a byte quota) would be passed."""

    code = Reason.LIMIT_REACHED


class RolledBack(StorageError):
    """Stored state is older than state already used (a rollback)."""

    code = Reason.ROLLED_BACK


# --- session protocol --------------------------------------------------------
# Toward the peer every failure to open a message looks the same; locally each
# subclass names the reason, for the audit log.


class MessageRejected(VerificationFailed):
    """A message was refused; the session state is unchanged."""

    code = Reason.MESSAGE_REJECTED


class DecryptionFailed(MessageRejected):
    """A message does not decrypt under any key of the session."""

    code = Reason.DECRYPTION_FAILED


class Replay(MessageRejected):
    """A message (or first message) that was already processed.

    For a ratchet message, ``chain`` (the sender's ratchet public key) and
    ``n`` name the ratchet position whose key was already used, ``seq`` the
    sender's sequence number when the message could be opened, and
    ``signed`` its verified signed payload then: with the message key it
    kept for that position, the client can tell a relay's replay (the same
    signed payload) from a rolled-back sender (same position or sequence
    number, other signed content)."""

    code = Reason.REPLAY

    def __init__(
        self,
        message: str,
        *,
        chain: bytes | None = None,
        n: int | None = None,
        seq: int | None = None,
        signed: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.chain = chain
        self.n = n
        self.seq = seq
        self.signed = signed


class Reflected(MessageRejected):
    """A party's own message came back to it."""

    code = Reason.REFLECTED


class Misaddressed(MessageRejected):
    """A message signed for another recipient (surreptitious forwarding)."""

    code = Reason.MISADDRESSED


class WrongConversation(MessageRejected):
    """A message signed for another conversation."""

    code = Reason.WRONG_CONVERSATION


class ConversationInUse(MessageRejected):
    """A first message names the conversation id of an existing session."""

    code = Reason.CONVERSATION_IN_USE


class ChainBroken(MessageRejected):
    """A message's hash chain contradicts messages already received."""

    code = Reason.CHAIN_BROKEN


class TooFarAhead(MessageRejected):
    """A message would skip more keys than the session allows."""

    code = Reason.TOO_FAR_AHEAD


class BundleRejected(VerificationFailed):
    """A prekey bundle is unsigned, wrongly signed, foreign or expired."""

    code = Reason.BUNDLE_REJECTED


class UnknownPrekey(MessageRejected):
    """A first message names a prekey that is unknown, used or expired."""

    code = Reason.UNKNOWN_PREKEY


class UnknownSender(UntrustedKey):
    """A first message from an identity that is not a pinned contact."""

    code = Reason.UNKNOWN_SENDER

    def __init__(self, message: str, identity: object | None = None) -> None:
        super().__init__(message)
        self.identity = identity


# --- transparency log ---------------------------------------------------------


class ProofFailed(VerificationFailed):
    """A Merkle inclusion or consistency proof is malformed or does not verify."""

    code = Reason.PROOF_FAILED


# --- local audit log ------------------------------------------------------------


class AuditLogBroken(VerificationFailed):
    """The local audit log fails verification (edited, cut, reordered or damaged).

    ``index`` is the first entry at which the log stops verifying, or ``None``
    when the problem is a whole file (a missing or damaged ``audit.head``).
    """

    code = Reason.AUDIT_LOG_BROKEN

    def __init__(self, index: int | None, reason: str) -> None:
        self.index = index
        self.reason = reason
        where = f" at entry {index}" if index is not None else ""
        super().__init__(f"the audit log is broken{where}: {reason}")


class SplitView(VerificationFailed):
    """A relay's log shows two histories that cannot both be true.

    ``evidence`` holds the two signed checkpoints (note texts) that conflict:
    together they prove the relay signed inconsistent views.
    """

    code = Reason.SPLIT_VIEW

    def __init__(self, message: str, evidence: tuple[str, str]) -> None:
        super().__init__(message)
        self.evidence = evidence


class PairingFailed(VerificationFailed):
    """Pairing by a spoken code failed; nothing was pinned.

    A wrong code, a tampered exchange, an expired or used code."""

    code = Reason.PAIRING_FAILED


class GroupRejected(MessageRejected):
    """A group record that must not be applied (unauthorised, stale, forged)."""

    code = Reason.GROUP_REJECTED


class GroupForked(GroupRejected):
    """A member was shown a group transcript this member never had."""

    code = Reason.GROUP_FORKED


class GroupEquivocation(GroupRejected):
    """A member signed two different group messages for one sequence number.

    ``evidence`` holds the hashes of both signed payloads."""

    code = Reason.GROUP_EQUIVOCATION

    def __init__(self, message: str, evidence: tuple[bytes, bytes]) -> None:
        super().__init__(message)
        self.evidence = evidence


class AgentLocked(UsageError):
    """The agent holds no unlocked key: unlock it with the passphrase first.

    It was never unlocked, a TTL ran out, or ``securechan agent lock``."""

    code = Reason.AGENT_LOCKED


class AgentUnavailable(SecurechanError):
    """No agent answers on the home's socket, or it broke the protocol."""

    code = Reason.AGENT_UNAVAILABLE


class HomeInUse(StorageError):
    """Another process holds the home folder (an agent, or a command).

    An agent is running, or a command is while an agent tries to start."""

    code = Reason.HOME_IN_USE
