"""Supervise the child processes of ``credits up``.

Contract:

- ``start(spec)`` spawns a named child (argv, env overrides, cwd) with stdout and stderr appended
  to ``<data_dir>/logs/<name>.log``, and logs one line saying what runs where (name, pid, URL, log).
- A child that exits while the stack is up, whatever its exit code, is restarted after a backoff
  that doubles from ``initial_backoff_s`` up to ``max_backoff_s``. After ``max_restarts`` restarts
  within ``window_s`` the supervisor gives up on it (state ``failed``) and, unless told otherwise,
  shuts the whole stack down: a stack with a dead stage would quietly stop settling.
- ``shutdown()``, or SIGINT/SIGTERM once ``install_signal_handlers()`` ran, stops the children in
  reverse start order: SIGTERM, up to ``stop_timeout_s`` for it to exit, then SIGKILL to its
  process group. A second signal stops the waiting and kills what is left.
- ``wait()`` blocks until that shutdown has finished and returns its ``Outcome``.

Children run in a session of their own, so a Ctrl-C in the terminal reaches only ``credits up``,
which then stops them in order, rather than all of them at once. On Linux a child also receives
SIGTERM if the supervisor dies without shutting down (``PR_SET_PDEATHSIG``), so a ``kill -9`` of
``credits up`` leaves no workers behind. Everything runs on the caller's event loop; a supervisor
belongs to one loop and holds no global state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from domain.errors import Unavailable

_log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class ChildState(enum.StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"  # exited unexpectedly, waiting to be restarted
    FAILED = "failed"  # exited too often; no longer restarted
    STOPPED = "stopped"  # stopped by the shutdown


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What to run. ``env`` overrides the supervisor's base environment; ``url`` is only shown
    in the log line that says where the child serves."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = None
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError(f"child {self.name!r} has an empty argv")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"child name {self.name!r} must be usable as a log file name")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """At most ``max_restarts`` restarts per child within any ``window_s`` seconds."""

    max_restarts: int = 5
    window_s: float = 60.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def delay_s(self, recent_restarts: int) -> float | None:
        """Backoff before the next restart, or ``None`` to give up."""
        if recent_restarts >= self.max_restarts:
            return None
        return float(min(self.initial_backoff_s * 2**recent_restarts, self.max_backoff_s))


@dataclass(frozen=True, slots=True)
class ChildStatus:
    name: str
    state: ChildState
    pid: int | None
    restarts: int
    last_exit: int | None
    url: str | None
    log_path: Path


@dataclass(frozen=True, slots=True)
class Outcome:
    """Why the supervisor stopped, and which children it gave up on."""

    reason: str
    failed: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass(slots=True)
class _Child:
    """Mutable bookkeeping of one child; touched only from the supervisor's event loop."""

    spec: ChildSpec
    log_path: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # spawn vs. stop
    proc: asyncio.subprocess.Process | None = None
    state: ChildState = ChildState.RUNNING
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=deque)
    last_exit: int | None = None
    monitor: asyncio.Task[None] | None = None

    def status(self) -> ChildStatus:
        running = self.proc is not None and self.proc.returncode is None
        return ChildStatus(
            name=self.spec.name,
            state=self.state,
            pid=self.proc.pid if running and self.proc else None,
            restarts=self.restarts,
            last_exit=self.last_exit,
            url=self.spec.url,
            log_path=self.log_path,
        )


class Supervisor:
    """Runs named children until shutdown; see the module doc for the contract."""

    def __init__(
        self,
        data_dir: Path,
        *,
        policy: RestartPolicy | None = None,
        base_env: Mapping[str, str] | None = None,
        stop_on_give_up: bool = True,
    ) -> None:
        self.log_dir = data_dir / "logs"
        self._policy = policy or RestartPolicy()
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._stop_on_give_up = stop_on_give_up
        self._children: dict[str, _Child] = {}
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._shutdown_task: asyncio.Task[Outcome] | None = None
        self._failed: list[str] = []
        self._previous_handlers: dict[signal.Signals, _SignalHandler] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown("leaving the supervisor's context")

    async def start(self, spec: ChildSpec) -> ChildStatus:
        """Spawn ``spec`` and keep it running. Raises ``Unavailable`` if it cannot be spawned
        at all (bad argv or cwd), ``ValueError`` for a duplicate name."""
        if self._shutdown_task is not None:
            raise RuntimeError(f"cannot start {spec.name!r}: the supervisor is shutting down")
        if spec.name in self._children:
            raise ValueError(f"a child named {spec.name!r} is already supervised")
        child = _Child(spec=spec, log_path=self.log_dir / f"{spec.name}.log")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Registered and locked before spawning, so a shutdown that starts meanwhile waits for
        # the spawn and then stops this child too, instead of missing it.
        self._children[spec.name] = child
        async with child.lock:
            try:
                child.proc = await self._spawn(child)
            except OSError as exc:
                del self._children[spec.name]
                raise Unavailable(
                    f"could not start {spec.name}: {exc}; check its command "
                    f"{shlex.join(spec.argv)!r} and see {child.log_path}",
                    log=str(child.log_path),
                ) from exc
        child.monitor = asyncio.create_task(self._monitor(child), name=f"supervise-{spec.name}")
        return child.status()

    def status(self) -> tuple[ChildStatus, ...]:
        """Every child in start order."""
        return tuple(child.status() for child in self._children.values())

    def child(self, name: str) -> ChildStatus:
        return self._children[name].status()

    def install_signal_handlers(self) -> None:
        """Shut down on SIGINT/SIGTERM; call from ``main()`` on the main thread's running loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, self._on_signal, sig)

    def remove_signal_handlers(self) -> None:
        """Restore the handlers ``install_signal_handlers()`` replaced."""
        loop = asyncio.get_running_loop()
        for sig, previous in self._previous_handlers.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous_handlers.clear()

    def request_shutdown(self, reason: str) -> None:
        """Start the shutdown if it has not started yet; returns at once (see ``wait()``)."""
        if self._shutdown_task is None:
            loop = asyncio.get_running_loop()
            self._shutdown_task = loop.create_task(self._shut_down(reason), name="shutdown")

    async def shutdown(self, reason: str = "requested") -> Outcome:
        """Stop every child (see the module doc) and return the outcome. Idempotent."""
        self.request_shutdown(reason)
        assert self._shutdown_task is not None
        return await asyncio.shield(self._shutdown_task)

    async def wait(self) -> Outcome:
        """Block until a shutdown (signal, ``shutdown()`` or a child given up on) has finished."""
        await self._stopping.wait()
        assert self._shutdown_task is not None
        return await asyncio.shield(self._shutdown_task)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._shutdown_task is None:
            _log.info("received %s; stopping the stack (repeat it to kill at once)", sig.name)
            self.request_shutdown(f"received {sig.name}")
        else:
            _log.warning("received %s again; killing the remaining children now", sig.name)
            self._hurry.set()

    async def _spawn(self, child: _Child) -> asyncio.subprocess.Process:
        spec = child.spec
        env = dict(self._base_env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # so Python children's logs are not held back
        env.update(spec.env)
        with child.log_path.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- {stamp} supervisor: starting {shlex.join(spec.argv)}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        child.state = ChildState.RUNNING
        where = f" url={spec.url}" if spec.url else ""
        _log.info("%s running pid=%d%s log=%s", spec.name, proc.pid, where, child.log_path)
        return proc

    async def _monitor(self, child: _Child) -> None:
        while True:
            if child.proc is not None:
                child.last_exit = await child.proc.wait()
            if self._stopping.is_set():
                return
            delay = self._next_restart_delay(child)
            if delay is None:
                self._give_up(child)
                return
            child.state = ChildState.BACKOFF
            _log.warning(
                "%s %s; restarting in %.1fs (restart %d); log=%s",
                child.spec.name,
                _describe_exit(child.last_exit),
                delay,
                child.restarts,
                child.log_path,
            )
            if child.proc is not None:
                _signal_group(child.proc.pid, signal.SIGKILL)  # leftovers of the dead child
            if await self._stops_within(delay):
                return
            await self._respawn(child)

    async def _respawn(self, child: _Child) -> None:
        async with child.lock:
            if self._stopping.is_set():
                return
            try:
                child.proc = await self._spawn(child)
            except OSError as exc:
                _log.error("could not restart %s: %s", child.spec.name, exc)
                # _monitor counts this as one more failed run.
                child.proc, child.last_exit = None, None

    def _next_restart_delay(self, child: _Child) -> float | None:
        now = time.monotonic()
        while child.restart_times and now - child.restart_times[0] > self._policy.window_s:
            child.restart_times.popleft()
        delay = self._policy.delay_s(len(child.restart_times))
        if delay is not None:
            child.restart_times.append(now)
            child.restarts += 1
        return delay

    def _give_up(self, child: _Child) -> None:
        child.state = ChildState.FAILED
        self._failed.append(child.spec.name)
        _log.error(
            "%s %s after %d restarts within %.0fs; giving up on it; see %s",
            child.spec.name,
            _describe_exit(child.last_exit),
            len(child.restart_times),
            self._policy.window_s,
            child.log_path,
        )
        if self._stop_on_give_up:
            self.request_shutdown(f"{child.spec.name} failed")

    async def _stops_within(self, delay_s: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay_s)
        except TimeoutError:
            return False
        return True

    async def _shut_down(self, reason: str) -> Outcome:
        self._stopping.set()
        children = list(reversed(self._children.values()))
        _log.info("shutting down (%s): %s", reason, ", ".join(c.spec.name for c in children))
        for child in children:
            await self._stop_child(child)
        monitors = [child.monitor for child in children if child.monitor is not None]
        await asyncio.gather(*monitors, return_exceptions=True)
        outcome = Outcome(reason=reason, failed=tuple(self._failed))
        _log.info("all children stopped (%s)", reason)
        return outcome

    async def _stop_child(self, child: _Child) -> None:
        async with child.lock:
            proc = child.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                timeout = child.spec.stop_timeout_s
                if not await self._exits_within(proc, timeout):
                    _log.warning(
                        "%s pid=%d still running %.1fs after SIGTERM; killing its process group",
                        child.spec.name,
                        proc.pid,
                        timeout,
                    )
                    _signal_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
                child.last_exit = proc.returncode
                _log.info("%s stopped (%s)", child.spec.name, _describe_exit(proc.returncode))
            if proc is not None:
                _signal_group(proc.pid, signal.SIGKILL)  # grandchildren the child left behind
            if child.state is not ChildState.FAILED:
                child.state = ChildState.STOPPED

    async def _exits_within(self, proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
        exited = asyncio.ensure_future(proc.wait())
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait(
                {exited, hurry}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            hurry.cancel()
            exited.cancel()
        return proc.returncode is not None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # The child leads its own session, so its pid is the process group id of everything it forked.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "could not be spawned"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before fork: the hook runs between fork and exec, where little is safe to do.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return hook
