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
    "BadPassphrase",
    "BadSignature",
    "ContactExists",
    "ContactNotFound",
    "IdentityExists",
    "KeyChanged",
    "MalformedInput",
    "NoIdentity",
    "SecurechanError",
    "StorageError",
    "UnsupportedVersion",
    "UntrustedKey",
    "VerificationFailed",
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


class StorageError(SecurechanError):
    """A file of the home folder could not be read or written."""
