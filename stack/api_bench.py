"""``credits bench api``: ``POST /wallet/consume`` at a constant offered rate vs ``GET /health``.

One run, one API process (``credits api``, as in production), one scratch database, one
Redis key prefix, one embedded Tansu. Wallets are created and funded through the API. Then,
at the same offered rate and for the same duration, the trivial endpoint and the consume
endpoint are loaded by the open-loop generator of :mod:`stack.load_gen` (latency counted
from each request's scheduled time). Every tenth consume goes to a *tight* wallet funded for
only a few operations, so refusals happen under load; afterwards every wallet's balance is
read back and compared with the credits its 200 responses say were charged:
``over_authorized`` counts credits charged beyond funding or missing from the balance.
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil

from meter.topics import TopicNames
from settlement.ledger.scratch import scratch_database
from stack.api_process import start_api_process, wait_until_healthy
from stack.load_gen import LoadResult, Request, run_load
from stack.ports import free_port
from stack.tansu import TansuBroker

FEATURE = "api.heavy_query"
TIGHT_OPERATIONS = 50


@dataclass(frozen=True, slots=True)
class ApiBenchPlan:
    rate: float
    seconds: float
    wallets: int
    server_url: str
    redis_url: str
    api_processes: int = 1
    warmup_s: float = 2.0


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
            funded = price * TIGHT_OPERATIONS if tight else 10_000_000
            fund = {"credits": funded, "reason": "goodwill", "actor": "bench"}
            response = await client.post(
                f"/admin/wallets/{wallet_id}/adjustments", json=fund,
                headers={**headers, "Idempotency-Key": f"fund-{wallet_id}"},
            )  # fmt: skip
            response.raise_for_status()
            made.append(_Wallet(wallet_id, created.json()["owner_key"]["token"], funded))
    return made


def _consume_request(wallets: list[_Wallet], run_id: str) -> Any:
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


async def _available(url: str, wallet: _Wallet) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        got = await client.get("/wallet", headers={"Authorization": f"Bearer {wallet.token}"})
    available: int = got.json()["balances"]["available"]
    return available


async def _check_balances(url: str, wallets: list[_Wallet]) -> tuple[int, int]:
    """(over-authorised credits, wallets whose balance disagrees with the 200s)."""
    over, mismatched = 0, 0
    for wallet in wallets:
        available = await _available(url, wallet)
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
                await run_load("127.0.0.1", port, lambda i: make(10_000_000 + i),
                               rate=plan.rate, seconds=plan.warmup_s)  # fmt: skip
                for wallet in wallets:  # the warm-up charged too: start from what is left
                    wallet.funded = await _available(url, wallet)
                health = Request("GET", "/health", {})
                api_process = _Processes([psutil.Process(p.pid) for p in procs])
                cpu_before = _cpu_s(api_process)
                trivial = await run_load(
                    "127.0.0.1", port, lambda i: health, rate=plan.rate, seconds=plan.seconds
                )
                cpu_trivial = _cpu_s(api_process) - cpu_before
                cpu_before = _cpu_s(api_process)
                consume = await run_load("127.0.0.1", port, make, rate=plan.rate,
                                         seconds=plan.seconds)  # fmt: skip
                cpu_consume = _cpu_s(api_process) - cpu_before
                statuses = Counter(sample.status for sample in consume.samples)
                tally = _tally(consume, wallets)
                over, mismatched = await _check_balances(url, wallets)
            finally:
                for each in procs:
                    each.terminate()
                for n, each in enumerate(procs):
                    each.wait(timeout=30)
                    _report_server_errors(log.with_name(f"api{n}.log"))
    expected_refusals = statuses.get(402, 0)
    errors = consume.failures + sum(n for s, n in statuses.items() if s not in (200, 402, 429))
    return {
        "offered_rps": plan.rate,
        "api_processes": plan.api_processes,
        "seconds": plan.seconds,
        **_figures(consume),
        "errors": errors,
        "authorized": statuses.get(200, 0),
        "refused_insufficient": expected_refusals,
        "rate_limited": statuses.get(429, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": consume.failures,
        "error_sample": next(
            (x.body.decode()[:300] for x in consume.samples if x.status not in (200, 402, 429)),
            None,
        ),
        "over_authorized": over,
        "balance_mismatches": mismatched,
        "charged_credits": tally,
        **_figures(trivial, "trivial_"),
        "trivial_errors": trivial.failures + sum(1 for s in trivial.samples if s.status != 200),
        "api_cpu_us_per_request": round(1e6 * cpu_consume / max(1, len(consume.samples)), 1),
        "trivial_api_cpu_us_per_request": round(
            1e6 * cpu_trivial / max(1, len(trivial.samples)), 1
        ),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "consume_vs_trivial": round(consume.achieved_rps / trivial.achieved_rps, 3)
        if trivial.achieved_rps
        else 0.0,
    }


def _tally(consume: LoadResult, wallets: list[_Wallet]) -> int:
    """Add each 200's charge to its wallet; return the total charged."""
    by_token = {w.wallet_id: w for w in wallets}
    total = 0
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
