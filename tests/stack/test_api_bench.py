"""``credits bench api`` end to end (small plan, real services), and the closed-loop generator.

The bench test runs every phase — warm-up, open loop, saturation — against a real API process,
PostgreSQL, Redis and an embedded Tansu, and checks the figures it reports are consistent: no
errors, every 200 accounted for in the balances (both consume phases), and ``consume_vs_trivial``
computed from the saturation throughputs. The generator test serves a tiny HTTP/1.1 server of
its own, so it needs nothing else.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from stack.api_bench import ApiBenchPlan, run_api_bench
from stack.load_gen import Request, run_saturation
from tests.pg import ADMIN_URL
from tests.redis_support import REDIS_URL

REQUIRED = (
    "offered_rps",
    "achieved_rps",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "errors",
    "trivial_p99_ms",
)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.kafka
async def test_small_bench_reports_saturation_throughput_and_balances_agree() -> None:
    plan = ApiBenchPlan(
        rate=100,
        seconds=1,
        wallets=5,
        server_url=ADMIN_URL,
        redis_url=REDIS_URL,
        warmup_s=0.5,
        saturation_s=2,
        saturation_connections=4,
    )

    result = await run_api_bench(plan)

    assert all(key in result for key in REQUIRED), sorted(set(REQUIRED) - set(result))
    assert result["errors"] == 0, result["error_sample"]
    assert result["consume_max_errors"] == 0, result["error_sample"]
    assert result["trivial_errors"] == 0
    assert result["trivial_max_errors"] == 0
    assert result["over_authorized"] == 0
    assert result["balance_mismatches"] == 0
    assert result["trivial_max_rps"] > 0
    assert result["consume_max_rps"] > 0
    # The ratio is taken before the rates are rounded for the report (0.1 req/s): from the
    # reported rates it agrees to its own rounding (0.0005) plus theirs.
    assert result["consume_vs_trivial"] == pytest.approx(
        result["consume_max_rps"] / result["trivial_max_rps"], abs=0.001
    )
    assert "consume_vs_trivial_at_offered_rate" in result
    # Two alternating rounds of one-second slices, each with its own ratio.
    slices = result["consume_vs_trivial_slices"]
    assert 0 < slices["min"] <= slices["median"] <= slices["max"]
    # The saturation consumes were answered, and their 200s were charged (and tallied).
    assert sum(result["consume_max_statuses"].values()) > 0
    assert result["consume_max_p99_ms"] > 0
    assert result["trivial_max_p99_ms"] > 0
    # The run's Redis keys (mirror, decisions, idempotency records) are gone afterwards.
    assert result["redis_keys_dropped"] > 0
    client = Redis.from_url(REDIS_URL)
    left = [k async for k in client.scan_iter(match=f"{result['redis_key_prefix']}:*")]
    await client.aclose()
    assert left == []


async def test_run_saturation_uses_each_index_once_and_every_answer_is_a_sample() -> None:
    """Four connections against a server that echoes the path: every request the server
    answered is one sample, each index was made once, and no answer went to the wrong request."""
    served: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request_line := await reader.readline():
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                path = request_line.split(b" ")[1]
                served.append(path)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
                await writer.drain()
        except ConnectionError:
            return  # the client hung up
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    made: list[int] = []

    def make(i: int) -> Request:
        made.append(i)
        return Request("GET", f"/r/{i}", {})

    try:
        result = await run_saturation("127.0.0.1", port, make, connections=4, seconds=0.3)
    finally:
        server.close()
        await server.wait_closed()

    assert result.failures == 0
    assert len(result.samples) > 4
    assert len(result.samples) == len(served) == len(made)
    assert sorted(made) == list(range(len(made)))  # unique indices from one shared counter
    assert sorted(s.body for s in result.samples) == sorted(served)
    assert sorted(served) == sorted(f"/r/{i}".encode() for i in made)
    assert all(s.status == 200 and s.latency_s > 0 for s in result.samples)
    assert result.achieved_rps == pytest.approx(len(result.samples) / result.seconds)
    assert result.seconds >= 0.3
