"""What is specific to the embedded backend: one data directory per process, closing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain.errors import StateConflict
from settlement.usage_sink.chdb_store import ChdbUsageStore, escape_param
from tests.usage_sink.conftest import usage


def test_a_second_data_directory_in_one_process_is_refused(tmp_path: Path) -> None:
    with ChdbUsageStore(tmp_path / "a"):
        with pytest.raises(StateConflict, match="one data directory per process"):
            ChdbUsageStore(tmp_path / "b")
        with ChdbUsageStore(tmp_path / "a") as same_directory:
            same_directory.ensure_schema()


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = ChdbUsageStore(tmp_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StateConflict):
        store.insert([usage("e1", datetime(2024, 3, 1, tzinfo=UTC))])


def test_escaped_parameters_use_clickhouse_escapes() -> None:
    assert escape_param("a\\b\tc'") == "a\\\\b\\tc'"
