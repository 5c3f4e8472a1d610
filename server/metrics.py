"""Prometheus metrics of one relay app, on its own registry (never the global one, so
several apps can live in one process, as the tests run them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "RelayMetrics"]


class RelayMetrics:
    """Connections, messages in and out, queue depth, refusals by reason, share links."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connections = Gauge(
            "relay_connections",
            "Open WebSocket connections (authenticated or not).",
            registry=self.registry,
        )
        self.authenticated = Gauge(
            "relay_authenticated_connections",
            "Authenticated WebSocket connections.",
            registry=self.registry,
        )
        self.messages_in = Counter(
            "relay_messages_in",
            "Sends accepted (one per client message, duplicates excluded).",
            registry=self.registry,
        )
        self.messages_out = Counter(
            "relay_messages_out",
            "Deliver frames written to devices.",
            registry=self.registry,
        )
        self.acks = Counter(
            "relay_acks",
            "Queue entries deleted on acknowledgement.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "relay_queue_depth_last",
            "Queue depth of the device last read at authentication (sampled).",
            registry=self.registry,
        )
        self.refusals = Counter(
            "relay_refusals",
            "Refusals (error frames, refusing closes, HTTP errors) by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.shares_stored = Counter(
            "relay_share_links_stored",
            "Share links uploaded.",
            registry=self.registry,
        )
        self.share_views = Counter(
            "relay_share_link_views",
            "Share-link ciphertexts served to a matching proof.",
            registry=self.registry,
        )
        self.shares_burned = Counter(
            "relay_share_links_burned",
            "Share links deleted after too many wrong proofs.",
            registry=self.registry,
        )
        self.purged = Counter(
            "relay_purged_rows",
            "Expired rows deleted by the purge task.",
            registry=self.registry,
        )

    def refused(self, reason: str) -> None:
        """Count one refusal."""
        self.refusals.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
