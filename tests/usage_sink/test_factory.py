"""open_usage_store picks the backend from the URL; importing the package boots nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from domain.errors import ConfigError, Unavailable
from settlement.usage_sink import open_usage_store
from settlement.usage_sink.chdb_store import ChdbUsageStore


@pytest.mark.parametrize("url", [None, ""])
def test_no_url_means_embedded_chdb(url: str | None, tmp_path: Path) -> None:
    with open_usage_store(url, tmp_path / "db") as store:
        assert isinstance(store, ChdbUsageStore)
        assert store.day_timezone == "Asia/Kolkata"


@pytest.mark.parametrize("url", ["postgres://localhost/x", "chdb:///tmp/x", "localhost:8123"])
def test_other_urls_are_config_errors(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        open_usage_store(url, tmp_path)


def test_an_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as caught:
        open_usage_store("clickhouse://user:s3cret@127.0.0.1:1/analytics", tmp_path)
    assert caught.value.retryable
    assert "s3cret" not in str(caught.value)


def test_importing_the_package_creates_no_engine_or_client() -> None:
    code = (
        "import sys, settlement.usage_sink, settlement.usage_sink.chdb_store;"
        "assert 'chdb' not in sys.modules, 'chdb imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
