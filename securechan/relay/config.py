"""The limits and behaviour of one relay (``docs/RELAY.md`` §5, "Limits")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["AUTO_RESERVE", "AUTO_RESERVE_SHARE", "WRITE_FAILED_FOR", "RelayConfig"]

# storage_reserve_bytes = -1: keep this share of the data disk free, at most
# AUTO_RESERVE bytes (so a small disk is not all reserve).
AUTO_RESERVE = 64 * 1024 * 1024
AUTO_RESERVE_SHARE = 0.05
# How long /readyz says write_failed after a storage error with no commit since.
WRITE_FAILED_FOR = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """Limits and behaviour of one relay (``docs/RELAY.md`` §5)."""

    max_envelope: int = 256 * 1024
    max_depth: int = 10_000
    ttl: int = 30 * 24 * 3600
    fetch_limit: int = 500
    # Sends per second per queue, and per client address (all queues).
    queue_rate: float = 50.0
    queue_burst: int = 200
    client_rate: float = 500.0
    client_burst: int = 1000
    # Prekey bundle claims per contact address (one-time key exhaustion).
    claim_rate: float = 1.0
    claim_burst: int = 20
    create_rate: float = 5.0
    create_burst: int = 50
    body_timeout: float = 15.0
    max_one_time_upload: int = 200
    max_prekey_blob: int = 16 * 1024
    max_ws_per_queue: int = 4
    # Fetch answers (docs/RELAY.md, "Limits"): envelope bytes per answer, how
    # many answers are built and written at once (memory is bounded by about
    # fetch_concurrency x fetch_max_bytes x 1.4, the base64 in JSON), and
    # fetches per second per queue.
    fetch_max_bytes: int = 4 * 1024 * 1024
    fetch_concurrency: int = 8
    fetch_rate: float = 50.0
    fetch_burst: int = 200
    # Byte quotas (docs/RELAY.md, "Limits"; 0: no limit). Envelope bytes held
    # per queue and per sender key (all queues secured with that key); the
    # database's used size overall; the free space the file system keeps for
    # acks, deletes and the WAL (sends that would eat into it are refused,
    # and /readyz says not ready below it); envelope bytes per second per
    # client address.
    queue_max_bytes: int = 256 * 1024 * 1024
    sender_max_bytes: int = 1024 * 1024 * 1024
    storage_max_bytes: int = 0
    storage_reserve_bytes: int = -1  # automatic: 5 % of the data disk, at most 64 MiB
    client_byte_rate: float = 8 * 1024 * 1024
    client_byte_burst: int = 64 * 1024 * 1024
    # Failed authentication (401, 403) per client address: once the budget
    # is spent, the address is answered 429 before any signature is checked.
    auth_failure_rate: float = 2.0
    auth_failure_burst: int = 30
    # Reads (fetches, prekey status) per queue.
    read_rate: float = 100.0
    read_burst: int = 500
    # Nonces of read requests, held in memory for the replay window (not in
    # relay.db: a read changes nothing, docs/RELAY.md §3).
    max_read_nonces: int = 200_000
    # Refusal log lines: at most log_sample per route, status and code in
    # every log_interval seconds, then one summary line.
    log_sample: int = 10
    log_interval: float = 10.0
    # Connection caps (docs/RELAY.md, "Connections"): per client address
    # (IPv4, or IPv6 /64) and overall. 0: sized at start from the fd limit
    # (overall), an eighth of the overall cap (per address).
    max_connections: int = 0
    max_connections_per_client: int = 0
    max_websockets: int = 0
    max_ws_per_client: int = 0
    # First-contact fairness (docs/RELAY.md, "Contact addresses"): a contact
    # address holds at most 1/contact_share of max_depth (never below 32
    # envelopes) and of queue_max_bytes from one client address (0: off),
    # which may send contact_sender_rate per second to it (burst
    # contact_sender_burst).
    contact_share: int = 16
    contact_sender_rate: float = 5.0
    contact_sender_burst: int = 50
    # Group streams (docs/RELAY.md, "Group streams"): the largest blob, and
    # how many items one stream holds at most (items are never deleted).
    stream_max_blob: int = 16 * 1024
    stream_max_items: int = 100_000
    # Stream bytes (each item charged its blob + 256 bytes) one stream holds
    # at most; how many streams the relay holds, and their bytes together,
    # so that strangers who open streams cannot take the queues' space
    # (0: no limit).
    stream_max_bytes: int = 64 * 1024 * 1024
    max_streams: int = 10_000
    streams_max_bytes: int = 1024 * 1024 * 1024
    clock: Callable[[], float] = field(default=time.time)

    @property
    def prekey_upload_bytes(self) -> int:
        """The largest prekey upload: a signed blob and the one-time blobs, in JSON."""
        return self.max_prekey_blob * (self.max_one_time_upload + 2)
