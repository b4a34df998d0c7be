"""Operator errors of the new commands: a worker or the demo without its services says which
variable to set, and nothing is started."""

from __future__ import annotations

import pytest

from cli.main import main

SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP", "CLICKHOUSE_URL")


@pytest.fixture(autouse=True)
def no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("role", ["aggregator", "settlement"])
def test_a_worker_names_the_missing_urls(role: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", role]) == 2
    err = capsys.readouterr().err
    assert "KAFKA_BOOTSTRAP, REDIS_URL, DATABASE_URL" in err
    assert "credits up" in err


def test_a_worker_takes_flags_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["worker", "aggregator", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "needs DATABASE_URL:" in capsys.readouterr().err


def test_demo_needs_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--count", "5"]) == 2
    assert "KAFKA_BOOTSTRAP" in capsys.readouterr().err


def test_demo_traffic_must_be_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--bootstrap", "127.0.0.1:1", "--duration", "0"]) == 2
    assert "bounded" in capsys.readouterr().err


def test_up_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--once", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_a_bad_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CREDITS_KAFKA_PARTITIONS", "many")
    assert main(["up", "--once"]) == 2
    assert "CREDITS_KAFKA_PARTITIONS" in capsys.readouterr().err
