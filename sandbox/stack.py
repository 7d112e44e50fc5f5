"""``LocalStack``: start the emulator, pick a Redis, create an audit database, run workers.

With ``orgs`` the emulator serves those orgs beside ``default`` and the workers get an orgs file
(``ORGS_FILE``) naming each org's client, its secret in an environment variable of its own
(:mod:`sandbox.orgs`).

Every process it starts is stopped when the stack closes. The Redis is the one at the given URL
(one database index reserved for the stack: its old ``presence*`` keys are removed at start,
and every key it wrote at close) or, when none answers, a private embedded server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import redis
from celery import Celery

import migrations
from emulator.launcher import EmulatorProcess, stop_processes
from sandbox.orgs import emulator_entries, write_orgs_file
from worker.embedded_redis import EmbeddedRedis, ensure_redis


def workers_answer(broker_url: str, count: int, timeout_s: float) -> bool:
    """True once ``count`` Celery workers on ``broker_url`` answer a ping, False on timeout."""
    app = Celery(broker=broker_url, set_as_current=False)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if len(app.control.ping(timeout=0.5) or []) >= count:
                return True
    finally:
        app.close()
    return False


@dataclass
class LocalStack:
    """Configure, then ``start()`` (or use as a context manager)."""

    emulator_args: list[str] = field(default_factory=list)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_db: int = 15
    client_id: str = "presence-sandbox"
    client_secret: str = "sandbox-secret"  # noqa: S105 - the emulator's sandbox credential
    workdir: Path | None = None
    database_file: str | None = None  # a fresh file each start; random name when None
    worker_env: dict[str, str] = field(default_factory=dict)
    # Extra orgs as ``--org`` takes them (``NAME[,users=N][,rate-limit=N]…``), all in the orgs
    # file; ``org_options``: per-org orgs-file settings by name (``rate_limit_per_minute`` …).
    orgs: list[str] = field(default_factory=list)
    shared_user_ids: bool = False
    org_options: dict[str, dict[str, object]] = field(default_factory=dict)

    emulator: EmulatorProcess | None = None
    redis: EmbeddedRedis | None = None
    broker_url: str = ""
    database_url: str = ""
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    beats: list[subprocess.Popen[bytes]] = field(default_factory=list)
    orgs_env: dict[str, str] = field(default_factory=dict)
    _kept: set[bytes] = field(default_factory=set)

    def start(self) -> LocalStack:
        """Raises EmulatorStartError or RuntimeError when a piece does not come up
        (EmbeddedRedisMissing when no Redis answers and none can be started)."""
        self.workdir = self.workdir or Path(tempfile.mkdtemp(prefix="presence-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = ensure_redis(self.redis_url)  # first: EmbeddedRedisMissing fails fast
        self.emulator = EmulatorProcess(
            client_id=self.client_id,
            client_secret=self.client_secret,
            args=self.emulator_args,
            orgs=self.orgs,
            shared_user_ids=self.shared_user_ids,
        ).start()
        if self.orgs:
            entries = emulator_entries(self.emulator, options=self.org_options)
            self.orgs_env = write_orgs_file(self.workdir / "orgs.toml", entries)
        base = self.redis.url.rsplit("/", 1)[0]
        self.broker_url = self.redis.url if self.redis.embedded else f"{base}/{self.redis_db}"
        client = redis.Redis.from_url(self.broker_url)
        for key in client.scan_iter("presence*"):
            client.delete(key)  # the stack's own leftovers: queue, limiter, caches
        self._kept = set(client.scan_iter())  # not the stack's: left alone at close
        client.close()
        database = self.workdir / (self.database_file or f"audit-{uuid.uuid4().hex[:8]}.sqlite3")
        for leftover in (
            database,
            database.with_name(database.name + "-wal"),
            database.with_name(database.name + "-shm"),
        ):
            leftover.unlink(missing_ok=True)
        self.database_url = f"sqlite:///{database}"
        migrations.upgrade(self.database_url)
        return self

    @property
    def env(self) -> dict[str, str]:
        """The environment a worker (or the CLI) needs to use this stack."""
        assert self.emulator is not None
        return {
            "GENESYS_API_URL": self.emulator.base_url,
            "GENESYS_CLIENT_ID": self.client_id,
            "GENESYS_CLIENT_SECRET": self.client_secret,
            "REDIS_URL": self.broker_url,
            "DATABASE_URL": self.database_url,
            **self.orgs_env,
            **self.worker_env,
        }

    def start_workers(
        self,
        count: int = 1,
        *,
        pool: str = "threads",
        concurrency: int = 16,
        app: str = "worker.app",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """Start ``count`` worker processes and wait until all answer a ping (their log level:
        ``STACK_WORKER_LOGLEVEL``, WARNING unless set)."""
        assert self.workdir is not None
        for _ in range(count):
            index = len(self.workers)
            log = (self.workdir / f"worker-{index}.log").open("wb")
            cmd = [
                sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool,
                "--concurrency", str(concurrency), "-Q", "presence,wfm,shifts", "--loglevel", os.environ.get("STACK_WORKER_LOGLEVEL", "WARNING"),
                "-n", f"stack-{index}-{uuid.uuid4().hex[:4]}@%h", "--without-gossip", "--without-mingle",
            ]  # fmt: skip
            env = {**os.environ, **self.env, **(extra_env or {})}
            self.workers.append(
                subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        self.wait_for_workers(len(self.workers))

    def start_beat(self, extra_env: dict[str, str] | None = None) -> None:
        """Start ``celery beat`` (the WFM sweeper and the shift dispatcher) for this stack."""
        assert self.workdir is not None
        log = (self.workdir / f"beat-{len(self.beats)}.log").open("wb")
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO",
            "-s", str(self.workdir / f"beat-schedule-{len(self.beats)}"),
        ]  # fmt: skip
        env = {**os.environ, **self.env, **(extra_env or {})}
        self.beats.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))

    def wait_for_workers(self, count: int, timeout_s: float = 60) -> None:
        if not workers_answer(self.broker_url, count, timeout_s):
            raise RuntimeError(
                f"workers did not answer within {timeout_s:.0f} s; logs in {self.workdir}"
            )

    def stop_workers(self) -> None:
        stop_processes(self.workers, timeout_s=20)
        self.workers.clear()

    @property
    def org_names(self) -> list[str]:
        """``default`` and every extra org the emulator serves."""
        assert self.emulator is not None
        return self.emulator.org_names

    def admin(self, method: str, path: str, *, org: str | None = None, json: object = None) -> Any:
        """An emulator admin call (``/__emulator<path>``) on ``org`` (``default`` when None);
        its decoded JSON body. Raises httpx.HTTPStatusError on an error answer."""
        assert self.emulator is not None
        params = {"org": org} if org not in (None, "default") else {}
        response = httpx.request(
            method,
            f"{self.emulator.base_url}/__emulator{path}",
            params=params,
            json=json,
            timeout=60,
        )
        response.raise_for_status()
        return response.json()

    def emulator_stats(self, org: str | None = None) -> dict[str, Any]:
        stats: dict[str, Any] = self.admin("GET", "/stats", org=org)
        return stats

    def users(self, org: str | None = None) -> list[dict[str, Any]]:
        """Every user of ``org`` as the emulator sees it now (state, presence, queues)."""
        users: list[dict[str, Any]] = self.admin("GET", "/users", org=org)
        return users

    def active_users(self, org: str | None = None) -> list[str]:
        return [u["id"] for u in self.users(org) if u["state"] == "active"]

    def close(self) -> None:
        stop_processes(self.beats, timeout_s=20)
        self.beats.clear()
        self.stop_workers()
        if self.emulator is not None:
            self.emulator.stop()
        if self.redis is not None:
            if not self.redis.embedded and self.broker_url:
                self._remove_keys()
            self.redis.stop()

    def _remove_keys(self) -> None:
        """Delete what the stack wrote to its database (broker queues, limiter, caches): every
        key that was not there when it started."""
        client = redis.Redis.from_url(self.broker_url)
        try:
            ours = [key for key in client.scan_iter(count=1000) if key not in self._kept]
            for start in range(0, len(ours), 500):
                client.delete(*ours[start : start + 500])
        except redis.RedisError:
            pass  # the server went away: nothing left to clean
        finally:
            client.close()

    def __enter__(self) -> LocalStack:
        return self.start() if self.emulator is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
