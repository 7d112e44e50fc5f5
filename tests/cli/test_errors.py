"""A newcomer's first failures, each one actionable line naming the setting or file, a
non-zero exit status, no traceback and no secret (not even its end): run as real processes."""

from __future__ import annotations

import socket
import sqlite3

import pytest

from tests.support.shell import one_line, presence

SECRET = "sk-0123456789abcdefghij"  # 22 characters, like the webhook secret the issue saw leak
AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def env(tmp_path):
    """Secrets set everywhere a leak could take them from; a migrated database by default."""
    return {
        "GENESYS_API_URL": "http://127.0.0.1:9",
        "GENESYS_CLIENT_ID": "presence-worker",
        "GENESYS_CLIENT_SECRET": SECRET,
        "WFM_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
    }


def assert_no_secret(result) -> None:
    output = result.stdout + result.stderr
    for fragment in (SECRET, SECRET[-12:], SECRET[-6:], SECRET[:8]):
        assert fragment not in output


def test_an_unknown_region_names_the_variable_not_its_value(env, tmp_path):
    env.pop("GENESYS_API_URL")
    env["GENESYS_REGION"] = "mars_north_1"

    result = presence("stats", env=env, cwd=tmp_path)

    assert result.returncode == 2
    line = one_line(result)
    assert "GENESYS_REGION is not a known region" in line
    assert "mars_north_1" not in line
    assert_no_secret(result)


def test_a_bad_number_names_its_variable(env, tmp_path):
    env["RATE_LIMIT_PER_MINUTE"] = "lots"

    result = presence("audit", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert "RATE_LIMIT_PER_MINUTE" in one_line(result)
    assert_no_secret(result)


def test_migrate_into_a_missing_directory_is_one_line(env, tmp_path):
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'audit.sqlite3'}"

    result = presence("migrate", env=env, cwd=tmp_path)

    assert result.returncode == 1
    line = one_line(result)
    assert "DATABASE_URL" in line
    assert "no/such/dir/audit.sqlite3" in line
    assert "must exist and be writable" in line
    assert_no_secret(result)


@pytest.mark.parametrize("command", ["audit", "stats"])
def test_reports_on_an_unmigrated_database_say_to_migrate(env, tmp_path, command):
    sqlite3.connect(tmp_path / "audit.sqlite3").close()

    result = presence(command, env=env, cwd=tmp_path)

    assert result.returncode == 1
    line = one_line(result)
    assert "DATABASE_URL" in line
    assert line.endswith("run `presence migrate`")
    assert_no_secret(result)


@pytest.mark.parametrize("command", ["audit", "stats"])
def test_reports_on_an_unreachable_database_mask_its_password(env, tmp_path, command):
    env["DATABASE_URL"] = f"postgresql+psycopg://presence:{SECRET}@127.0.0.1:{free_port()}/x"

    result = presence(command, env=env, cwd=tmp_path)

    assert result.returncode == 1
    line = one_line(result)
    assert "cannot open the database at DATABASE_URL (postgresql+psycopg://presence:***@" in line
    assert_no_secret(result)


def test_set_with_redis_down_names_redis_url(env, tmp_path):
    env["REDIS_URL"] = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"

    result = presence("set", AGENT, "Break", env=env, cwd=tmp_path)

    assert result.returncode == 1
    line = one_line(result)
    assert "cannot reach Redis at REDIS_URL (redis://:***@127.0.0.1:" in line
    assert_no_secret(result)


def test_a_malformed_database_url_is_one_line_without_its_password(env, tmp_path):
    env["DATABASE_URL"] = f"postgres ql://presence:{SECRET}@db/presence"

    result = presence("migrate", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "DATABASE_URL is not a usable SQLAlchemy URL" in one_line(result)
    assert_no_secret(result)
