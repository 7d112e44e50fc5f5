"""End-to-end harness for the capacity-guard and WFM tests (``tests/wfm`` imports it).

Real processes only: a module emulator over sockets, a private ``redis-server``, a migrated SQLite
audit database per test, and ``celery -A worker.app worker`` processes started per test through
:class:`QueueFleet` (a :class:`~tests.support.fleet.WorkerFleet` that consumes the queues it is
told, e.g. ``presence`` alone to leave WFM deliveries unconsumed) or ``celery beat``.

The shape follows ``tests/tasks/conftest.py`` (copied in part, so neither suite depends on the
other's fixtures).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import migrations
from emulator.launcher import EmulatorProcess
from models import AuditRecord, WfmAttempt, WfmDelivery
from producer.schema import QUEUE, TASK_NAME
from tests.support.fleet import WorkerFleet
from worker.embedded_redis import EmbeddedRedis, _free_port, _server_binary, reachable

WARM_UP_AGENTS = 4  # the last active agents, set Available before workers start; never handed out
WFM_SECRET = "wfm-sink-secret"  # the emulator sink's default key
STATE_CHANGING = {"confirmed", "applied_unconfirmed", "drifted"}
APPLIED = {"confirmed", "applied_unconfirmed"}


@dataclass
class QueueFleet(WorkerFleet):
    """Worker processes consuming ``queues`` (``-Q``) instead of always ``presence,wfm``."""

    queues: str = "presence,wfm"

    def start(self, count: int = 1, *, pool: str = "threads", concurrency: int = 4) -> None:
        for _ in range(count):
            name = f"cap-{uuid.uuid4().hex[:6]}@%h"
            log = (self.logdir / f"worker-{len(self.processes)}.log").open("wb")
            cmd = [
                sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", pool,
                "--concurrency", str(concurrency), "-Q", self.queues, "-n", name,
                "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            ]  # fmt: skip
            self.processes.append(
                subprocess.Popen(
                    cmd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
                )
            )
        self.wait_ready(len(self.processes), timeout_s=60)


@pytest.fixture(scope="module")
def emulator_args() -> list[str]:
    """400 agents in 4 queues (each agent in 1-3 of them), fast heartbeats, no rate limit."""
    return ["--users", "400", "--queues", "4", "--heartbeat", "0.5", "--rate-limit", "0"]


@pytest.fixture(scope="module")
def e2e_emulator(emulator_args: list[str]) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(args=emulator_args) as proc:
        yield proc


@pytest.fixture(scope="module")
def module_redis() -> Iterator[str]:
    """A ``redis-server`` of this module's own: nobody else's queues or flushes reach it."""
    workdir = tempfile.mkdtemp(prefix="presence-cap-redis-")
    port = _free_port()
    cmd = [
        _server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", workdir,
    ]  # fmt: skip
    handle = EmbeddedRedis(
        f"redis://127.0.0.1:{port}/0", subprocess.Popen(cmd, stdout=subprocess.DEVNULL), workdir
    )
    try:
        deadline = time.monotonic() + 15
        while not reachable(handle.url, 0.2):
            assert time.monotonic() < deadline, "the private Redis server did not start"
            time.sleep(0.05)
        yield handle.url
    finally:
        handle.stop()


class Harness:
    """One test's pipeline: workers, producer, emulator admin, audit and outbox tables."""

    def __init__(
        self, emulator: EmulatorProcess, redis_url: str, database_url: str, workdir: Path
    ) -> None:
        self.emulator = emulator
        self.redis_url = redis_url
        self.database_url = database_url
        self.workdir = workdir
        self.fleets: list[QueueFleet] = []
        self.beats: list[subprocess.Popen[bytes]] = []
        self.warm_up_ids: set[str] = set()
        self.app = Celery("cap-producer", broker=redis_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"])
        self.engine: Engine = create_engine(database_url, poolclass=NullPool)
        self.http = httpx.Client(base_url=emulator.base_url, timeout=30)
        self.redis = redis.Redis.from_url(redis_url)
        self._token: str | None = None

    # -- environment, workers, beat -------------------------------------------------------------
    @property
    def sink_url(self) -> str:
        return f"{self.emulator.base_url}/__wfm/events"

    def wfm_env(self, **overrides: object) -> dict[str, object]:
        """WFM sync to the emulator's sink with short backoffs."""
        return {
            "WFM_WEBHOOK_URL": self.sink_url,
            "WFM_WEBHOOK_SECRET": WFM_SECRET,
            "WFM_RETRY_BACKOFF_S": "0.2",
            "WFM_RETRY_BACKOFF_MAX_S": "1",
            **overrides,
        }

    def env(self, **overrides: object) -> dict[str, str]:
        env = {
            "GENESYS_API_URL": self.emulator.base_url,
            "GENESYS_CLIENT_ID": self.emulator.client_id,
            "GENESYS_CLIENT_SECRET": self.emulator.client_secret,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "NOTIFICATION_HEARTBEAT_S": "0.5",
            "ACK_TIMEOUT_S": "3",
            "HTTP_TIMEOUT_S": "10",
            "RETRY_BACKOFF_S": "0.2",
            "RETRY_BACKOFF_MAX_S": "2",
            "MAX_RETRIES": "3",
            "BROKER_VISIBILITY_TIMEOUT_S": "900",
            "RATE_LIMIT_PER_MINUTE": "100000",
            "PYTHONUNBUFFERED": "1",
        }
        env.update({name: str(value) for name, value in overrides.items()})
        return env

    def start(
        self,
        count: int = 1,
        *,
        queues: str = "presence,wfm",
        concurrency: int = 4,
        warm_up: bool = True,
        **overrides: object,
    ) -> QueueFleet:
        """Start ``count`` workers; with ``warm_up`` wait until each holds a connected notification
        socket subscribed to every active agent (so changes end ``confirmed``)."""
        logdir = self.workdir / f"fleet-{len(self.fleets)}"
        logdir.mkdir(parents=True)
        fleet = QueueFleet(self.env(**overrides), logdir, queues=queues)
        self.fleets.append(fleet)
        fleet.start(count, concurrency=concurrency)
        if warm_up:
            self.warm_up(fleet, count)
        return fleet

    def warm_up(self, fleet: QueueFleet, sockets: int, timeout_s: float = 120) -> None:
        """Available → Available for the reserved agents (no guard: they are off queue) until
        ``sockets`` new channels are connected and carry every active agent's topic."""
        before = {c["id"] for c in self.connected_channels()}
        active = len(self.active_users())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for user in self.warm_up_agents():
                self.warm_up_ids.add(self.send(self.update(user["id"], "Available")))
            batch_deadline = min(deadline, time.monotonic() + 10)
            while time.monotonic() < batch_deadline:
                primed = [c for c in self.connected_channels() if c["id"] not in before]
                if len(primed) >= sockets and all(c["topics"] >= active for c in primed):
                    self.wait_idle(timeout_s=max(5.0, deadline - time.monotonic()))
                    return
                time.sleep(0.2)
        pytest.fail(f"{sockets} worker socket(s) never primed\n{fleet.logs()}")

    def beat(self, **overrides: object) -> subprocess.Popen[bytes]:
        """``celery -A worker.app beat`` (its schedule file in the test's directory)."""
        log = (self.workdir / f"beat-{len(self.beats)}.log").open("wb")
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO",
            "-s", str(self.workdir / f"beat-schedule-{len(self.beats)}"),
        ]  # fmt: skip
        process = subprocess.Popen(
            cmd, env={**os.environ, **self.env(**overrides)}, stdout=log, stderr=subprocess.STDOUT
        )
        self.beats.append(process)
        return process

    def connected_channels(self) -> list[dict[str, Any]]:
        channels: list[dict[str, Any]] = self.admin("GET", "/channels").json()
        return [c for c in channels if c["connected"]]

    def logs(self) -> str:
        parts = [fleet.logs() for fleet in self.fleets]
        parts += [p.read_text(errors="replace")[-3000:] for p in self.workdir.glob("beat-*.log")]
        return "\n".join(parts)

    def close(self) -> None:
        for process in self.beats:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.beats:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for fleet in self.fleets:
            fleet.stop()
        self.app.close()
        self.engine.dispose()
        self.http.close()
        self.redis.close()

    # -- producing --------------------------------------------------------------------------------
    @staticmethod
    def update(user_id: str, state: str, **extra: object) -> dict[str, Any]:
        """A schema-v1 payload (``capacity_policy``, ``defer_until``… as keyword extras)."""
        payload: dict[str, Any] = {
            "version": 1,
            "user_id": user_id,
            "state": state,
            "source": "e2e",
            "requested_at": datetime.now(UTC).isoformat(),
        }
        payload.update(extra)
        return payload

    def send(self, payload: object) -> str:
        task_id = str(uuid.uuid4())
        self.app.send_task(TASK_NAME, args=[payload], queue=QUEUE, task_id=task_id)
        return task_id

    # -- the audit and outbox tables ----------------------------------------------------------
    def rows(self, request_ids: Iterable[str] | None = None) -> list[AuditRecord]:
        """Audit rows without the warm-up's, oldest first; only ``request_ids`` when given."""
        with Session(self.engine) as session:
            records = list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))
        wanted = set(request_ids) if request_ids is not None else None
        return [
            r
            for r in records
            if r.request_id not in self.warm_up_ids and (wanted is None or r.request_id in wanted)
        ]

    def all_rows(self) -> list[AuditRecord]:
        """Every audit row, warm-up included."""
        with Session(self.engine) as session:
            return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))

    def wait_rows(
        self, count: int, *, request_ids: Iterable[str] | None = None, timeout_s: float = 120
    ) -> list[AuditRecord]:
        ids = list(request_ids) if request_ids is not None else None
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.rows(ids)
            if len(rows) >= count:
                return rows
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"{len(rows)} of {count} audit rows after {timeout_s:.0f} s "
                    f"({sorted(r.outcome for r in rows)})\n{self.logs()}"
                )
            time.sleep(0.2)

    def deliveries(self) -> list[WfmDelivery]:
        with Session(self.engine) as session:
            return list(session.scalars(select(WfmDelivery).order_by(WfmDelivery.id)))

    def attempts(self) -> list[WfmAttempt]:
        with Session(self.engine) as session:
            return list(session.scalars(select(WfmAttempt).order_by(WfmAttempt.id)))

    def wait_deliveries(
        self, *, states: set[str], count: int | None = None, timeout_s: float = 120
    ) -> list[WfmDelivery]:
        """Wait until every outbox row (at least ``count`` of them) is in one of ``states``."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.deliveries()
            if (count is None or len(rows) >= count) and all(r.state in states for r in rows):
                return rows
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"outbox not settled after {timeout_s:.0f} s: "
                    f"{[(r.id, r.state, r.attempts, r.last_status) for r in rows]}\n{self.logs()}"
                )
            time.sleep(0.2)

    # -- the broker -----------------------------------------------------------------------------
    def queue_length(self, queue: str = QUEUE) -> int:
        """Messages of ``queue`` waiting or held by a worker (running, or a retry's ETA)."""
        held = sum(
            1 for raw in self.redis.hvals("unacked") if json.loads(raw)[2] == queue
        )  # [message, exchange, routing key]
        return int(self.redis.llen(queue)) + held

    def wait_idle(self, *, timeout_s: float = 60, quiet_s: float = 1.0) -> None:
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.queue_length() == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_s:
                    return
            else:
                quiet_since = None
            time.sleep(0.1)
        pytest.fail(f"presence messages still queued after {timeout_s:.0f} s\n{self.logs()}")

    # -- the emulator -------------------------------------------------------------------------
    def admin(self, method: str, path: str, json: object = None) -> httpx.Response:
        response = self.http.request(method, f"/__emulator{path}", json=json)
        response.raise_for_status()
        return response

    def users(self) -> list[dict[str, Any]]:
        """Every user as the emulator sees it now (presence, routing status, queues)."""
        users: list[dict[str, Any]] = self.admin("GET", "/users").json()
        return users

    def active_users(self) -> list[dict[str, Any]]:
        return [u for u in self.users() if u["state"] == "active"]

    def warm_up_agents(self) -> list[dict[str, Any]]:
        return self.active_users()[-WARM_UP_AGENTS:]

    def agents(self) -> list[dict[str, Any]]:
        """Active agents a test may use (never the warm-up ones)."""
        return self.active_users()[:-WARM_UP_AGENTS]

    def set_presence(self, user_id: str, presence: str) -> None:
        self.admin("PUT", f"/users/{user_id}/presence", {"presence": presence})

    def history_paths(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """Per agent, how each presence change came (``patch``, ``admin``, …), oldest first."""
        ids = list(user_ids)
        response = self.http.get("/__emulator/history", params=[("user_id", u) for u in ids])
        response.raise_for_status()
        found = response.json()
        return {u: [entry["path"] for entry in found.get(u, [])] for u in ids}

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "/stats").json()
        return result

    def route_count(self, route: str) -> int:
        return sum(self.stats()["requests"].get(route, {}).values())

    def sink(self) -> dict[str, Any]:
        """The WFM sink: ``{"summary": …, "deliveries": […]}``."""
        result: dict[str, Any] = self.admin("GET", "/wfm/deliveries").json()
        return result

    def token(self) -> str:
        if self._token is None:
            response = self.http.post(
                "/oauth/token",
                auth=(self.emulator.client_id, self.emulator.client_secret),
                data={"grant_type": "client_credentials"},
            )
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def api_get(self, path: str, **params: object) -> Any:
        response = self.http.get(
            path, params=params, headers={"Authorization": f"Bearer {self.token()}"}
        )
        response.raise_for_status()
        return response.json()

    def joined_members(self, queue_id: str) -> set[str]:
        """Users joined to the queue (the ones its observations count)."""
        out: set[str] = set()
        page = 1
        while True:
            listing = self.api_get(
                f"/api/v2/routing/queues/{queue_id}/members",
                pageSize=100,
                pageNumber=page,
                joined="true",
            )
            out |= {m["id"] for m in listing["entities"]}
            if len(listing["entities"]) < 100:
                return out
            page += 1


@pytest.fixture
def harness(e2e_emulator: EmulatorProcess, module_redis: str, tmp_path: Path) -> Iterator[Harness]:
    """A reset emulator (warm-up agents set Available), an empty Redis, a fresh migrated audit
    database; every process started through it is stopped at the end of the test."""
    client = redis.Redis.from_url(module_redis)
    client.flushall()
    client.close()
    database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    h = Harness(e2e_emulator, module_redis, database_url, tmp_path)
    h.admin("POST", "/reset")
    for user in h.warm_up_agents():
        h.set_presence(user["id"], "Available")  # warm-up changes never consult the guard
    try:
        yield h
    finally:
        h.close()
