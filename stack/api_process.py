"""Starting ``credits api`` as a child process and waiting until it answers.

The role's ready file (``stack.role_process``) is written before uvicorn binds, so whoever
needs the API to accept requests (``credits up``, ``credits bench api``, the fuzz test) polls
``GET /health`` instead — here, once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from domain.errors import Unavailable


def start_api_process(
    env: Mapping[str, str], port: int, log_path: Path, *, reuse_port: bool = False
) -> subprocess.Popen[bytes]:
    """``python -m cli.main api --port PORT`` with ``env``, output to ``log_path``."""
    argv = [sys.executable, "-m", "cli.main", "api", "--port", str(port)]
    if reuse_port:
        argv.append("--reuse-port")
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT)  # noqa: S603


async def wait_until_healthy(
    url: str,
    *,
    timeout_s: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Poll ``{url}/health`` until it answers 200. Raises :class:`Unavailable` when ``alive()``
    turns false or ``timeout_s`` passes; ``check()`` runs each round (it may raise to abort)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            check()
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if not alive():
                raise Unavailable(f"the API process behind {url} exited before answering")
            if time.monotonic() > deadline:
                raise Unavailable(f"the API did not answer on {url} within {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
