"""Prometheus metrics of the relay (served at ``/metrics``).

Labels are route templates and outcome codes only: never a queue id, key,
client address or size of a particular envelope beyond the histogram.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["RelayMetrics"]


class RelayMetrics:
    """One registry per relay application (tests run several in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "securechan_relay_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "securechan_relay_request_seconds",
            "Request latency",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )
        self.envelopes_stored = Counter(
            "securechan_relay_envelopes_stored", "Envelopes committed", registry=r
        )
        self.envelope_bytes = Histogram(
            "securechan_relay_envelope_bytes",
            "Envelope sizes",
            registry=r,
            buckets=(1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144),
        )
        self.queues_created = Counter("securechan_relay_queues_created", "Queues", registry=r)
        self.rate_limited = Counter(
            "securechan_relay_rate_limited", "429 answers", ["limit"], registry=r
        )
        self.rejected = Counter(
            "securechan_relay_rejected", "Refused envelopes", ["reason"], registry=r
        )
        self.auth_failures = Counter(
            "securechan_relay_auth_failures",
            "Refused request authentication (401 and 403), by reason",
            ["reason"],
            registry=r,
        )
        self.read_nonces = Gauge(
            "securechan_relay_read_nonces", "Read request nonces held in memory", registry=r
        )
        self.websockets = Gauge("securechan_relay_websockets", "Open WebSockets", registry=r)
        self.fetches_active = Gauge(
            "securechan_relay_fetches_active", "Fetch answers being built or written", registry=r
        )
        self.fetch_bytes = Histogram(
            "securechan_relay_fetch_answer_bytes",
            "Fetch answer sizes (JSON bytes)",
            registry=r,
            buckets=(4096, 65536, 524288, 1048576, 4194304, 8388608, 16777216),
        )
        self.storage_used = Gauge(
            "securechan_relay_storage_used_bytes", "relay.db pages in use, in bytes", registry=r
        )
        self.storage_free = Gauge(
            "securechan_relay_storage_free_bytes",
            "Free space on the data folder's file system",
            registry=r,
        )
        self.reclaimed_pages = Gauge(
            "securechan_relay_storage_reclaimed_pages",
            "relay.db pages given back by incremental vacuum",
            registry=r,
        )
        self.ready = Gauge("securechan_relay_ready", "1 when /readyz answers 200", registry=r)
        self.ws_queues = Gauge(
            "securechan_relay_ws_queues", "Queues with at least one WebSocket open", registry=r
        )
        # Connection caps (connlimit.py): set by the serving process.
        self.connections = Gauge(
            "securechan_relay_connections", "Open client connections", registry=r
        )
        self.open_fds = Gauge(
            "securechan_relay_open_fds", "File descriptors the relay process holds", registry=r
        )
        self.fd_limit = Gauge(
            "securechan_relay_fd_limit", "The process's file-descriptor limit", registry=r
        )
        self.connections_refused = Counter(
            "securechan_relay_connections_refused",
            "Connections or WebSockets refused by a cap",
            ["limit"],
            registry=r,
        )
        self.log_size = Gauge(
            "securechan_relay_log_size", "Leaves in the transparency log", registry=r
        )
        # Group commit at work: write jobs per commit is the mean batch size.
        self.db_commits = Gauge(
            "securechan_relay_db_commits", "relay.db write transactions committed", registry=r
        )
        self.db_write_jobs = Gauge(
            "securechan_relay_db_write_jobs", "relay.db write jobs run", registry=r
        )
        self.log_commits = Gauge(
            "securechan_relay_log_commits", "Transparency log tree commits", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
