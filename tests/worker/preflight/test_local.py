"""The checks before Genesys: settings (never their values), files, Redis and the database."""

from __future__ import annotations

import sqlite3

import pytest
from alembic.script import ScriptDirectory

import migrations
from tests.support.services import scratch_postgres_database
from tests.worker.preflight.helpers import (
    SECRET,
    checks,
    failed,
    free_port,
)
from worker.preflight import Verdict, run_checks


def test_settings_without_credentials_fail_first(setup):
    found = checks(setup(genesys_client_id="", genesys_client_secret=""))

    assert failed(found) == {"settings"}
    assert "GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET empty" in found["settings"].detail


def test_unknown_region_settings_fail_without_their_values(monkeypatch):
    monkeypatch.setenv("GENESYS_REGION", "mars_north_1")
    monkeypatch.setenv("GENESYS_CLIENT_SECRET", SECRET)
    monkeypatch.delenv("GENESYS_API_URL", raising=False)

    findings = run_checks(timeout_s=1)

    assert [(f.check, f.verdict) for f in findings] == [("settings", Verdict.FAIL)]
    assert "GENESYS_REGION" in findings[0].detail
    assert "mars_north_1" not in findings[0].line
    assert SECRET[-6:] not in findings[0].line


# -- Redis and the database ---------------------------------------------------------------------
def test_redis_down_is_named_and_the_channel_check_waits_for_it(setup):
    url = f"redis://:redis-pass-word@127.0.0.1:{free_port()}/0"

    found = checks(setup(redis_url=url))

    assert failed(found) == {"Redis"}
    assert "REDIS_URL" in found["Redis"].detail
    assert "redis-pass-word" not in found["Redis"].line
    assert found["notifications"].verdict is Verdict.SKIP


def test_an_unmigrated_database_asks_for_presence_migrate(setup, tmp_path):
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()

    found = checks(setup(database_url=f"sqlite:///{empty}"))

    assert failed(found) == {"database"}
    assert found["database"].fix == "run `presence migrate`"


def test_an_absent_database_file_is_reported_not_created(setup, tmp_path):
    absent = tmp_path / "absent.sqlite3"

    found = checks(setup(database_url=f"sqlite:///{absent}"))

    assert failed(found) == {"database"}
    assert found["database"].fix == "run `presence migrate`"
    assert not absent.exists()


def test_a_database_behind_head_names_both_revisions(setup, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    migrations.upgrade(url, "0002")

    found = checks(setup(database_url=url))

    assert failed(found) == {"database"}
    head = ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()
    assert f"revision 0002, not {head}" in found["database"].detail
    assert found["database"].fix == "run `presence migrate`"


def test_an_unreachable_postgres_is_named_with_its_password_masked(setup):
    url = f"postgresql+psycopg://presence:pg-pass-word@127.0.0.1:{free_port()}/presence"

    found = checks(setup(database_url=url))

    assert failed(found) == {"database"}
    assert "DATABASE_URL (postgresql+psycopg://presence:***@" in found["database"].detail
    assert "pg-pass-word" not in found["database"].line


# -- files --------------------------------------------------------------------------------------
def test_an_unreadable_transition_matrix_file_is_named(setup, tmp_path):
    missing = tmp_path / "matrix.toml"

    found = checks(setup(transition_matrix_file=missing))

    assert failed(found) == {"files"}
    assert f"TRANSITION_MATRIX_FILE {missing}" in found["files"].detail


def test_a_malformed_capacity_overrides_file_is_named(setup, tmp_path):
    broken = tmp_path / "overrides.toml"
    broken.write_text("[queues.\n")

    found = checks(setup(capacity_overrides_file=broken))

    assert failed(found) == {"files"}
    assert f"CAPACITY_OVERRIDES_FILE {broken}" in found["files"].detail


@pytest.mark.postgres
def test_a_postgres_database_is_checked_for_its_revision(setup):
    with scratch_postgres_database() as url:
        before = checks(setup(database_url=url))["database"]
        migrations.upgrade(url)
        after = checks(setup(database_url=url))["database"]

    assert before.verdict is Verdict.FAIL
    assert before.fix == "run `presence migrate`"
    assert after.verdict is Verdict.OK
