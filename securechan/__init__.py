"""securechan: an end-to-end encrypted, signed back-channel through a relay
that can read nothing and forge nothing.

The library exposes the same operations as the ``securechan`` command::

    import securechan
    home = securechan.Keystore("/path/to/home")
    me = home.create("tehran", "a long passphrase")
    ...

Importing this package loads only ``__version__``: every public name is
imported on first use (PEP 562 ``__getattr__``),
so a program (or the command line talking to an agent) that needs none of
the cryptography does not pay for it. It never loads click or aiohttp.
"""

from __future__ import annotations

from securechan.lazy import lazy_attributes

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from securechan.documents import (
        DocumentSignature,
        DocumentStatement,
        sign_document,
        verify_document,
    )
    from securechan.errors import (
        BadPassphrase,
        BadSignature,
        ContactExists,
        ContactNotFound,
        IdentityExists,
        KeyChanged,
        MalformedInput,
        NoIdentity,
        NotFound,
        SecurechanError,
        StorageError,
        UnsupportedVersion,
        UntrustedKey,
        UsageError,
        VerificationFailed,
    )
    from securechan.identity import (
        KDF_PROFILES,
        Contact,
        Contacts,
        EventKind,
        Fingerprint,
        Identity,
        Keystore,
        PublicIdentity,
        SafetyNumber,
        SecurityEvent,
        default_home,
        safety_number,
    )

__version__ = "0.1.0"

# name -> the module that defines it, imported on first use.
_LAZY = {
    "BadPassphrase": "securechan.errors",
    "BadSignature": "securechan.errors",
    "ContactExists": "securechan.errors",
    "ContactNotFound": "securechan.errors",
    "IdentityExists": "securechan.errors",
    "KeyChanged": "securechan.errors",
    "MalformedInput": "securechan.errors",
    "NoIdentity": "securechan.errors",
    "NotFound": "securechan.errors",
    "SecurechanError": "securechan.errors",
    "StorageError": "securechan.errors",
    "UnsupportedVersion": "securechan.errors",
    "UntrustedKey": "securechan.errors",
    "UsageError": "securechan.errors",
    "VerificationFailed": "securechan.errors",
    "DocumentSignature": "securechan.documents",
    "DocumentStatement": "securechan.documents",
    "sign_document": "securechan.documents",
    "verify_document": "securechan.documents",
    "KDF_PROFILES": "securechan.identity",
    "Contact": "securechan.identity",
    "Contacts": "securechan.identity",
    "EventKind": "securechan.identity",
    "Fingerprint": "securechan.identity",
    "Identity": "securechan.identity",
    "Keystore": "securechan.identity",
    "PublicIdentity": "securechan.identity",
    "SafetyNumber": "securechan.identity",
    "SecurityEvent": "securechan.identity",
    "default_home": "securechan.identity",
    "safety_number": "securechan.identity",
}


__getattr__, __dir__ = lazy_attributes("securechan", _LAZY, globals())

__all__ = [
    "KDF_PROFILES",
    "BadPassphrase",
    "BadSignature",
    "Contact",
    "ContactExists",
    "ContactNotFound",
    "Contacts",
    "DocumentSignature",
    "DocumentStatement",
    "EventKind",
    "Fingerprint",
    "Identity",
    "IdentityExists",
    "KeyChanged",
    "Keystore",
    "MalformedInput",
    "NoIdentity",
    "NotFound",
    "PublicIdentity",
    "SafetyNumber",
    "SecurechanError",
    "SecurityEvent",
    "StorageError",
    "UnsupportedVersion",
    "UntrustedKey",
    "UsageError",
    "VerificationFailed",
    "__version__",
    "default_home",
    "safety_number",
    "sign_document",
    "verify_document",
]
