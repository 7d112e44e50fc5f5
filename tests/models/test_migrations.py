"""The Alembic migrations build exactly the schema the models describe, on SQLite (the
embedded default) and PostgreSQL (production), and take it down again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import migrations
from models import AuditRecord, Base
from tests.support.services import scratch_postgres_database

HEAD = ScriptDirectory.from_config(migrations.alembic_config("sqlite://")).get_current_head()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'audit.sqlite3'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with scratch_postgres_database() as url:
        yield url


def check_upgrade_matches_models_and_downgrades(url: str) -> None:
    migrations.upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert differences == [], f"models and migrations disagree: {differences}"
            assert MigrationContext.configure(conn).get_current_revision() == HEAD
            tables = set(inspect(conn).get_table_names())
            assert "presence_audit" in tables
            indexes = {i["name"] for i in inspect(conn).get_indexes("presence_audit")}
            assert {"ix_presence_audit_outcome", "ix_presence_audit_user_id"} <= indexes

        with Session(engine) as session:
            now = datetime.now(UTC)
            session.add(AuditRecord(request_id="r-1", outcome="confirmed", finished_at=now))
            session.commit()
            session.add(AuditRecord(request_id="r-1", outcome="failed", finished_at=now))
            with pytest.raises(IntegrityError):
                session.commit()  # one terminal row per request id

        command.downgrade(migrations.alembic_config(url), "base")
        with engine.connect() as conn:
            assert "presence_audit" not in inspect(conn).get_table_names()
            assert MigrationContext.configure(conn).get_current_revision() is None
    finally:
        engine.dispose()


def test_sqlite_migrations_build_the_models_schema_and_downgrade(sqlite_url):
    check_upgrade_matches_models_and_downgrades(sqlite_url)


@pytest.mark.postgres
def test_postgres_migrations_build_the_models_schema_and_downgrade(postgres_url):
    check_upgrade_matches_models_and_downgrades(postgres_url)


def test_upgrade_is_idempotent(sqlite_url):
    migrations.upgrade(sqlite_url)
    migrations.upgrade(sqlite_url)

    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == HEAD
    engine.dispose()
