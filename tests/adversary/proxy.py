"""The scriptable malicious relay lives in the package, where ``securechan
demo`` uses it too: :mod:`securechan.testing.malicious_relay`."""

from securechan.testing.malicious_relay import (
    Envelope,
    Exchange,
    MaliciousRelay,
    Match,
    RequestHook,
    ResponseHook,
    b64d,
    b64e,
    route_of,
)

__all__ = [
    "Envelope",
    "Exchange",
    "MaliciousRelay",
    "Match",
    "RequestHook",
    "ResponseHook",
    "b64d",
    "b64e",
    "route_of",
]
