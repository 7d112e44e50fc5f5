"""The shift-change tables on a real database: SQLite, and PostgreSQL where it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import migrations
from models.db import engine_for
from tests.support.services import scratch_postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database URL; the PostgreSQL one is dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shifts.sqlite3'}"
        migrations.upgrade(url)
        yield url
        return
    with scratch_postgres_database() as url:
        migrations.upgrade(url)
        yield url
        engine_for(url).dispose()
