"""The shift-change tables on a real database: SQLite, and PostgreSQL where it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import migrated_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database URL; the PostgreSQL one is dropped afterwards."""
    with migrated_database(request.param, tmp_path) as url:
        yield url
