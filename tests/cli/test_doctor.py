"""``presence doctor`` as an operator runs it, against the real emulator, Redis and an audit
database: a table with a verdict and a fix per line, exit status 1 on any failure."""

from __future__ import annotations

import re

import pytest

import migrations
from tests.support.shell import presence

SECRET = "doctor-cli-secret-987654"


@pytest.fixture
def env(api, redis_url, tmp_path):
    api.admin(
        "POST",
        "/clients",
        {"client_id": "doctor-cli", "client_secret": SECRET, "permissions": ["*"]},
    )
    database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    return {
        "GENESYS_API_URL": api.emulator.base_url,
        "GENESYS_CLIENT_ID": "doctor-cli",
        "GENESYS_CLIENT_SECRET": SECRET,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "WFM_WEBHOOK_URL": f"{api.emulator.base_url}/__wfm/events",
        "WFM_WEBHOOK_SECRET": "wfm-key",
    }


def row(output: str, check: str) -> str:
    """The table row of ``check``."""
    [line] = [line for line in output.splitlines() if re.match(rf"│ {re.escape(check)}\s+│", line)]
    return line


def test_a_ready_setup_exits_zero_with_every_check_ok(env, tmp_path):
    result = presence("doctor", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    for check in (
        "settings",
        "Redis",
        "database",
        "credentials",
        "edit presence",
        "presence source",
        "WFM endpoint",
    ):
        assert "│ ok " in row(result.stdout, check)
    assert "ready: 15 checks, 0 warning(s)" in result.stdout


def test_a_bad_secret_is_a_failing_row_with_its_fix_and_exit_one(env, tmp_path):
    env["GENESYS_CLIENT_SECRET"] = "wrong-" + SECRET

    result = presence("doctor", env=env, cwd=tmp_path)

    assert result.returncode == 1
    line = row(result.stdout, "credentials")
    assert "│ fail " in line
    assert "check GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET" in line
    assert "1 check(s) failed" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert SECRET[-8:] not in result.stdout + result.stderr


def test_invalid_settings_are_one_failing_row(env, tmp_path):
    env["CHANNEL_SLOTS"] = "99"

    result = presence("doctor", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "CHANNEL_SLOTS" in row(result.stdout, "settings")
    assert "│ fail " in row(result.stdout, "settings")
    assert "Traceback" not in result.stdout + result.stderr
