"""The one exception tree of securechan.

Every error the library raises on purpose is a :class:`SecurechanError`.
Misuse of the API (wrong argument types, impossible parameters) raises the
builtin ``TypeError`` / ``ValueError`` instead, because it is a bug in the
caller, not a condition the user can act on.

Authentication failures are deliberately coarse: one class per operation,
raised ``from None``, with a message that never echoes secret input or the
bytes that failed.  The CLI maps this tree to exit codes in one place
(``securechan.cli._exit_code``), documented in ``docs/CLI.md``.
"""

from __future__ import annotations

__all__ = [
    "AuditLogBroken",
    "BadPassphrase",
    "BadSignature",
    "BundleRejected",
    "ChainBroken",
    "ContactExists",
    "ContactNotFound",
    "ConversationInUse",
    "DecryptionFailed",
    "IdentityExists",
    "KeyChanged",
    "MalformedInput",
    "MessageRejected",
    "Misaddressed",
    "NoIdentity",
    "ProofFailed",
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
    "VerificationFailed",
    "WrongConversation",
]


class SecurechanError(Exception):
    """Base of every error securechan raises on purpose."""


class MalformedInput(SecurechanError):
    """Bytes or text that do not parse as the expected format."""


class UnsupportedVersion(MalformedInput):
    """A well-formed input from a format version this build does not know."""


class VerificationFailed(SecurechanError):
    """A cryptographic or policy check failed."""


class BadSignature(VerificationFailed):
    """A signature did not verify (either half of a hybrid signature)."""


class BadPassphrase(VerificationFailed):
    """The passphrase is wrong or the encrypted key file was altered."""


class UntrustedKey(SecurechanError):
    """A key is not pinned, or is pinned but not verified, where policy needs it."""


class KeyChanged(UntrustedKey):
    """A contact's name is pinned to a different identity key."""

    def __init__(self, name: str, old_fingerprint: str, new_fingerprint: str) -> None:
        self.name = name
        self.old_fingerprint = old_fingerprint
        self.new_fingerprint = new_fingerprint
        super().__init__(
            f"the key for contact {name!r} changed: pinned {old_fingerprint}, "
            f"offered {new_fingerprint}; compare safety numbers, then use --replace"
        )


class ContactNotFound(SecurechanError):
    """No contact of that name is pinned."""


class ContactExists(SecurechanError):
    """The same identity is already pinned under another name."""


class NoIdentity(SecurechanError):
    """The home folder holds no identity yet (run ``securechan init``)."""


class IdentityExists(SecurechanError):
    """An identity already exists and would be overwritten (use ``--force``)."""


class RelayError(SecurechanError):
    """A relay could not be used (exit code 3)."""


class RelayUnavailable(RelayError):
    """A relay did not answer, or kept failing, after every retry."""


class RelayRefused(RelayError):
    """A relay refused a request (a 4xx answer other than 408 and 429)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the relay refused the request: {message}")
        self.status = status


class StorageError(SecurechanError):
    """A file of the home folder could not be read or written."""


class RolledBack(StorageError):
    """Stored state is older than state already used (a rollback)."""


# --- session protocol --------------------------------------------------------
# Toward the peer every failure to open a message looks the same; locally each
# subclass names the reason, for the audit log.


class MessageRejected(VerificationFailed):
    """A message was refused; the session state is unchanged."""


class DecryptionFailed(MessageRejected):
    """A message does not decrypt under any key of the session."""


class Replay(MessageRejected):
    """A message (or first message) that was already processed.

    For a ratchet message, ``chain`` (the sender's ratchet public key) and
    ``n`` name the ratchet position whose key was already used, ``seq`` the
    sender's sequence number when the message could be opened, and
    ``signed`` its verified signed payload then: with the message key it
    kept for that position, the client can tell a relay's replay (the same
    signed payload) from a rolled-back sender (same position or sequence
    number, other signed content)."""

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


class Misaddressed(MessageRejected):
    """A message signed for another recipient (surreptitious forwarding)."""


class WrongConversation(MessageRejected):
    """A message signed for another conversation."""


class ConversationInUse(MessageRejected):
    """A first message names the conversation id of an existing session."""


class ChainBroken(MessageRejected):
    """A message's hash chain contradicts messages already received."""


class TooFarAhead(MessageRejected):
    """A message would skip more keys than the session allows."""


class BundleRejected(VerificationFailed):
    """A prekey bundle is unsigned, wrongly signed, foreign or expired."""


class UnknownPrekey(MessageRejected):
    """A first message names a prekey that is unknown, used or expired."""


class UnknownSender(UntrustedKey):
    """A first message from an identity that is not a pinned contact."""

    def __init__(self, message: str, identity: object | None = None) -> None:
        super().__init__(message)
        self.identity = identity


# --- transparency log ---------------------------------------------------------


class ProofFailed(VerificationFailed):
    """A Merkle inclusion or consistency proof is malformed or does not verify."""


# --- local audit log ------------------------------------------------------------


class AuditLogBroken(VerificationFailed):
    """The local audit log fails verification (edited, cut, reordered or damaged).

    ``index`` is the first entry at which the log stops verifying, or ``None``
    when the problem is a whole file (a missing or damaged ``audit.head``).
    """

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

    def __init__(self, message: str, evidence: tuple[str, str]) -> None:
        super().__init__(message)
        self.evidence = evidence
