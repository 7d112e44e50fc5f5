"""The worker's start-up line names the installed package version (and celery's, kombu's and
redis-py's), from the package metadata, in a real ``celery -A worker.app worker``'s log."""

from __future__ import annotations

from importlib.metadata import version

import migrations
from emulator.launcher import EmulatorProcess
from tests.support.processes import celery_worker, private_redis, worker_env
from worker.observability import sentry
from worker.version import package_version, startup_line


def test_the_versions_come_from_the_package_metadata():
    assert package_version() == version("presence-worker")
    assert sentry.release() == f"presence-worker@{version('presence-worker')}"
    line = startup_line()
    assert line.startswith(f"presence-worker {version('presence-worker')} starting (")
    assert f"kombu {version('kombu')}" in line
    assert f"celery {version('celery')}" in line
    assert package_version("no-such-distribution-here") == "unknown"


def test_a_real_worker_logs_its_version_once_at_start(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    log = tmp_path / "worker.log"
    args = ["--users", "5", "--queues", "1", "--rate-limit", "0"]
    with (
        EmulatorProcess(args=args) as emulator,
        private_redis() as redis_url,
        celery_worker(worker_env(emulator, redis_url, database_url), log, concurrency=1),
    ):
        pass
    lines = [line for line in log.read_text().splitlines() if "starting (celery" in line]
    assert len(lines) == 1, log.read_text()[-3000:]
    assert f"presence-worker {version('presence-worker')} starting (" in lines[0]
    assert f"kombu {version('kombu')}" in lines[0]
