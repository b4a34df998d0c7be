"""The self-check of ``credits up --once``: follow a burst of demo traffic through the pipeline,
then scrape every role's metrics.

A burst is accounted for when every distinct valid event it sent is either settled in the
ledger (a ``usage`` transaction with its event id) or rejected with a reason on
``usage.rejected``, and every malformed payload is kept on the dead-letter topic: invariant 6
("an acknowledged event is never lost") checked end to end. Topics are read only between the
offsets marked before the burst and their ends after the drain, so the check stays small on a
long-lived broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from domain.errors import Unavailable
from meter.schema import SchemaViolation, decode_dead_letter, decode_usage_rejected
from stack.demo_traffic import TrafficReport
from stack.drain import DrainReport, EndProbe

_log = logging.getLogger(__name__)

Offsets = Mapping[TopicPartition, int]


async def mark_ends(bootstrap: str, topics: list[str]) -> dict[str, dict[TopicPartition, int]]:
    """The current end of every partition of ``topics`` (where a later read starts)."""
    async with EndProbe(bootstrap, topics) as probe:
        return {topic: await probe.ends(topic) for topic in topics}


async def read_range(
    bootstrap: str, start: Offsets, end: Offsets, *, timeout_s: float = 20.0
) -> list[bytes]:
    """Values of the records in ``[start, end)`` of each partition (one topic or several)."""
    wanted = {tp: stop for tp, stop in end.items() if stop > start.get(tp, 0)}
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    values: list[bytes] = []
    try:
        await consumer.start()
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, start.get(tp, 0))
        deadline = time.monotonic() + timeout_s
        while wanted:
            if time.monotonic() > deadline:
                raise Unavailable(f"reading {sorted(map(str, wanted))} took over {timeout_s}s")
            batches = await consumer.getmany(*wanted, timeout_ms=200)
            for tp, records in batches.items():
                values += [r.value for r in records if r.offset < wanted[tp] and r.value]
                if await consumer.position(tp) >= wanted[tp]:
                    del wanted[tp]
                    consumer.pause(tp)
    except KafkaError as exc:
        raise Unavailable(f"reading back topics on {bootstrap} failed: {exc!r}") from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()
    return values


async def ledger_transactions(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM ledger_transactions")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def settled_events(database_url: str, wallet_id: str, prefix: str) -> set[str]:
    """Event ids of the usage transactions of ``wallet_id`` that start with ``prefix``."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT source_id FROM ledger_transactions WHERE wallet_id = %s "
            "AND source = 'usage' AND left(source_id, %s) = %s",
            (wallet_id, len(prefix), prefix),
        )
        return {str(row[0]) for row in await cur.fetchall()}


@dataclass(slots=True)
class BurstOutcome:
    traffic: TrafficReport
    drain: DrainReport
    ledger_before: int
    ledger_after: int
    settled: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> events not settled
    dead_lettered: Counter[str] = field(default_factory=Counter)  # reason -> payloads
    missing: tuple[str, ...] = ()  # valid events neither settled nor rejected

    @property
    def unaccounted(self) -> int:
        """Sent but neither settled, rejected nor dead-lettered (must be 0)."""
        malformed = self.traffic.malformed - sum(self.dead_lettered.values())
        return len(self.missing) + max(0, malformed)

    @property
    def ok(self) -> bool:
        return (
            self.drain.drained
            and self.settled > 0
            and self.ledger_after > self.ledger_before
            and self.unaccounted == 0
        )

    def lines(self) -> list[str]:
        t = self.traffic
        return [
            f"sent {t.events} events + {t.retries} retries of an event id + {t.malformed} "
            f"malformed (run {t.run_id}, {t.seconds:.1f}s)",
            f"settled {self.settled} in the ledger (transactions {self.ledger_before} -> "
            f"{self.ledger_after}), rejected {sum(self.rejected.values())}"
            f"{_reasons(self.rejected)}, dead letters {sum(self.dead_lettered.values())}"
            f"{_reasons(self.dead_lettered)}, unaccounted {self.unaccounted}"
            + (f" (e.g. {', '.join(self.missing[:3])})" if self.missing else ""),
            self.drain.summary(),
        ]


def _reasons(counts: Counter[str]) -> str:
    return " (" + ", ".join(f"{r} {n}" for r, n in counts.most_common()) + ")" if counts else ""


async def account_burst(
    *,
    database_url: str,
    bootstrap: str,
    traffic: TrafficReport,
    drain: DrainReport,
    ledger_before: int,
    rejected_from: Offsets,
    dead_letters_from: Offsets,
    rejected_topic: str,
    dead_letter_topic: str,
) -> BurstOutcome:
    """Where each message of ``traffic`` ended up (call after the drain)."""
    ends = await mark_ends(bootstrap, [rejected_topic, dead_letter_topic])
    prefix = f"demo:{traffic.run_id}:"
    # The generator numbers a run's distinct events 1..N (see stack.demo_traffic).
    sent = {f"{prefix}{n:06d}" for n in range(1, traffic.events + 1)}
    settled = await settled_events(database_url, traffic.wallet_id, prefix)
    outcome = BurstOutcome(
        traffic=traffic,
        drain=drain,
        ledger_before=ledger_before,
        ledger_after=await ledger_transactions(database_url),
        settled=len(settled & sent),
    )
    rejected: dict[str, str] = {}
    for raw in await read_range(bootstrap, rejected_from, ends[rejected_topic]):
        try:
            refusal = decode_usage_rejected(raw)
        except SchemaViolation:
            continue  # not ours to judge here; the topic's consumers dead-letter it
        event_id = refusal.event.event_id
        # A retry of a settled event may be refused as a duplicate: it is still settled once.
        if event_id in sent and event_id not in settled:
            rejected.setdefault(event_id, refusal.reason)
    outcome.rejected.update(rejected.values())
    outcome.missing = tuple(sorted(sent - settled - rejected.keys()))
    kept: dict[bytes, str] = {}
    for raw in await read_range(bootstrap, dead_letters_from, ends[dead_letter_topic]):
        try:
            letter = decode_dead_letter(raw)
        except SchemaViolation:
            continue
        if traffic.run_id.encode() in letter.raw():
            kept.setdefault(letter.raw(), letter.reason)
    outcome.dead_lettered.update(kept.values())
    return outcome


@dataclass(frozen=True, slots=True)
class Scrape:
    """One role's ``/metrics`` answer, summarised: counter totals by family (and outcome)."""

    role: str
    url: str
    error: str | None = None
    series: int = 0
    totals: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        if self.error is not None:
            return f"{self.role:<13}{self.url}  NO ANSWER: {self.error}"
        shown = ", ".join(f"{k} {v:g}" for k, v in self.totals.items() if v) or "all zero"
        return f"{self.role:<13}{self.url}  answered ({self.series} series): {shown}"


def scrape(role: str, url: str, timeout_s: float = 5.0) -> Scrape:
    """GET ``url`` and summarise it (blocking; run it in a thread from async code)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 -- our URL
            text = response.read().decode()
    except OSError as exc:
        return Scrape(role, url, error=repr(exc))
    totals: dict[str, float] = {}
    series = 0
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("credits_"):
            continue
        short = family.name.removeprefix("credits_")
        for sample in family.samples:
            series += 1
            if family.type == "counter" and sample.name.endswith("_total"):
                label = next(
                    (
                        sample.labels[k]
                        for k in ("outcome", "result", "reason")
                        if k in sample.labels
                    ),
                    None,
                )
                key = f"{short}[{label}]" if label else short
                totals[key] = totals.get(key, 0.0) + sample.value
            elif family.type == "histogram" and sample.name.endswith("_count"):
                key = f"{short} observations"
                totals[key] = totals.get(key, 0.0) + sample.value
    return Scrape(role, url, series=series, totals=dict(sorted(totals.items())))


async def scrape_all(endpoints: Mapping[str, str]) -> list[Scrape]:
    """Scrape every ``role -> url`` concurrently."""
    return list(
        await asyncio.gather(
            *(asyncio.to_thread(scrape, role, url) for role, url in endpoints.items())
        )
    )
