"""``credits bench produce``: single-record publishes, direct to the leader vs through aiokafka.

What a consume pays for its Kafka hop: ``UsageProducer.record`` of one event at a constant
offered rate, one at a time, as the API does at moderate load. Two producers run in the same
process against one embedded Tansu: one with ``direct_single_sends`` (the default,
:mod:`meter.direct_sender`) and one without (every record through the aiokafka producer).
Both have no linger, as in the API. They alternate in rounds so both see the same machine;
each reports the process's CPU per record (Tansu runs in its own process, so this is the
client's cost, plus the generator's scheduling, which both share) and the latency from each
record's scheduled time.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meter.producer import ProducerTuning, UsageProducer
from meter.schema import UsageEvent, make_usage_event
from meter.topics import TopicNames
from stack.tansu import TansuBroker

PARTITIONS = 8
WALLETS = 100


@dataclass(frozen=True, slots=True)
class ProduceBenchPlan:
    rate: float
    seconds: float  # per producer, split into ``rounds`` alternating rounds
    rounds: int = 4


@dataclass(slots=True)
class _Tally:
    cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: _Tally) -> None:
        self.cpu_s += other.cpu_s
        self.latencies += other.latencies

    def figures(self) -> dict[str, float | int]:
        latencies = sorted(self.latencies)
        count = len(latencies)

        def ms(q: float) -> float:
            return round(1000 * latencies[max(0, int(q * count) - 1)], 3) if count else 0.0

        return {
            "records": count,
            "cpu_us_per_record": round(1e6 * self.cpu_s / max(1, count), 1),
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
        }


def _event(n: int) -> UsageEvent:
    return make_usage_event(
        event_id=f"bench-{n}",
        wallet_id=f"wal_{n % WALLETS}",
        member_id="m1",
        feature="ai.summary",
        quantity=1,
        occurred_at=datetime.now(UTC),
        metadata={},
    )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _round(producer: UsageProducer, rate: float, seconds: float, first: int) -> _Tally:
    """Offer ``rate`` records/s for ``seconds``; each is awaited on its own (as a consume)."""
    latencies: list[float] = []

    async def one(n: int, scheduled: float) -> None:
        await producer.record(_event(n))
        latencies.append(time.perf_counter() - scheduled)

    tasks: list[asyncio.Task[None]] = []
    cpu_before = _cpu_s()
    start = time.perf_counter() + 0.01
    for i in range(max(1, int(rate * seconds))):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(first + i, scheduled)))
    await asyncio.gather(*tasks)
    return _Tally(_cpu_s() - cpu_before, latencies)


async def run_produce_bench(plan: ProduceBenchPlan) -> dict[str, Any]:
    topics = TopicNames()
    tally = {"direct": _Tally(), "client": _Tally()}
    with tempfile.TemporaryDirectory(prefix="credits-bench-produce-") as tmp:
        async with TansuBroker(Path(tmp) / "tansu") as broker:
            await broker.create_topics([topics.usage_events], PARTITIONS)
            # No linger on either, as the API configures its producers.
            direct = UsageProducer(
                bootstrap=broker.bootstrap, topics=topics, tuning=ProducerTuning(linger_ms=0)
            )
            client = UsageProducer(
                bootstrap=broker.bootstrap,
                topics=topics,
                tuning=ProducerTuning(linger_ms=0, direct_single_sends=False),
            )
            async with direct, client:
                producers = {"direct": direct, "client": client}
                for name, producer in producers.items():  # metadata, connections
                    await _round(producer, plan.rate, 0.2, 10_000_000 * (name == "direct"))
                per_round = plan.seconds / plan.rounds
                sent = 0
                for _ in range(plan.rounds):
                    for name, producer in producers.items():
                        result = await _round(producer, plan.rate, per_round, 20_000_000 + sent)
                        sent += len(result.latencies)
                        tally[name].add(result)
    direct_figures, client_figures = tally["direct"].figures(), tally["client"].figures()
    return {
        "offered_rps": plan.rate,
        "seconds_each": plan.seconds,
        "rounds": plan.rounds,
        "direct": direct_figures,
        "client": client_figures,
        "cpu_direct_vs_client": round(
            direct_figures["cpu_us_per_record"] / max(1e-9, client_figures["cpu_us_per_record"]),
            3,
        ),
    }
