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
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import migrations
from models import AuditRecord, Base, ShiftChange
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


def check_rows_from_before_orgs_become_the_default_orgs(url: str) -> None:
    command.upgrade(migrations.alembic_config(url), "0004")
    engine = create_engine(url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO presence_audit (request_id, finished_at, attempts, "
                    "genesys_requests, outcome) VALUES ('old-1', :now, 1, 0, 'confirmed')"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO shift_change (user_id, due_at, state, capacity_policy, source, "
                    "status, created_at, dispatches) VALUES ('agent-1', :now, 'Break', 'reject', "
                    "'roster.csv', 'scheduled', :now, 0)"
                ),
                {"now": now},
            )
        migrations.upgrade(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT org FROM presence_audit")).scalars().all() == [
                "default"
            ]
            assert conn.execute(text("SELECT org FROM shift_change")).scalars().all() == ["default"]
            indexes = {
                i["name"]: i["column_names"] for i in inspect(conn).get_indexes("presence_audit")
            }
            assert indexes["ix_presence_audit_org_finished_at"] == ["org", "finished_at"]
        with Session(engine) as session:
            # User ids are per org: the same agent id and time in another org is another row.
            session.add(
                ShiftChange(
                    org="acme", user_id="agent-1", due_at=now, state="Break",
                    capacity_policy="reject", source="acme.csv", status="scheduled",
                    created_at=now, dispatches=0,
                )
            )  # fmt: skip
            session.commit()
            session.add(
                ShiftChange(
                    org="acme", user_id="agent-1", due_at=now, state="Meal",
                    capacity_policy="reject", source="acme.csv", status="scheduled",
                    created_at=now, dispatches=0,
                )
            )  # fmt: skip
            with pytest.raises(IntegrityError):
                session.commit()  # but one row per org, agent and due time
        command.downgrade(migrations.alembic_config(url), "0004")
        with engine.connect() as conn:
            assert "org" not in {c["name"] for c in inspect(conn).get_columns("presence_audit")}
            assert "org" not in {c["name"] for c in inspect(conn).get_columns("shift_change")}
            # Another org's changes would otherwise be applied to the default org's agents.
            assert conn.execute(text("SELECT source FROM shift_change")).scalars().all() == [
                "roster.csv"
            ]
    finally:
        engine.dispose()


def test_sqlite_rows_from_before_orgs_become_the_default_orgs(sqlite_url):
    check_rows_from_before_orgs_become_the_default_orgs(sqlite_url)


@pytest.mark.postgres
def test_postgres_rows_from_before_orgs_become_the_default_orgs(postgres_url):
    check_rows_from_before_orgs_become_the_default_orgs(postgres_url)
