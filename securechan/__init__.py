"""securechan: an end-to-end encrypted, signed back-channel through a relay
that can read nothing and forge nothing.

The library exposes the same operations as the ``securechan`` command::

    import securechan
    home = securechan.Keystore("/path/to/home")
    me = home.create("tehran", "a long passphrase")
    ...

Importing this package loads neither click nor aiohttp.
"""

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
