"""One route of the relay's API description (:data:`securechan.relay.api.ROUTES`).

In its own module so that route groups kept apart from ``api.py`` (the
pairing mailbox's, :mod:`securechan.relay.api_pairing`) can use it; ``api``
re-exports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from securechan.protocol.relay_auth import b64e

__all__ = ["Auth", "Query", "Route"]

Auth = Literal["none", "recipient", "sender", "owner"]
"""``recipient``: signed by the queue's recipient key; ``sender``: signed by
the queue's sender key once it is secured (open while it is a contact
address); ``owner``: signed by the recipient key the body names (queue
creation); ``none``: not signed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    name: str
    required: bool = False
    minimum: int = 0
    maximum: int | None = None
    pattern: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One route: ``name`` is the handler's and the service method's name.

    ``body`` is the request body: a JSON type, ``"octets"`` (an envelope),
    ``"text"`` (a signed note) or ``None`` (no body); ``limit`` its largest
    size in bytes, or the name of the :class:`~securechan.relay.config.RelayConfig`
    attribute that holds it. ``reply`` is the success body: a JSON type,
    ``"text"``, ``"yaml"``, ``"metrics"``, ``"ws"`` or a status object
    (``"status"``). ``ok`` maps each success status to its meaning;
    ``refusals`` lists the error statuses the route may answer; ``headers``
    the request headers it requires besides ``Authorization``. ``log``:
    served only with a transparency log. ``gated``: refused (429) to an
    address over its failed-authentication budget.
    """

    name: str
    method: str
    path: str
    summary: str
    auth: Auth = "none"
    body: type | str | None = None
    limit: int | str = 0
    query: tuple[Query, ...] = ()
    reply: type | str = "status"
    ok: Mapping[int, str] = dataclasses.field(default_factory=lambda: {200: "OK."})
    refusals: tuple[int, ...] = ()
    headers: tuple[str, ...] = ()
    log: bool = False
    gated: bool = True

    def url(self, **ids: bytes) -> str:
        """The path with its ``{rid}``/``{sid}`` filled in (base64url)."""
        path = self.path
        for name, value in ids.items():
            path = path.replace("{" + name + "}", b64e(value))
        if "{" in path:
            raise ValueError(f"{self.name} needs {path}")
        return path
