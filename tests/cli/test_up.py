"""Smoke test of `credits up` on the embedded services: a restart on the same data dir reuses
the data, and seeding the demo history is idempotent (the full pipeline run, with traffic, is
tests/stack_up/test_up_once.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _credits(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def test_up_once_on_embedded_postgres_seeds_a_verified_demo(tmp_path: Path) -> None:
    services = {"DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP", "CLICKHOUSE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in services}
    # No demo traffic: the demo wallet's transaction count must not move between the runs.
    first = _credits("up", "--once", "--no-demo-traffic", "--data-dir", str(tmp_path), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "CommDesk Credits is up" in first.stdout
    assert "ledger       verified" in first.stdout
    assert "wal_demo_community" in first.stdout
    url = next(
        line.split(None, 1)[1] for line in first.stdout.splitlines() if "PostgreSQL   " in line
    )
    assert str(tmp_path) in url  # the embedded server, not the machine's

    # A second start reuses the data and seeding is idempotent: same transaction count.
    second = _credits("up", "--once", "--no-demo-traffic", "--data-dir", str(tmp_path), env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    count = [line for line in first.stdout.splitlines() if "demo wallet" in line]
    assert count == [line for line in second.stdout.splitlines() if "demo wallet" in line]
    assert "reconciled 1 wallets: 0 drifted" in second.stdout  # Redis kept its snapshot
    assert (tmp_path / "logs" / "postgres.log").exists()
