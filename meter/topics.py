"""Kafka topic names of the metering pipeline, and the one partitioning rule.

Every topic is keyed by wallet id, so all of a wallet's events land on one partition, in order,
and are handled by one aggregator worker at a time. That ordering is what lets the per-wallet
authorisation in Redis and the per-wallet ledger hash chain stay simple.

Names are data (:class:`TopicNames`), not module constants used directly, so a deployment or a
test can run several pipelines on one broker with a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

USAGE_EVENTS: Final = "usage.events"
USAGE_AUTHORIZED: Final = "usage.authorized"
USAGE_REJECTED: Final = "usage.rejected"
SUSPICIOUS_BURN: Final = "alerts.suspicious-burn"
WALLET_EVENTS: Final = "wallet.events"
USAGE_DEAD_LETTER: Final = "usage.dead-letter"

#: Partition count the embedded stack creates its topics with; aggregator workers scale up to it.
DEFAULT_PARTITIONS: Final = 8


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The six topic names one pipeline uses. The defaults are the production names."""

    usage_events: str = USAGE_EVENTS
    usage_authorized: str = USAGE_AUTHORIZED
    usage_rejected: str = USAGE_REJECTED
    suspicious_burn: str = SUSPICIOUS_BURN
    wallet_events: str = WALLET_EVENTS
    usage_dead_letter: str = USAGE_DEAD_LETTER

    @classmethod
    def prefixed(cls, prefix: str) -> TopicNames:
        """Every default name with ``prefix`` in front (``"t1-"`` gives ``"t1-usage.events"``)."""
        assert prefix, "an empty prefix is the default TopicNames()"
        base = cls()
        return cls(**{f.name: prefix + getattr(base, f.name) for f in fields(cls)})

    def all(self) -> tuple[str, ...]:
        """Every topic name, in declaration order (for creating them)."""
        return tuple(getattr(self, f.name) for f in fields(self))


def wallet_key(wallet_id: str) -> bytes:
    """The Kafka message key for a wallet: its id in UTF-8. Used on every topic."""
    assert wallet_id, "a message key must name a wallet"
    return wallet_id.encode("utf-8")
