"""Consumer lag of the pipeline's groups, and waiting until the pipeline has drained.

The embedded broker keeps topics in memory only, so a stopping stack must not stop it while
events are still on their way: everything acknowledged to a producer has to be settled (or
rejected) first. "Drained" means, for each stage in pipeline order, the stage's consumer group
has committed an offset at or past the end of every partition of its input topic.

How lag is measured, and why:

* the end of a partition is the high watermark of a *fetch response*
  (``consumer.highwater(tp)``), never ``end_offsets()``: Tansu answers ListOffsets(latest) with
  the base offset of the last record batch + 1 (see ``stack/tansu.py``);
* committed offsets come from ``consumer.committed(tp)`` of a consumer in that group that never
  subscribes, so measuring does not join the group or disturb its members (the admin client's
  OffsetFetch cannot parse Tansu's answer);
* stages are checked in order within one pass (aggregator, then settlement): an upstream stage
  commits only after its output was acknowledged, so once it has caught up, the downstream
  topic's end read *afterwards* covers everything upstream will ever produce from that input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from domain.errors import Unavailable

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stage:
    """One consumer group reading one input topic."""

    group_id: str
    topic: str


@dataclass(frozen=True, slots=True)
class StageLag:
    """Records the stage's group has not committed past, per partition."""

    stage: Stage
    behind: Mapping[int, int]

    @property
    def total(self) -> int:
        return sum(self.behind.values())

    def describe(self) -> str:
        busy = {p: n for p, n in sorted(self.behind.items()) if n}
        detail = f" (partitions {busy})" if busy else ""
        return f"{self.stage.group_id} on {self.stage.topic}: {self.total} behind{detail}"


@dataclass(frozen=True, slots=True)
class DrainReport:
    drained: bool
    waited_s: float
    lags: tuple[StageLag, ...]

    def summary(self) -> str:
        state = "drained" if self.drained else "NOT drained"
        details = "; ".join(lag.describe() for lag in self.lags)
        return f"pipeline {state} after {self.waited_s:.1f}s: {details}"


class EndProbe:
    """The current end (high watermark) of every partition of some topics, from fetches.

    One group-less consumer assigned to every partition; its fetches run in the background
    and the records they bring are discarded. Commits nothing and joins no group.
    """

    def __init__(self, bootstrap: str, topics: Sequence[str], *, timeout_ms: int = 10_000) -> None:
        assert topics, "nothing to probe"
        self._bootstrap = bootstrap
        self._topics = tuple(dict.fromkeys(topics))
        self._timeout_ms = timeout_ms
        self._consumer: AIOKafkaConsumer | None = None
        self.partitions: dict[str, tuple[TopicPartition, ...]] = {}

    async def start(self) -> None:
        """Connect and assign; raise ``Unavailable`` naming a missing topic or the broker."""
        # "latest" places the fetch position near the end (Tansu's latest may be a little
        # short, which only costs re-reading part of the last batch): we want watermarks,
        # not data.
        consumer = _consumer(self._bootstrap, None, self._timeout_ms, auto_offset_reset="latest")
        self._consumer = consumer
        try:
            await consumer.start()
            await consumer.topics()
            for topic in self._topics:
                found = consumer.partitions_for_topic(topic)
                if not found:
                    raise Unavailable(
                        f"topic {topic} does not exist on {self._bootstrap}; create the "
                        "pipeline's topics first (credits up does)"
                    )
                self.partitions[topic] = tuple(TopicPartition(topic, p) for p in sorted(found))
            consumer.assign([tp for tps in self.partitions.values() for tp in tps])
        except KafkaError as exc:
            await self.stop()
            raise Unavailable(f"cannot read offsets on {self._bootstrap}: {exc!r}") from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(KafkaError):
                await consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def ends(self, topic: str) -> dict[TopicPartition, int]:
        """The end of each partition of ``topic`` from fetch responses newer than this call."""
        consumer = self._consumer
        assert consumer is not None, "EndProbe.start() was not awaited"
        tps = self.partitions[topic]
        since_ms = int(time.time() * 1000)
        deadline = time.monotonic() + self._timeout_ms / 1000
        while True:
            fresh = {
                tp: consumer.highwater(tp)
                for tp in tps
                if (consumer.last_poll_timestamp(tp) or 0) >= since_ms
            }
            ends = {tp: int(end) for tp, end in fresh.items() if end is not None}
            if len(ends) == len(tps):
                return ends
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"no fetch answer for every partition of {topic} on {self._bootstrap} "
                    f"within {self._timeout_ms} ms; is the broker up?"
                )
            # getmany hands over (and so discards) what the background fetches brought.
            await consumer.getmany(*tps, timeout_ms=50)


class LagProbe:
    """Measures the lag of consumer groups on one Kafka cluster (see the module doc).

    ``async with LagProbe(bootstrap, stages) as probe: lags = await probe.measure()``. It holds
    an :class:`EndProbe` and one non-subscribing consumer per group.
    """

    def __init__(
        self, bootstrap: str, stages: Sequence[Stage], *, timeout_ms: int = 10_000
    ) -> None:
        assert stages, "nothing to measure"
        self._bootstrap = bootstrap
        self._stages = tuple(stages)
        self._timeout_ms = timeout_ms
        self._ends = EndProbe(bootstrap, [stage.topic for stage in stages], timeout_ms=timeout_ms)
        self._groups: dict[str, AIOKafkaConsumer] = {}

    async def start(self) -> None:
        """Connect; raise ``Unavailable`` if the broker or a topic is missing."""
        await self._ends.start()
        try:
            for stage in self._stages:
                if stage.group_id not in self._groups:
                    consumer = _consumer(
                        self._bootstrap, stage.group_id, self._timeout_ms, enable_auto_commit=False
                    )
                    self._groups[stage.group_id] = consumer
                    await consumer.start()
        except KafkaError as exc:
            await self.stop()
            raise Unavailable(f"cannot measure consumer lag on {self._bootstrap}: {exc!r}") from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        groups, self._groups = list(self._groups.values()), {}
        for consumer in groups:
            with contextlib.suppress(KafkaError):
                await consumer.stop()
        await self._ends.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def measure(self) -> tuple[StageLag, ...]:
        """Every stage's lag, in stage order, each end read after the previous stage's check."""
        return tuple([await self.stage_lag(stage) for stage in self._stages])

    async def stage_lag(self, stage: Stage) -> StageLag:
        """Committed vs. end of each partition of ``stage.topic`` (ends fresher than the call)."""
        ends = await self._ends.ends(stage.topic)
        group = self._groups[stage.group_id]
        behind: dict[int, int] = {}
        for tp, end in ends.items():
            committed = await group.committed(tp)
            behind[tp.partition] = max(0, end - (committed or 0))
        return StageLag(stage, behind)


def _consumer(
    bootstrap: str, group_id: str | None, timeout_ms: int, **options: object
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id="credits-drain-probe",
        request_timeout_ms=timeout_ms,
        fetch_max_wait_ms=100,  # an idle partition answers quickly, with its watermark
        max_partition_fetch_bytes=64 * 1024,
        **options,
    )


async def wait_until_drained(
    bootstrap: str,
    stages: Sequence[Stage],
    *,
    timeout_s: float,
    interval_s: float = 0.25,
    abort: asyncio.Event | None = None,
) -> DrainReport:
    """Wait until every stage has caught up in one pass (see the module doc), at most
    ``timeout_s`` (or until ``abort`` is set). Never raises for lag: the report says whether
    the pipeline drained; raises ``Unavailable`` only when lag cannot be measured at all."""
    started = time.monotonic()
    last_logged = started
    async with LagProbe(bootstrap, stages) as probe:
        while True:
            lags = await probe.measure()
            waited = time.monotonic() - started
            if all(lag.total == 0 for lag in lags):
                return DrainReport(True, waited, lags)
            if waited >= timeout_s or (abort is not None and abort.is_set()):
                return DrainReport(False, waited, lags)
            if time.monotonic() - last_logged >= 2.0:  # progress, not a line per poll
                last_logged = time.monotonic()
                _log.info("draining: %s", "; ".join(lag.describe() for lag in lags))
            await asyncio.sleep(interval_s)
