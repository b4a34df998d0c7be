"""``credits api``: serve the HTTP API (uvicorn) as a role process.

Service URLs come from the environment (``stack.settings``), like the workers'; ``credits up``
starts this as a supervised child with the URLs it resolved. Metrics and the ready file work
as for every role (``stack.role_process``); the ready file is written once the API accepts
requests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.gc_tuning import tuned_for_batches
from cli.common import run_fast
from domain.errors import InvalidInput
from stack.metrics import RoleMetrics
from stack.role_process import run_role
from stack.settings import Settings, load_settings

if TYPE_CHECKING:  # imported lazily at run time: keep `credits --help` light
    from api.payments.razorpay import RazorpaySettings
    from api.services import ApiConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def register(subparsers: Any) -> None:
    api = subparsers.add_parser("api", help="serve the HTTP API (FastAPI under uvicorn)")
    api.add_argument("--host", default=None, help="listen address (default $CREDITS_API_HOST)")
    api.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    api.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: free)")
    api.add_argument("--ready-file", type=Path, default=None, help="written once serving")
    api.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT so several API processes share the port (the kernel "
        "spreads connections over them)",
    )
    api.set_defaults(handler=_api)


def _razorpay(settings: Settings) -> RazorpaySettings | None:
    if settings.gateway != "razorpay":
        return None
    from api.payments.razorpay import RazorpaySettings  # noqa: PLC0415

    values = (
        settings.razorpay_key_id, settings.razorpay_key_secret, settings.razorpay_webhook_secret,
    )  # fmt: skip
    if not all(values):
        raise InvalidInput(
            "CREDITS_GATEWAY=razorpay needs RAZORPAY_KEY_ID, RAZORPAY_KEY_SECRET and "
            "RAZORPAY_WEBHOOK_SECRET",
            field="gateway",
        )
    key_id, key_secret, webhook_secret = (str(v) for v in values)
    return RazorpaySettings(key_id=key_id, key_secret=key_secret, webhook_secret=webhook_secret)


def api_config(settings: Settings, *, own_url: str | None = None) -> ApiConfig:
    """The API's config from the process settings; every URL must be set."""
    from api.services import ApiConfig  # noqa: PLC0415 -- keep `credits --help` light

    missing = [
        name
        for name, value in (
            ("DATABASE_URL", settings.database_url),
            ("REDIS_URL", settings.redis_url),
            ("KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
        )
        if not value
    ]
    if missing:
        raise InvalidInput(
            f"credits api needs {', '.join(missing)} (or run `credits up`)", missing=missing
        )
    assert settings.database_url
    assert settings.redis_url
    assert settings.kafka_bootstrap
    return ApiConfig(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        kafka_bootstrap=settings.kafka_bootstrap,
        key_prefix=settings.key_prefix,
        admin_key=settings.admin_key,
        public_url=settings.public_url or own_url,
        gateway=settings.gateway,
        low_balance_threshold=settings.low_balance_threshold,
        clickhouse_url=settings.clickhouse_url,
        usage_query_url=settings.usage_query_url,
        razorpay=_razorpay(settings),
        fast_lane=settings.api_fast_lane,
    )


def _api(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if not 0 <= args.port <= 65535:
        raise InvalidInput(f"--port must be 0..65535, got {args.port}", field="port")
    settings = load_settings()
    host = args.host or settings.api_host
    # Without CREDITS_PUBLIC_URL the sandbox gateway delivers its webhooks to this process.
    config = api_config(settings, own_url=f"http://{host}:{args.port}" if args.port else None)

    async def main(stop: asyncio.Event, metrics: RoleMetrics) -> None:
        import uvicorn  # noqa: PLC0415

        from api.app import create_app  # noqa: PLC0415
        from api.live.lifecycle import end_streams_on_shutdown  # noqa: PLC0415

        app = create_app(config)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=args.port,
                log_level="info",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=10,
            )
        )
        end_streams_on_shutdown(server, app)
        sockets = [_shared_socket(host, args.port)] if args.reuse_port else None
        serving = asyncio.create_task(server.serve(sockets=sockets))
        stopping = asyncio.create_task(stop.wait())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        # Requests allocate many short-lived objects; collect young ones less often and keep
        # the long-lived start-up objects (clients, catalogue, modules) out of every pass.
        with tuned_for_batches():
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopping.cancel()
        await serving

    return run_fast(
        run_role("api", main, metrics_port=args.metrics_port, ready_file=args.ready_file)
    )


def _shared_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
