"""A real ``celery -A worker.app worker`` runs the pre-flight checks before consuming: a fatal
failure is one log line naming the setting, then exit status 1 with the queue untouched."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import redis

import migrations
from producer import PresenceProducer, PresenceUpdate
from producer.schema import QUEUE
from tests.support.processes import celery_worker, worker_env

SECRET = "worker-start-secret-4242"
AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
WORKER = [
    sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "threads",
    "--concurrency", "1", "-Q", "presence", "--loglevel", "INFO", "--without-mingle",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def env(api, redis_url, tmp_path):
    """A ready setup with the checks on, the client's secret being one no log may show."""
    api.admin(
        "POST",
        "/clients",
        {"client_id": "starter", "client_secret": SECRET, "permissions": ["*"]},
    )
    database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    return worker_env(
        api.emulator,
        redis_url,
        database_url,
        GENESYS_CLIENT_ID="starter",
        GENESYS_CLIENT_SECRET=SECRET,
        PREFLIGHT_ON_START="true",
    )


def refused_start(env: dict[str, str], tmp_path) -> str:
    """Start a worker with one update waiting; return its output once it has exited 1 without
    consuming the update."""
    producer = PresenceProducer(env["REDIS_URL"])
    producer.send(PresenceUpdate(user_id=AGENT, state="Break", requested_at=datetime.now(UTC)))
    producer.close()
    result = start(env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert SECRET[-8:] not in output
    assert redis.Redis.from_url(env["REDIS_URL"]).llen(QUEUE) == 1, "nothing was consumed"
    return output


def start(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess[str]:
    """The worker in a directory of its own, with ``env`` and nothing else but PATH and HOME."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        WORKER,
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def critical(output: str) -> list[str]:
    return [line for line in output.splitlines() if "CRITICAL" in line]


def test_a_ready_setup_starts_after_its_checks_pass(env, tmp_path):
    log = tmp_path / "worker.log"

    with celery_worker(env, log, concurrency=1):
        text = log.read_text()

    assert "preflight: 14 checks passed against http://127.0.0.1:" in text


def test_a_closed_api_port_is_one_line_naming_the_url(env, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    env["GENESYS_API_URL"] = url

    output = refused_start(env, tmp_path)

    first, last = critical(output)
    assert f"Genesys reachable: GENESYS_API_URL ({url}) unreachable" in first
    assert "not starting, 1 check(s) failed" in last


def test_a_worker_before_presence_migrate_says_to_run_it(env, tmp_path):
    empty = tmp_path / "fresh.sqlite3"
    sqlite3.connect(empty).close()
    env["DATABASE_URL"] = f"sqlite:///{empty}"

    output = refused_start(env, tmp_path)

    first, _ = critical(output)
    assert "database:" in first
    assert first.endswith("run `presence migrate`")


def test_a_missing_permission_stops_the_worker(api, env, tmp_path):
    api.admin(
        "POST",
        "/clients",
        {
            "client_id": "no-edit",
            "client_secret": SECRET,
            "permissions": ["presence:presenceDefinition:view", "routing:queue:view"],
        },
    )
    env["GENESYS_CLIENT_ID"] = "no-edit"

    output = refused_start(env, tmp_path)

    lines = critical(output)
    assert any("edit presence:" in line and "presence:userPresence:edit" in line for line in lines)
    # edit presence, notifications (presence topics need a presence permission), observations
    assert "not starting, 3 check(s) failed" in lines[-1]


def test_an_unknown_region_is_one_line_without_the_secret(env, tmp_path):
    del env["GENESYS_API_URL"]
    env["GENESYS_REGION"] = "mars_north_1"
    env["WFM_WEBHOOK_SECRET"] = SECRET

    result = start(env, tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "presence worker: invalid settings: GENESYS_REGION is not a known region" in (
        result.stderr
    )
    assert "mars_north_1" not in result.stderr
    assert SECRET[-8:] not in result.stderr


def test_redis_down_is_one_line_naming_redis_url(env, tmp_path):
    env["REDIS_URL"] = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"

    result = start(env, tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    assert SECRET[-8:] not in output
    assert any(
        "Redis: cannot reach Redis at REDIS_URL (redis://:***@" in line for line in critical(output)
    )
