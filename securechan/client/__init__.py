"""The high-level client: :class:`Channel` (async), :class:`SyncChannel`, and
:class:`AgentClient` / :class:`AsyncAgentClient` for a running agent.

The names are imported on first use (PEP 562): ``Channel`` loads aiohttp
and the cryptography, ``AgentClient`` only the standard library
(docs/AGENT.md).
"""

from __future__ import annotations

from securechan.lazy import lazy_attributes

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from securechan.client.agent_client import AgentClient, AsyncAgentClient
    from securechan.client.channel import Channel, sanitize_filename
    from securechan.client.results import Received, Rejected, SendResult
    from securechan.client.sync import SyncChannel

_LAZY = {
    "AgentClient": "securechan.client.agent_client",
    "AsyncAgentClient": "securechan.client.agent_client",
    "Channel": "securechan.client.channel",
    "sanitize_filename": "securechan.client.channel",
    "Received": "securechan.client.results",
    "Rejected": "securechan.client.results",
    "SendResult": "securechan.client.results",
    "SyncChannel": "securechan.client.sync",
}


__getattr__, __dir__ = lazy_attributes("securechan.client", _LAZY, globals())

__all__ = [
    "AgentClient",
    "AsyncAgentClient",
    "Channel",
    "Received",
    "Rejected",
    "SendResult",
    "SyncChannel",
    "sanitize_filename",
]
