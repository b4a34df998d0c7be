"""``credits bench produce`` end to end (small plan, an embedded Tansu): every record offered
to either producer is acknowledged and counted, and the ratio is computed from the figures."""

from __future__ import annotations

import pytest

from stack.produce_bench import ProduceBenchPlan, run_produce_bench


@pytest.mark.kafka
async def test_small_produce_bench_counts_every_record_of_both_producers() -> None:
    result = await run_produce_bench(ProduceBenchPlan(rate=200, seconds=1, rounds=2))
    for name in ("direct", "client"):
        figures = result[name]
        assert figures["records"] == 200  # 2 rounds x 0.5 s x 200/s, each acknowledged
        assert figures["cpu_us_per_record"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["p999_ms"]
    expected = result["direct"]["cpu_us_per_record"] / result["client"]["cpu_us_per_record"]
    assert result["cpu_direct_vs_client"] == pytest.approx(expected, abs=1e-3)
