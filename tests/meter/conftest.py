"""Fixtures: one Tansu broker for the whole session, and fresh topic names per test.

Tests share the broker (starting one costs ~0.1 s, but consumer groups on a fresh broker are
the realistic case anyway); each test gets its own prefixed topics so none reads another's data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from meter.topics import TopicNames
from stack.tansu import TansuBroker

TEST_PARTITIONS = 4


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tansu(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TansuBroker]:
    async with TansuBroker(tmp_path_factory.mktemp("tansu")) as broker:
        yield broker


@pytest_asyncio.fixture(loop_scope="session")
async def topics(tansu: TansuBroker) -> TopicNames:
    """The six pipeline topics under a unique prefix, created with TEST_PARTITIONS each."""
    names = TopicNames.prefixed(f"t{uuid.uuid4().hex[:10]}-")
    await tansu.create_topics(names.all(), TEST_PARTITIONS)
    return names
