"""Fixtures of the stack tests: one Tansu broker for the module's component tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from stack.tansu import TansuBroker


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TansuBroker]:
    async with TansuBroker(tmp_path_factory.mktemp("stack-up-tansu")) as tansu:
        yield tansu
