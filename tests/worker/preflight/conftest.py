"""Fixtures of the pre-flight tests: the real emulator (reset), a real Redis, a migrated SQLite
audit database, and settings for an OAuth client holding exactly the worker's permissions."""

from __future__ import annotations

import pytest

import migrations
from tests.worker.preflight.helpers import NEEDED, SECRET, add_client
from worker.settings import Settings


@pytest.fixture
def database_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(url)
    return url


@pytest.fixture
def setup(api, redis_url, database_url):
    """Settings for a narrow client of its own (every permission the worker needs)."""
    add_client(api, "doctor", SECRET, list(NEEDED))

    def make(**values) -> Settings:
        base = {
            "genesys_api_url": api.emulator.base_url,
            "genesys_client_id": "doctor",
            "genesys_client_secret": SECRET,
            "redis_url": redis_url,
            "database_url": database_url,
        }
        return Settings(_env_file=None, **{**base, **values})

    return make
