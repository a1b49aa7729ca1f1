"""The adversarial suite's tools (issue 6): a real relay process, a scriptable
malicious relay in front of it, and delegations driven through the CLI and
the library. Test modules import from here; nothing here is a test."""

from tests.adversary.parties import (
    Party,
    audit_rejections,
    make_people,
    session_states,
)
from tests.adversary.proxy import Envelope, Exchange, MaliciousRelay, b64d, b64e, route_of
from tests.adversary.relay import (
    HOST,
    RelayProcess,
    clean_env,
    free_port,
    running_relay,
    securechan_command,
)

__all__ = [
    "HOST",
    "Envelope",
    "Exchange",
    "MaliciousRelay",
    "Party",
    "RelayProcess",
    "audit_rejections",
    "b64d",
    "b64e",
    "clean_env",
    "free_port",
    "make_people",
    "route_of",
    "running_relay",
    "securechan_command",
    "session_states",
]
