"""Real processes for operating tests: a private Redis server and a ``celery -A worker.app
worker`` with task events, each stopped by its context manager."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from emulator.launcher import EmulatorProcess
from sandbox.servers import DurableRedis
from worker.embedded_redis import start_private_redis


@contextmanager
def private_redis(timeout_s: float = 15) -> Iterator[str]:
    """A ``redis-server`` of the caller's own on a free loopback port, keeping nothing on disk
    (:func:`worker.embedded_redis.start_private_redis`); yields ``redis://…/0``.

    The one way tests start a private Redis: module fixtures wrap it, other tests enter it.
    """
    handle = start_private_redis(timeout_s)
    try:
        yield handle.url
    finally:
        if handle.process is not None:
            stop(handle.process)
        handle.stop()  # the server has exited: this removes its directory


def worker_env(
    emulator: EmulatorProcess, redis_url: str, database_url: str, **overrides: object
) -> dict[str, str]:
    """What a worker needs: the emulator's URL and credentials, Redis, the audit database, and
    short retry delays (``RETRY_BACKOFF_S=0.5`` style overrides win)."""
    env = {
        "GENESYS_API_URL": emulator.base_url,
        "GENESYS_CLIENT_ID": emulator.client_id,
        "GENESYS_CLIENT_SECRET": emulator.client_secret,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "RETRY_BACKOFF_S": "0.2",
        "RETRY_BACKOFF_MAX_S": "1",
        "NOTIFICATION_HEARTBEAT_S": "0.5",
        "PYTHONUNBUFFERED": "1",
        # These workers are measured by the request and channel counts of the tests; the
        # start-up checks have their own tests (tests/worker/preflight/test_start.py).
        "PREFLIGHT_ON_START": "false",
    }
    env.update({name: str(value) for name, value in overrides.items()})
    return env


@contextmanager
def celery_worker(
    env: dict[str, str], log: Path, *, concurrency: int = 2, timeout_s: float = 60
) -> Iterator[str]:
    """One ``celery -A worker.app worker -E`` (threads) on the ``presence`` queue, answering a
    ping before this yields its node name; its output goes to ``log``."""
    name = f"ops-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-E", "--pool", "threads",
        "--concurrency", str(concurrency), "-Q", "presence,wfm,shifts", "-n", name, "--loglevel", "INFO",
        "--without-mingle",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_ping(env["REDIS_URL"], name, process, log, timeout_s)
        yield name
    finally:
        stop(process, grace_s=20)


def wait_for_ping(
    redis_url: str, name: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    app = Celery(broker=redis_url, set_as_current=False)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if any(name in reply for reply in app.control.ping([name], timeout=0.5) or []):
                return
    finally:
        app.close()
    raise RuntimeError(f"worker {name} did not answer:\n{tail(log)}")


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def stop(process: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def durable_redis(timeout_s: float = 15) -> Iterator[DurableRedis]:
    """A started :class:`DurableRedis`, stopped and removed afterwards."""
    server = DurableRedis(timeout_s=timeout_s)
    try:
        server.start()
        yield server
    finally:
        server.close()
