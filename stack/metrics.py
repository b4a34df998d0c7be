"""Prometheus metrics of one role process: one registry per process, exposed on its own port.

Every role counts events in and out per topic; the aggregator counts authorisation decisions
by outcome; the workers observe batch sizes and consumer lag; dead letters are counted by
reason; the reconciler reports mirror drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)


@dataclass
class RoleMetrics:
    role: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter(
            "credits_events_in", "Events consumed", ["role", "topic"], registry=r
        )
        self.events_out = Counter(
            "credits_events_out", "Events produced", ["role", "topic"], registry=r
        )
        self.decisions = Counter(
            "credits_authorizations", "Authorisation decisions", ["role", "outcome"], registry=r
        )
        self.batch_size = Histogram(
            "credits_batch_size", "Events per batch", ["role"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "credits_batch_seconds", "Seconds to process one batch", ["role"], registry=r
        )
        self.consumer_lag = Gauge(
            "credits_consumer_lag", "Records behind the log end", ["role", "partition"], registry=r
        )
        self.dead_letters = Counter(
            "credits_dead_letters",
            "Events sent to the dead-letter topic",
            ["role", "reason"],
            registry=r,
        )
        self.settled = Counter(
            "credits_settled_events",
            "Usage events by settlement result",
            ["role", "result"],
            registry=r,
        )
        self.drift = Gauge(
            "credits_mirror_drift_credits",
            "Total |drift| found by the last reconcile",
            ["role"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
