"""Plumbing every role process shares: a stop event wired to SIGINT/SIGTERM, the role's
Prometheus endpoint, and the *ready file* that tells ``credits up`` where the role serves.

Contract of :func:`run_role`:

1. SIGINT and SIGTERM set the stop event the role's main coroutine watches; the coroutine is
   expected to finish its batch in flight and return (a second signal is left to the
   supervisor, which escalates to SIGKILL after its stop timeout).
2. Metrics are served on ``127.0.0.1:<metrics_port>`` before the role starts working. Port 0
   means any free port. A requested port that is taken (the free-port race, see
   ``stack.ports``) falls back to a free one with a warning, so a restarted child never dies
   over its metrics port; the port actually used is logged and written to the ready file.
3. The ready file (JSON: role, pid, metrics_port, metrics_url) is written atomically once the
   metrics endpoint answers; ``credits up`` waits for it to print its banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from stack.metrics import RoleMetrics
from stack.ports import LOOPBACK, PORT_ATTEMPTS, free_port

_log = logging.getLogger(__name__)

RoleMain = Callable[[asyncio.Event, RoleMetrics], Awaitable[None]]
"""A role's main coroutine: work until the event is set, then return."""


@dataclass(frozen=True, slots=True)
class RoleReady:
    """What a running role process announces in its ready file."""

    role: str
    pid: int
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        return metrics_url(self.metrics_port)


def metrics_url(port: int, host: str = LOOPBACK) -> str:
    return f"http://{host}:{port}/metrics"


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (call on the running loop, main thread)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_stop_signal, stop, sig)


def _on_stop_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        _log.info("received %s; finishing the work in flight, then stopping", sig.name)
    stop.set()


def serve_metrics(metrics: RoleMetrics, port: int, host: str = LOOPBACK) -> int:
    """Serve ``metrics`` on ``host:port`` (0: a free port); return the port actually used.

    Raises ``OSError`` only when ``PORT_ATTEMPTS`` fresh ports in a row were taken.
    """
    candidate = port or free_port(host)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            metrics.serve(candidate, host)
        except OSError as exc:
            if attempt == PORT_ATTEMPTS:
                raise
            _log.warning("metrics port %d is taken (%s); using a free one instead", candidate, exc)
            candidate = free_port(host)
        else:
            return candidate
    raise AssertionError("unreachable")  # the loop returns or raises


def write_ready_file(path: Path, ready: RoleReady) -> None:
    """Write ``ready`` as JSON, atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(ready)))
    tmp.replace(path)


def read_ready_file(path: Path) -> RoleReady | None:
    """The announcement in ``path``, or None if there is none (yet) or it is unreadable."""
    try:
        raw = json.loads(path.read_text())
        return RoleReady(str(raw["role"]), int(raw["pid"]), int(raw["metrics_port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_ready_file(path: Path) -> None:
    """Forget an announcement (a stopped role no longer serves); missing is fine."""
    with contextlib.suppress(OSError):
        path.unlink()


async def run_role(
    role: str, main: RoleMain, *, metrics_port: int = 0, ready_file: Path | None = None
) -> int:
    """Run one role process (see the module doc); returns its exit code (0: stopped cleanly)."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    metrics = RoleMetrics(role)
    port = serve_metrics(metrics, metrics_port)
    _log.info("%s pid=%d metrics %s", role, os.getpid(), metrics_url(port))
    if ready_file is not None:
        write_ready_file(ready_file, RoleReady(role, os.getpid(), port))
    try:
        await main(stop, metrics)
    finally:
        if ready_file is not None:
            remove_ready_file(ready_file)
    _log.info("%s stopped", role)
    return 0
