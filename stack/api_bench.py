"""``credits bench api``: ``POST /wallet/consume`` against the trivial ``GET /health``.

One run, one API process (``credits api``, as in production; ``--api-processes`` for more),
one scratch database, one Redis key prefix, one embedded Tansu. Wallets are created and funded
through the API. Then, in order:

1. **Open loop, latency** (``seconds`` each, trivial then consume, with a **warm-up** of
   ``warmup_s`` just before the consume phase: consumes at the offered rate, not measured —
   first-request costs: connection pools, the key cache, the mirror — whose charges are read
   back before measuring): the open-loop generator of
   :mod:`stack.load_gen` offers both endpoints the *same* constant rate, latency counted from
   each request's scheduled time (no coordinated omission). This gives p50/p99/p999 at a
   realistic load, and CPU per request. Its throughput ratio
   (``consume_vs_trivial_at_offered_rate``) is ~1.0 whenever the server keeps up: the
   generator sends no faster than it offers, so it says nothing about capacity.
2. **Closed loop, saturation** (``saturation_s`` each, in alternating one-second slices —
   trivial, consume, trivial, consume... — so both endpoints see the same machine; 0 skips
   it): ``saturation_connections`` keep-alive connections each send their next request as
   soon as the previous answer arrives, so the server is never idle and ``achieved_rps`` is
   the most it answers (``trivial_max_rps``, ``consume_max_rps``; latency counted from send).
   The throughput target — consume at least half the trivial endpoint's — is a statement
   about capacity, so ``consume_vs_trivial`` is ``consume_max_rps / trivial_max_rps``;
   ``consume_vs_trivial_slices`` gives the minimum, median and maximum of the per-slice
   ratios.

Every twentieth consume goes to a *tight* wallet funded for only ``TIGHT_OPERATIONS``
operations, so refusals (402, a correct answer, counted as served) happen under load; the bulk
wallets are funded far beyond what any phase can spend, so none of their consumes is refused
for lack of credits. Consumes in the three consume phases use disjoint index ranges (warm-up
``10_000_000 + i``, open loop ``i``, saturation ``20_000_000 + i``), hence distinct idempotency
keys. Afterwards every wallet's balance is read back and compared with the credits that the
200 responses of *both* measured consume phases say were charged: ``over_authorized`` counts
credits charged beyond funding, ``balance_mismatches`` wallets whose balance disagrees.

Rate limits still apply (``domain/config/caps.toml``, ``api``: 100/s per wallet); a 429 is
an answer too, but a cheap one, so use enough ``--wallets`` that the saturation rate divided
by the wallet count stays well under it (``consume_max_statuses`` shows any 429s).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil

from meter.topics import TopicNames
from settlement.ledger.scratch import scratch_database
from stack.api_process import start_api_process, wait_until_healthy
from stack.load_gen import LoadResult, Request, run_load, run_saturation
from stack.ports import free_port
from stack.redis_cleanup import drop_key_space
from stack.tansu import TansuBroker

FEATURE = "api.heavy_query"
HEALTH = Request("GET", "/health", {})
TIGHT_OPERATIONS = 50
# Credits per bulk wallet: 2,000,000 consumes of the 5-credit feature. The wallet rate limit
# (caps.toml, api: 3,000/min) lets one wallet be charged at most ~15,000 credits a minute, so
# even the longest run `bench api` allows (2 s warm-up, 600 s open loop, 120 s saturation of
# consume) stays far below it: a bulk wallet never answers 402. (3,000 req/s for 5 s over 100
# wallets is ~720 credits each.)
BULK_FUNDING = 10_000_000
SATURATION_OFFSET = 20_000_000  # above the open loop's 0..rate*seconds and the warm-up's 10M+
SATURATION_SLICE_S = 1.0
"""Length of one saturation slice; trivial and consume slices alternate (see _saturation)."""
SATURATION_ROUND_INDICES = 1_000_000  # consume indices per slice: far above any slice's count
WARMUP_OFFSET = 10_000_000


@dataclass(frozen=True, slots=True)
class ApiBenchPlan:
    rate: float
    seconds: float
    wallets: int
    server_url: str
    redis_url: str
    api_processes: int = 1
    warmup_s: float = 2.0
    saturation_s: float = 5.0  # closed-loop time per endpoint (in 1 s slices); 0 skips it
    saturation_connections: int = 32


@dataclass(slots=True)
class _Wallet:
    wallet_id: str
    token: str
    funded: int
    charged: int = 0


async def _wallets(url: str, admin: str, plan: ApiBenchPlan, price: int) -> list[_Wallet]:
    headers = {"Authorization": f"Bearer {admin}"}
    made: list[_Wallet] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i in range(plan.wallets + 1):
            tight = i == plan.wallets
            wallet_id = f"bench_api_{'tight' if tight else i}"
            body = {"wallet_id": wallet_id, "owner_type": "community", "owner_id": wallet_id,
                    "owner_member_id": "owner"}  # fmt: skip
            created = await client.post(
                "/admin/wallets", json=body, headers={**headers, "Idempotency-Key": wallet_id}
            )
            created.raise_for_status()
            funded = price * TIGHT_OPERATIONS if tight else BULK_FUNDING
            fund = {"credits": funded, "reason": "goodwill", "actor": "bench"}
            response = await client.post(
                f"/admin/wallets/{wallet_id}/adjustments", json=fund,
                headers={**headers, "Idempotency-Key": f"fund-{wallet_id}"},
            )  # fmt: skip
            response.raise_for_status()
            made.append(_Wallet(wallet_id, created.json()["owner_key"]["token"], funded))
    return made


def _consume_request(wallets: list[_Wallet], run_id: str) -> Callable[[int], Request]:
    """Every 20th request goes to the tight wallet; members rotate so that no member or
    wallet reaches its rate limit at the default rate (100 wallets, 1,000 req/s)."""
    bodies = [json.dumps({"feature": FEATURE, "member_id": f"m{m}"}).encode() for m in range(20)]

    def make(i: int) -> Request:
        wallet = wallets[-1] if i % 20 == 19 else wallets[i % (len(wallets) - 1)]
        body = bodies[(i // len(wallets)) % len(bodies)]
        return Request(
            "POST", "/wallet/consume",
            {"Authorization": f"Bearer {wallet.token}", "Content-Type": "application/json",
             "Idempotency-Key": f"{run_id}-{i}"},
            body,
        )  # fmt: skip

    return make


def _running(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def _figures(result: LoadResult, prefix: str = "") -> dict[str, float | int]:
    return {
        f"{prefix}achieved_rps": round(result.achieved_rps, 1),
        f"{prefix}p50_ms": result.percentile_ms(0.50),
        f"{prefix}p99_ms": result.percentile_ms(0.99),
        f"{prefix}p999_ms": result.percentile_ms(0.999),
    }


async def _available(url: str, wallets: list[_Wallet]) -> list[int]:
    """Each wallet's available credits, read through one client (building an httpx client
    costs tens of milliseconds of CPU: one per wallet kept the generator's process busy for
    seconds right before the measured phase)."""
    available: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for wallet in wallets:
            headers = {"Authorization": f"Bearer {wallet.token}"}
            got = await client.get("/wallet", headers=headers)
            available.append(got.json()["balances"]["available"])
    return available


async def _check_balances(url: str, wallets: list[_Wallet]) -> tuple[int, int]:
    """(over-authorised credits, wallets whose balance disagrees with the 200s)."""
    over, mismatched = 0, 0
    for wallet, available in zip(wallets, await _available(url, wallets), strict=True):
        over += max(0, wallet.charged - wallet.funded)
        if available != wallet.funded - wallet.charged or available < 0:
            mismatched += 1
    return over, mismatched


async def run_api_bench(plan: ApiBenchPlan) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    with (
        tempfile.TemporaryDirectory(prefix="credits-bench-api-") as tmp,
        scratch_database(plan.server_url) as database_url,
    ):
        tmp_path = Path(tmp)
        async with TansuBroker(tmp_path / "tansu") as broker:
            await broker.create_topics(TopicNames().all(), 8)
            admin, port = secrets.token_urlsafe(32), free_port()
            env = {
                **os.environ, "DATABASE_URL": database_url, "REDIS_URL": plan.redis_url,
                "KAFKA_BOOTSTRAP": broker.bootstrap, "CREDITS_ADMIN_KEY": admin,
                "CREDITS_KEY_PREFIX": f"bench{run_id}", "CREDITS_DATA_DIR": str(tmp_path),
            }  # fmt: skip
            log = tmp_path / "api.log"
            procs = [
                start_api_process(env, port, log.with_name(f"api{n}.log"), reuse_port=True)
                for n in range(plan.api_processes)
            ]
            url = f"http://127.0.0.1:{port}"
            try:
                for each in procs:
                    await wait_until_healthy(url, alive=partial(_running, each))
                from domain.pricing import load_catalogue  # noqa: PLC0415

                price = load_catalogue().price(FEATURE)
                wallets = await _wallets(url, admin, plan, price)
                make = _consume_request(wallets, run_id)
                api = _Processes([psutil.Process(p.pid) for p in procs])
                trivial_phase = await _measure(
                    api,
                    run_load("127.0.0.1", port, lambda i: HEALTH, rate=plan.rate,
                             seconds=plan.seconds),
                )  # fmt: skip
                # Warm up right before the consume phases (key cache, mirror, connections).
                await run_load("127.0.0.1", port, lambda i: make(WARMUP_OFFSET + i),
                               rate=plan.rate, seconds=plan.warmup_s)  # fmt: skip
                # The warm-up charged too: start from what is left.
                for wallet, available in zip(wallets, await _available(url, wallets), strict=True):
                    wallet.funded = available
                phases = await _phases(plan, port, make, api, trivial_phase)
                tally = _tally((phases.consume.result, phases.consume_max.result), wallets)
                over, mismatched = await _check_balances(url, wallets)
            finally:
                for each in procs:
                    each.terminate()
                for n, each in enumerate(procs):
                    each.wait(timeout=30)
                    _report_server_errors(log.with_name(f"api{n}.log"))
                keys_dropped = await drop_key_space(plan.redis_url, env["CREDITS_KEY_PREFIX"])
    trivial, consume = phases.trivial.result, phases.consume.result
    trivial_max, consume_max = phases.trivial_max.result, phases.consume_max.result
    statuses = Counter(sample.status for sample in consume.samples)
    max_statuses = Counter(sample.status for sample in consume_max.samples)
    return {
        "offered_rps": plan.rate,
        "redis_key_prefix": f"bench{run_id}",
        "redis_keys_dropped": keys_dropped,
        "api_processes": plan.api_processes,
        "seconds": plan.seconds,
        **_figures(consume),
        "errors": _errors(consume),
        "authorized": statuses.get(200, 0),
        "refused_insufficient": statuses.get(402, 0),
        "rate_limited": statuses.get(429, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": consume.failures,
        "error_sample": _error_sample(consume) or _error_sample(consume_max),
        "over_authorized": over,
        "balance_mismatches": mismatched,
        "charged_credits": tally,
        **_figures(trivial, "trivial_"),
        "trivial_errors": _trivial_errors(trivial),
        "api_cpu_us_per_request": phases.consume.cpu_us_per_request(),
        "trivial_api_cpu_us_per_request": phases.trivial.cpu_us_per_request(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "consume_vs_trivial_at_offered_rate": _ratio(consume, trivial),
        "saturation_s": plan.saturation_s,
        "saturation_connections": plan.saturation_connections,
        "trivial_max_rps": round(trivial_max.achieved_rps, 1),
        "trivial_max_p99_ms": _p99(trivial_max),
        "trivial_max_errors": _trivial_errors(trivial_max),
        "consume_max_rps": round(consume_max.achieved_rps, 1),
        "consume_max_p99_ms": _p99(consume_max),
        "consume_max_errors": _errors(consume_max),
        "consume_max_statuses": {str(k): v for k, v in sorted(max_statuses.items())},
        "api_cpu_us_per_request_max": phases.consume_max.cpu_us_per_request(),
        "trivial_api_cpu_us_per_request_max": phases.trivial_max.cpu_us_per_request(),
        "consume_vs_trivial": _ratio(consume_max, trivial_max),
        "consume_vs_trivial_slices": _slice_ratios(phases.consume_max, phases.trivial_max),
    }


@dataclass(frozen=True, slots=True)
class _Phase:
    result: LoadResult
    cpu_s: float  # the API processes' CPU time (user + system) during the phase
    slices: tuple[LoadResult, ...] = ()  # the saturation slices merged into ``result``

    def cpu_us_per_request(self) -> float:
        return round(1e6 * self.cpu_s / max(1, len(self.result.samples)), 1)


@dataclass(frozen=True, slots=True)
class _Phases:
    trivial: _Phase
    consume: _Phase
    trivial_max: _Phase  # closed loop (saturation); empty when the plan skips it
    consume_max: _Phase


async def _phases(
    plan: ApiBenchPlan,
    port: int,
    make: Callable[[int], Request],
    api: _Processes,
    trivial: _Phase,
) -> _Phases:
    """The phases after the open-loop trivial one (and the warm-up), in order: open-loop
    consume; saturation trivial, consume."""
    host = "127.0.0.1"
    consume = await _measure(api, run_load(host, port, make, rate=plan.rate, seconds=plan.seconds))
    if plan.saturation_s <= 0:
        skipped = _Phase(LoadResult(offered_rps=0.0, seconds=0.0), 0.0)
        return _Phases(trivial, consume, skipped, skipped)
    trivial_max, consume_max = await _saturation(plan, port, make, api)
    return _Phases(trivial, consume, trivial_max, consume_max)


async def _saturation(
    plan: ApiBenchPlan, port: int, make: Callable[[int], Request], api: _Processes
) -> tuple[_Phase, _Phase]:
    """Saturation in alternating slices (trivial, consume, trivial, ...) of about
    :data:`SATURATION_SLICE_S`, merged per endpoint. The machine's speed drifts by tens of
    percent over a minute (measured: the trivial endpoint's CPU per request ranged 131-195 µs
    from one run to the next); back-to-back phases compared one endpoint in a fast spell with
    the other in a slow one, interleaved slices compare them under the same conditions."""
    rounds = max(1, round(plan.saturation_s / SATURATION_SLICE_S))
    trivial: list[_Phase] = []
    consume: list[_Phase] = []
    for n in range(rounds):
        trivial.append(await _measure(api, _saturate(plan, port, _health)))
        consume.append(await _measure(api, _saturate(plan, port, partial(_shifted, make, n))))
    return _merged(trivial), _merged(consume)


def _saturate(
    plan: ApiBenchPlan, port: int, make: Callable[[int], Request]
) -> Awaitable[LoadResult]:
    rounds = max(1, round(plan.saturation_s / SATURATION_SLICE_S))
    return run_saturation(
        "127.0.0.1", port, make, connections=plan.saturation_connections,
        seconds=plan.saturation_s / rounds,
    )  # fmt: skip


def _health(i: int) -> Request:
    return HEALTH


def _shifted(make: Callable[[int], Request], round_no: int, i: int) -> Request:
    """The consume of index ``i`` of saturation round ``round_no`` (distinct across rounds)."""
    return make(SATURATION_OFFSET + round_no * SATURATION_ROUND_INDICES + i)


def _merged(slices: list[_Phase]) -> _Phase:
    merged = LoadResult(offered_rps=0.0, seconds=sum(s.result.seconds for s in slices))
    for each in slices:
        merged.samples.extend(each.result.samples)
        merged.failures += each.result.failures
    return _Phase(merged, sum(s.cpu_s for s in slices), tuple(s.result for s in slices))


async def _measure(api: _Processes, load: Awaitable[LoadResult]) -> _Phase:
    """Run ``load`` (a coroutine not yet started), with the API's CPU time it took."""
    before = _cpu_s(api)
    result = await load
    return _Phase(result, _cpu_s(api) - before)


def _slice_ratios(consume: _Phase, trivial: _Phase) -> dict[str, float]:
    """Minimum, median and maximum of the per-round ratios (how much the machine moved)."""
    ratios = sorted(_ratio(c, t) for c, t in zip(consume.slices, trivial.slices, strict=True))
    if not ratios:
        return {}
    return {"min": ratios[0], "median": ratios[len(ratios) // 2], "max": ratios[-1]}


def _errors(consume: LoadResult) -> int:
    """Failures plus answers other than 200, 402 (refused: no credits) and 429 (rate limit)."""
    answered = sum(1 for x in consume.samples if x.status not in (200, 402, 429))
    return consume.failures + answered


def _trivial_errors(trivial: LoadResult) -> int:
    return trivial.failures + sum(1 for x in trivial.samples if x.status != 200)


def _error_sample(consume: LoadResult) -> str | None:
    return next(
        (x.body.decode()[:300] for x in consume.samples if x.status not in (200, 402, 429)),
        None,
    )


def _p99(result: LoadResult) -> float | None:
    return result.percentile_ms(0.99) if result.samples else None  # JSON has no NaN


def _ratio(consume: LoadResult, trivial: LoadResult) -> float:
    if not trivial.achieved_rps:
        return 0.0
    return round(consume.achieved_rps / trivial.achieved_rps, 3)


def _tally(phases: Iterable[LoadResult], wallets: list[_Wallet]) -> int:
    """Add each 200's charge (over every consume phase) to its wallet; return the total."""
    by_token = {w.wallet_id: w for w in wallets}
    total = 0
    for consume in phases:
        for sample in consume.samples:
            if sample.status != 200:
                continue
            body = json.loads(sample.body)
            wallet = by_token[body["wallet_id"]]
            wallet.charged += body["credits"]
            total += body["credits"]
    return total


@dataclass(frozen=True, slots=True)
class _Processes:
    members: list[psutil.Process]


def _cpu_s(processes: _Processes) -> float:
    return sum(float(t.user + t.system) for t in (p.cpu_times() for p in processes.members))


def _report_server_errors(log: Path) -> None:
    """Copy the API's unexpected errors (first few) to stderr before the log is deleted."""
    text = log.read_text(errors="replace")
    shown = 0
    for block in text.split("ERROR api.errors unhandled error")[1:4]:
        print("API unhandled error" + block[:4000], file=sys.stderr)
        shown += 1
    if shown:
        print(f"({text.count('unhandled error')} unhandled errors in all)", file=sys.stderr)
