"""Identities, fingerprints, safety numbers, the encrypted keystore, contacts."""

from securechan.identity.contacts import Contact, Contacts
from securechan.identity.events import EventKind, EventSink, SecurityEvent
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity, check_name
from securechan.identity.keystore import KDF_PROFILES, Keystore, default_home
from securechan.identity.safety import SafetyNumber, safety_number

__all__ = [
    "KDF_PROFILES",
    "Contact",
    "Contacts",
    "EventKind",
    "EventSink",
    "Fingerprint",
    "Identity",
    "Keystore",
    "PublicIdentity",
    "SafetyNumber",
    "SecurityEvent",
    "check_name",
    "default_home",
    "safety_number",
]
