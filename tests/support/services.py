"""Real Redis and PostgreSQL for tests.

Redis: see ``tests/conftest.py`` (``REDIS_URL``'s database, else one claimed on the local server
through :mod:`tests.support.redis_db`, else a private embedded server).
PostgreSQL: skipped locally when absent, a failure under CI=true (CI must run those tests).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

import migrations
from models.db import engine_for
from sandbox.servers import PostgresMissing, PrivatePostgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def unavailable(what: str) -> None:
    """Skip locally; fail under CI, where every service must be present."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not reachable")
    pytest.skip(f"{what} is not reachable")


@contextmanager
def scratch_postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards; yields its URL."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"presence_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError:
        admin.dispose()
        unavailable("PostgreSQL at 127.0.0.1:5432")
        raise  # unreachable: unavailable() always raises
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres` (unsynced: a test's data need not survive a crash),
    stopped and removed afterwards; skipped (failed under CI) without the server binaries."""
    try:
        server = PrivatePostgres(options="-c fsync=off")
    except PostgresMissing as missing:
        unavailable(str(missing))
        raise  # unreachable: unavailable() always raises
    try:
        server.start()
        yield server
    finally:
        server.close()


@contextmanager
def migrated_database(kind: str, directory: Path) -> Iterator[str]:
    """A migrated database's URL: ``kind`` "sqlite" (a file in ``directory``) or "postgres" (a
    scratch database on the local server, its engine disposed and the database dropped after)."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'audit.sqlite3'}"
        migrations.upgrade(url)
        yield url
        return
    with scratch_postgres_database() as url:
        migrations.upgrade(url)
        yield url
        engine_for(url).dispose()  # before the database is dropped
