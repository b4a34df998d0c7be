"""The supervisor restarts dead children, gives up on hopeless ones, and shuts down in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil  # psutil ships no type stubs
import pytest

from domain.errors import Unavailable
from stack.supervisor import ChildSpec, ChildState, RestartPolicy, Supervisor

PY = sys.executable
SLEEPER = (PY, "-c", "import time; time.sleep(60)")
FAST = RestartPolicy(max_restarts=3, window_s=60.0, initial_backoff_s=0.05, max_backoff_s=0.2)

# Announces "ready" once its SIGTERM behaviour is in place, so tests never signal it too early.
POLITE = textwrap.dedent(
    """
    import signal, sys, time
    def bye(*_):
        with open(sys.argv[1], "a") as out:
            out.write(sys.argv[2] + "\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    print("ready", flush=True)
    time.sleep(60)
    """
)
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def alive(pid: int | None) -> bool:
    """Running and not a zombie (orphans are never reaped on these machines)."""
    if pid is None:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def ready(supervisor: Supervisor, name: str) -> Callable[[], bool]:
    """The child printed its "ready" line (its command line, echoed in the log, also says it)."""
    log_path = supervisor.child(name).log_path
    return lambda: "ready" in log_path.read_text().splitlines()


async def test_restarts_a_killed_child_then_shutdown_stops_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stack.supervisor")
    supervisor = Supervisor(tmp_path, policy=FAST)
    spec = ChildSpec("api", SLEEPER, url="http://127.0.0.1:8000", stop_timeout_s=5.0)
    first = await supervisor.start(spec)
    assert first.state is ChildState.RUNNING
    assert alive(first.pid)
    assert first.log_path == tmp_path / "logs" / "api.log"
    assert f"api running pid={first.pid} url=http://127.0.0.1:8000" in caplog.text

    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    await eventually(lambda: supervisor.child("api").pid not in (None, first.pid))
    second = supervisor.child("api")
    assert (second.state, second.restarts, second.last_exit) == (ChildState.RUNNING, 1, -9)
    assert "api was killed by SIGKILL; restarting" in caplog.text
    assert first.log_path.read_text().count("supervisor: starting") == 2

    started = time.monotonic()
    outcome = await supervisor.shutdown()
    assert time.monotonic() - started < spec.stop_timeout_s
    assert (outcome.exit_code, outcome.failed) == (0, ())
    assert not alive(second.pid)
    assert supervisor.child("api").state is ChildState.STOPPED


async def test_gives_up_on_a_child_that_keeps_failing_and_stops_the_stack(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, policy=FAST)
    steady = await supervisor.start(ChildSpec("settlement", SLEEPER))
    await supervisor.start(ChildSpec("flaky", (PY, "-c", "import sys; sys.exit(3)")))

    outcome = await asyncio.wait_for(supervisor.wait(), timeout=10)

    assert outcome.failed == ("flaky",)
    assert outcome.exit_code == 1
    assert outcome.reason == "flaky failed"
    flaky = supervisor.child("flaky")
    assert (flaky.state, flaky.restarts, flaky.last_exit) == (ChildState.FAILED, 3, 3)
    assert flaky.log_path.read_text().count("supervisor: starting") == 4  # 1 start + 3 restarts
    assert supervisor.child("settlement").state is ChildState.STOPPED
    assert not alive(steady.pid)


async def test_can_keep_the_stack_up_when_a_child_is_given_up_on(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, policy=FAST, stop_on_give_up=False)
    async with supervisor:
        steady = await supervisor.start(ChildSpec("settlement", SLEEPER))
        await supervisor.start(ChildSpec("flaky", (PY, "-c", "raise SystemExit(2)")))
        await eventually(lambda: supervisor.child("flaky").state is ChildState.FAILED)
        assert alive(steady.pid)
    assert not alive(steady.pid)


async def test_shutdown_goes_in_reverse_start_order_and_kills_the_stubborn(tmp_path: Path) -> None:
    journal = tmp_path / "stopped.txt"
    supervisor = Supervisor(tmp_path)
    for name in ("ledger", "settlement"):
        await supervisor.start(ChildSpec(name, (PY, "-c", POLITE, str(journal), name)))
    await supervisor.start(ChildSpec("stubborn", (PY, "-c", STUBBORN), stop_timeout_s=0.3))
    for name in ("ledger", "settlement", "stubborn"):
        await eventually(ready(supervisor, name))

    started = time.monotonic()
    outcome = await supervisor.shutdown()

    assert time.monotonic() - started < 3.0
    assert outcome.exit_code == 0
    assert journal.read_text().split() == ["settlement", "ledger"]
    assert supervisor.child("stubborn").last_exit == -signal.SIGKILL
    assert all(s.state is ChildState.STOPPED and s.pid is None for s in supervisor.status())


async def test_sigterm_shuts_down_and_a_second_one_stops_waiting(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    await supervisor.start(ChildSpec("stubborn", (PY, "-c", STUBBORN), stop_timeout_s=30.0))
    await eventually(ready(supervisor, "stubborn"))
    previous = signal.getsignal(signal.SIGTERM)
    supervisor.install_signal_handlers()
    try:
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.3)  # the first signal is being honoured: SIGTERM sent, waiting
        assert supervisor.child("stubborn").state is ChildState.RUNNING
        os.kill(os.getpid(), signal.SIGTERM)
        outcome = await asyncio.wait_for(supervisor.wait(), timeout=5)
    finally:
        supervisor.remove_signal_handlers()
    assert time.monotonic() - started < 5.0  # far less than the 30 s stop timeout
    assert outcome.reason == "received SIGTERM"
    assert supervisor.child("stubborn").last_exit == -signal.SIGKILL
    assert signal.getsignal(signal.SIGTERM) == previous


async def test_a_child_that_cannot_be_spawned_is_reported_with_its_log(tmp_path: Path) -> None:
    async with Supervisor(tmp_path) as supervisor:
        with pytest.raises(Unavailable, match=r"could not start ghost: .*logs/ghost\.log"):
            await supervisor.start(ChildSpec("ghost", (str(tmp_path / "no-such-binary"),)))
        assert supervisor.status() == ()


def test_children_die_with_a_supervisor_killed_with_9(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from stack.supervisor import ChildSpec, Supervisor

        async def main() -> None:
            supervisor = Supervisor(Path({str(tmp_path)!r}))
            status = await supervisor.start(ChildSpec("orphan", {SLEEPER!r}))
            print(status.pid, flush=True)
            await supervisor.wait()

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert alive(child_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child_pid)  # PR_SET_PDEATHSIG sent it SIGTERM
    finally:
        parent.kill()
        parent.wait()


def test_child_names_must_be_usable_as_log_file_names() -> None:
    with pytest.raises(ValueError, match="log file name"):
        ChildSpec("../escape", SLEEPER)
    with pytest.raises(ValueError, match="empty argv"):
        ChildSpec("nothing", ())
