"""Faust app factory: the settings that make faust-streaming correct on Tansu (and on Kafka).

Verified against faust-streaming 0.15.3 on Tansu 0.6.0 (``tests/meter/test_faust_on_tansu.py``):

* ``processing_guarantee="at_least_once"``: exactly-once needs a transactional producer, and
  Tansu refuses ``InitProducerId``. Faust's at-least-once producer is not idempotent, so Tansu
  accepts it; ``producer_acks=-1`` is ``acks=all``.
* ``broker_session_timeout`` short (6-10 s): Tansu completes a group's first JoinGroup after
  about half the session timeout, and a restarted worker's join waits for its previous session
  to expire, so Faust's 60 s default means 30-120 s of standstill at every start.
* ``consumer_auto_offset_reset="earliest"``: a new group must not skip events, and "latest"
  would rely on Tansu's ListOffsets(latest), which can point inside the last record batch.
* ``stream_wait_empty=True``: stopping or rebalancing then waits for the batch in flight. If it
  were cancelled instead, Faust would ack it (see below) and commit offsets past unwritten work.
* Memory store, no tables: table recovery reads changelogs up to ListOffsets(latest), which
  Tansu under-reports, so recovered tables silently miss their last writes. Keep state in Redis.

At-least-once rules for agents (Faust's, not Tansu's): ``stream.take_events(n, within=t)`` acks
the whole batch when the body finishes **or raises**, and acked offsets get committed. So a batch
body must never raise: retry transient failures in place until its effects are durable (await
the send futures of what it produces), dead-letter poison input, and on a bug end the process
(``os._exit``) rather than raise, so nothing is committed. ``noack_take`` with manual acks is no
escape: Faust's commit-gap check is off by one and ignores gaps before the first commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from meter.topics import DEFAULT_PARTITIONS


@dataclass(frozen=True, slots=True)
class FaustConfig:
    """What differs between deployments; everything else is fixed by :func:`faust_settings`."""

    app_id: str  # also the consumer group id
    bootstrap: str  # "host:port[,host:port...]"
    partitions: int = DEFAULT_PARTITIONS  # for topics Faust creates
    replication_factor: int = 1
    session_timeout_s: float = 10.0
    commit_interval_s: float = 2.8
    web_port: int | None = None  # None: no web server (Tansu tests, embedded stack)
    data_dir: Path = Path(".credits") / "faust"  # Faust's own files; it would use ./<app_id>-data


def faust_settings(config: FaustConfig) -> dict[str, Any]:
    """The keyword settings for ``faust.App`` (a pure function, so tests can pin them)."""
    assert config.session_timeout_s >= 3.0, "heartbeats every second need >= 3 s of session"
    return {
        "broker": ";".join(f"kafka://{host}" for host in config.bootstrap.split(",")),
        "store": "memory://",
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "producer_linger": 0.005,
        "producer_max_batch_size": 512 * 1024,
        "topic_partitions": config.partitions,
        "topic_replication_factor": config.replication_factor,
        "table_standby_replicas": 0,
        "broker_session_timeout": config.session_timeout_s,
        "broker_heartbeat_interval": 1.0,
        "broker_commit_interval": config.commit_interval_s,
        "consumer_auto_offset_reset": "earliest",
        "stream_wait_empty": True,
        "web_enabled": config.web_port is not None,
        "web_port": config.web_port or 6066,
        "autodiscover": False,
        "datadir": str(config.data_dir / config.app_id),
    }


def make_faust_app(config: FaustConfig) -> faust.App:
    """A Faust app with :func:`faust_settings`. Creating it opens no connection; ``faust worker``
    or ``await app.start()`` does."""
    return faust.App(config.app_id, **faust_settings(config))
