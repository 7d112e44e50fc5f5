"""End-to-end fixtures for the presence-update tasks: the shared :class:`Pipeline` harness.

Each module gets its own emulator (override the module-scoped ``emulator_args`` fixture to change
its command line) and its own Redis server; every test resets the emulator, empties that server
and migrates a fresh audit database (SQLite, or PostgreSQL through the ``audit_database`` fixture
with ``param="postgres"``), so nothing a test does leaks into the next one. Those fixtures live in
:mod:`tests.support.pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.launcher import EmulatorProcess
from tests.support.pipeline import Pipeline, opened


@pytest.fixture
def pipeline(
    pipeline_emulator: EmulatorProcess,
    pipeline_redis_url: str,
    audit_database: str,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    """A reset emulator, an empty Redis database, a fresh audit database; workers started through
    it are stopped at the end of the test."""
    yield from opened(Pipeline(pipeline_emulator, pipeline_redis_url, audit_database, tmp_path))
