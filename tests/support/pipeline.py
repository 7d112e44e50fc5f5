"""The end-to-end harness shared by ``tests/tasks``, ``tests/capacity`` and ``tests/wfm``.

Real processes only: a module emulator over sockets, a module-private ``redis-server``, a migrated
audit database per test (SQLite, or PostgreSQL with ``param="postgres"``) and ``celery -A
worker.app worker`` processes started per test through :class:`Pipeline`.

``tests/conftest.py`` registers this module as a plugin, so its fixtures are there for every
suite; a suite's ``conftest.py`` (or a test module) overrides ``emulator_args`` and hands the
harness out through :func:`opened`. Every test resets the emulator, empties the module's own Redis
server and migrates a fresh audit database, so nothing a test does leaks into the next one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import migrations
from emulator.launcher import EmulatorProcess
from models import AuditRecord
from producer.schema import QUEUE, TASK_NAME, WAVE_TASK_NAME, wave_element
from tests.support.fleet import WorkerFleet
from tests.support.processes import private_redis, worker_env
from tests.support.services import scratch_postgres_database
from worker.broker import ledger
from worker.broker.ledger import ENTRIES_KEY

APPLIED = {"confirmed", "applied_unconfirmed"}
P = TypeVar("P", bound="Pipeline")


# -- fixtures (a plugin of tests/conftest.py) -----------------------------------------------
@pytest.fixture(scope="module")
def emulator_args() -> list[str]:
    """The module emulator's command line: fast heartbeats, no platform rate limit."""
    return ["--users", "200", "--queues", "6", "--heartbeat", "0.5", "--rate-limit", "0"]


@pytest.fixture(scope="module")
def pipeline_emulator(emulator_args: list[str]) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(args=emulator_args) as proc:
        yield proc


@pytest.fixture(scope="module")
def module_redis() -> Iterator[str]:
    """A Redis server of this module's own (a real ``redis-server`` on a free loopback port).

    Not the shared one at 127.0.0.1:6379: other suites and benchmarks flush or fill its databases
    while they run, and a stranger's ``presence`` queue there would feed these workers.
    """
    with private_redis() as url:
        yield url


@pytest.fixture
def pipeline_redis_url(module_redis: str) -> str:
    """The module's server, emptied before each test."""
    client = redis.Redis.from_url(module_redis)
    client.flushall()
    client.close()
    return module_redis


@pytest.fixture
def audit_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated audit database URL: SQLite by default, PostgreSQL with ``param="postgres"``."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
        migrations.upgrade(url)
        yield url
        return
    assert kind == "postgres", kind
    with scratch_postgres_database() as url:
        migrations.upgrade(url)
        yield url


# -- the harness ----------------------------------------------------------------------------------
class Pipeline:
    """One test's view of the whole pipeline: send updates, run workers, read both sides.

    A fixture hands it out through :func:`opened`.
    """

    WARM_UP_AGENTS = 8  # the last active agents, which the warm-up writes to; never handed out
    TIMEOUT_S: float = 90  # default wait for the warm-up and for audit rows

    def __init__(
        self, emulator: EmulatorProcess, redis_url: str, database_url: str, workdir: Path
    ) -> None:
        self.emulator = emulator
        self.redis_url = redis_url
        self.database_url = database_url
        self.workdir = workdir
        self.fleets: list[WorkerFleet] = []
        self.warm_up_ids: set[str] = set()
        self.app = Celery("e2e-producer", broker=redis_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"])
        self.engine: Engine = create_engine(database_url, poolclass=NullPool)
        self.http = httpx.Client(base_url=emulator.base_url, timeout=30)
        self.redis = redis.Redis.from_url(redis_url)
        self._token: str | None = None
        self._users: list[dict[str, Any]] | None = None

    # -- environment and workers ----------------------------------------------------------------
    def env(self, **overrides: object) -> dict[str, str]:
        """The worker environment; keyword overrides use the variable names (``MAX_RETRIES=2``)."""
        defaults: dict[str, object] = {
            "ACK_TIMEOUT_S": "3",
            "HTTP_TIMEOUT_S": "10",
            "RETRY_BACKOFF_MAX_S": "2",
            "MAX_RETRIES": "3",
            "BROKER_VISIBILITY_TIMEOUT_S": "900",
            "RATE_LIMIT_PER_MINUTE": "3000",
        }
        return worker_env(
            self.emulator, self.redis_url, self.database_url, **{**defaults, **overrides}
        )

    def start(
        self,
        count: int = 1,
        *,
        concurrency: int = 4,
        pool: str = "threads",
        queues: str = "presence,wfm,shifts",
        warm_up: bool = True,
        **overrides: object,
    ) -> WorkerFleet:
        """Start ``count`` worker processes consuming ``queues``; with ``warm_up`` wait until each
        holds a connected, primed notification socket (a fresh process opens it on its first
        update)."""
        logdir = self.workdir / f"fleet-{len(self.fleets)}"
        logdir.mkdir(parents=True)
        fleet = WorkerFleet(self.env(**overrides), logdir, queues=queues)
        self.fleets.append(fleet)
        fleet.start(count, pool=pool, concurrency=concurrency, timeout_s=60)
        if warm_up:
            self.warm_up(fleet, count)
        return fleet

    def warm_up(self, fleet: WorkerFleet, sockets: int, timeout_s: float | None = None) -> None:
        """Send updates to the reserved agents until ``sockets`` more notification channels are
        connected and carry every active agent's topic."""
        timeout_s = self.TIMEOUT_S if timeout_s is None else timeout_s
        before = {c["id"] for c in self.connected_channels()}
        active = len(self.active_users())
        deadline = time.monotonic() + timeout_s
        while True:
            for user in self.warm_up_agents():
                self.warm_up_ids.add(self.send(self.update(user["id"], "Available")))
            batch_deadline = min(deadline, time.monotonic() + 10)
            while time.monotonic() < batch_deadline:
                primed = [c for c in self.connected_channels() if c["id"] not in before]
                if len(primed) >= sockets and all(c["topics"] >= active for c in primed):
                    self.wait_idle(timeout_s=max(5.0, deadline - time.monotonic()), fleet=fleet)
                    return
                time.sleep(0.2)
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"{sockets} worker socket(s) never connected and primed: "
                    f"{self.admin('GET', '/channels').json()}\n{fleet.logs()}"
                )

    def connected_channels(self) -> list[dict[str, Any]]:
        channels: list[dict[str, Any]] = self.admin("GET", "/channels").json()
        return [c for c in channels if c["connected"]]

    def logs(self) -> str:
        return "\n".join(fleet.logs() for fleet in self.fleets)

    def full_logs(self) -> str:
        """Every line every worker logged (:meth:`logs` keeps the tails only)."""
        paths = sorted(self.workdir.rglob("worker-*.log"))
        return "\n".join(path.read_text(errors="replace") for path in paths)

    def close(self) -> None:
        for fleet in self.fleets:
            fleet.stop()
        self.app.close()
        self.engine.dispose()
        self.http.close()
        self.redis.close()

    # -- producing --------------------------------------------------------------------------------
    @staticmethod
    def update(
        user_id: str,
        state: str,
        reason: str | None = None,
        *,
        requested_at: datetime | None = None,
        **extra: object,
    ) -> dict[str, Any]:
        """A schema-v1 payload as a producer would send it (``capacity_policy``, ``defer_until``…
        as keyword extras)."""
        payload: dict[str, Any] = {
            "version": 1,
            "user_id": user_id,
            "state": state,
            "source": "e2e",
            "requested_at": (requested_at or datetime.now(UTC)).isoformat(),
        }
        if reason is not None:
            payload["reason"] = reason
        payload.update(extra)
        return payload

    def send(self, payload: object, *, task_id: str | None = None) -> str:
        """Enqueue ``presence.update`` with any payload (valid or not); returns the task id."""
        task_id = task_id or str(uuid.uuid4())
        self.app.send_task(TASK_NAME, args=[payload], queue=QUEUE, task_id=task_id)
        return task_id

    def send_wave(self, updates: dict[str, dict[str, Any]], *, task_id: str | None = None) -> str:
        """Enqueue ``presence.wave`` with ``{request id: payload}``; returns the task id."""
        task_id = task_id or str(uuid.uuid4())
        elements = [wave_element(request_id, p) for request_id, p in updates.items()]
        self.app.send_task(WAVE_TASK_NAME, args=[elements], queue=QUEUE, task_id=task_id)
        return task_id

    # -- the audit table --------------------------------------------------------------------------
    def all_rows(self) -> list[AuditRecord]:
        """Every audit row, warm-up included, oldest first."""
        with Session(self.engine) as session:
            return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))

    def rows(self, request_ids: Iterable[str] | None = None) -> list[AuditRecord]:
        """Audit rows (warm-up rows excluded), oldest first; only ``request_ids`` when given."""
        wanted = set(request_ids) if request_ids is not None else None
        return [
            r
            for r in self.all_rows()
            if r.request_id not in self.warm_up_ids and (wanted is None or r.request_id in wanted)
        ]

    def wait_rows(
        self,
        count: int,
        *,
        request_ids: Iterable[str] | None = None,
        timeout_s: float | None = None,
    ) -> list[AuditRecord]:
        """Wait until at least ``count`` rows exist; fails with the workers' logs otherwise."""
        timeout_s = self.TIMEOUT_S if timeout_s is None else timeout_s
        ids = list(request_ids) if request_ids is not None else None
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.rows(ids)
            if len(rows) >= count:
                return rows
            if time.monotonic() >= deadline:
                outcomes = sorted(r.outcome for r in rows)
                pytest.fail(
                    f"{len(rows)} of {count} audit rows after {timeout_s:.0f} s "
                    f"({outcomes}); queue={self.queue_length()}\n{self.logs()}"
                )
            time.sleep(0.2)

    # -- the broker ---------------------------------------------------------------------------
    def queue_length(self, queue: str = QUEUE) -> int:
        """Messages of ``queue`` waiting, held by a worker, or scheduled for a retry (in the
        broker ledger)."""
        return (
            int(self.redis.llen(queue))
            + len(self.unacked(self.redis, queue))
            + self.scheduled(self.redis, queue)
        )

    @staticmethod
    def scheduled(client: redis.Redis, queue: str = QUEUE) -> int:
        """Retries of ``queue`` waiting in the broker ledger's schedule."""
        return sum(
            1
            for raw in client.hvals(ENTRIES_KEY)
            if (entry := json.loads(raw))["state"] == "scheduled" and entry["queue"] == queue
        )

    @staticmethod
    def unacked(client: redis.Redis, queue: str = QUEUE) -> list[str]:
        """Delivery tags of the ``queue`` messages workers hold unacknowledged, in the ledger or
        in kombu's ``unacked`` (other queues, such as WFM deliveries for ``presence``, left
        out)."""
        held = [
            e["key"]
            for e in ledger.pending(client)
            if e["holder"] and e["list"].split("\x06", 1)[0] == queue
        ]
        return held + [
            tag.decode()
            for tag, raw in client.hgetall("unacked").items()
            if json.loads(raw)[2] == queue  # [message, exchange, routing key]
        ]

    def wait_idle(
        self, *, timeout_s: float = 60, fleet: WorkerFleet | None = None, quiet_s: float = 1.0
    ) -> None:
        """Wait until no presence message is queued or held (retries included) for ``quiet_s``."""
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
        logs = fleet.logs() if fleet is not None else self.logs()
        pytest.fail(f"presence messages still queued after {timeout_s:.0f} s\n{logs}")

    # -- the emulator -------------------------------------------------------------------------
    def admin(self, method: str, path: str, json: object = None) -> httpx.Response:
        response = self.http.request(method, f"/__emulator{path}", json=json)
        response.raise_for_status()
        return response

    def reset(self) -> None:
        self.admin("POST", "/reset")
        self._token = None
        self._users = None

    def history(self, user_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Per-agent presence changes (``patch``, ``bulk``, ``admin`` …), oldest first."""
        ids = list(user_ids)
        # Many ids would not fit in one request line: then read every agent's history.
        params = [("user_id", u) for u in ids] if len(ids) <= 50 else []
        response = self.http.get("/__emulator/history", params=params)
        response.raise_for_status()
        found: dict[str, list[dict[str, Any]]] = response.json()
        return {u: found.get(u, []) for u in ids}

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "/stats").json()
        return result

    def route_count(self, route: str) -> int:
        """Requests the emulator answered on ``route`` (any status)."""
        return sum(self.stats()["requests"].get(route, {}).values())

    def users(self) -> list[dict[str, Any]]:
        """Every user as the emulator sees it now (presence, routing status, queues)."""
        users: list[dict[str, Any]] = self.admin("GET", "/users").json()
        return users

    def active_users(self) -> list[dict[str, Any]]:
        """The active users, as read once after the last reset."""
        if self._users is None:
            self._users = [u for u in self.users() if u["state"] == "active"]
        return self._users

    def warm_up_agents(self) -> list[dict[str, Any]]:
        return self.active_users()[-self.WARM_UP_AGENTS :]

    def agents(
        self, count: int | None = None, *, online: bool = False, presence: str | None = None
    ) -> list[dict[str, Any]]:
        """``count`` (default: all) active agents, never the warm-up ones; ``online``: not Offline,
        so any transition of the default matrix is allowed from their current state;
        ``presence``: only agents whose system presence is that one."""
        pool = self.active_users()[: -self.WARM_UP_AGENTS]
        if online:
            pool = [u for u in pool if u["systemPresence"] != "Offline"]
        if presence is not None:
            pool = [u for u in pool if u["systemPresence"] == presence]
        assert count is None or len(pool) >= count, f"only {len(pool)} suitable agents"
        return pool[:count]

    def set_presence(self, user_id: str, presence: str) -> None:
        self.admin("PUT", f"/users/{user_id}/presence", {"presence": presence})

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
        """A platform API read with the harness's token; the decoded JSON body."""
        response = self.http.get(
            path, params=params, headers={"Authorization": f"Bearer {self.token()}"}
        )
        response.raise_for_status()
        return response.json()

    def definition_ids(self) -> dict[str, str]:
        """Definition name ("Available", "On Queue", "Coffee", …) → id, as the platform lists them."""
        listing = self.api_get("/api/v2/presencedefinitions", pageSize=100)
        return {d["name"]: d["id"] for d in listing["entities"]}

    def current_definition(self, user_id: str) -> str:
        """The agent's presence definition id, read over the platform API."""
        path = f"/api/v2/users/{user_id}/presences/purecloud"
        response = self.http.get(path, headers={"Authorization": f"Bearer {self.token()}"})
        if response.status_code == 401:  # a test expired every token
            self._token = None
            response = self.http.get(path, headers={"Authorization": f"Bearer {self.token()}"})
        response.raise_for_status()
        return str(response.json()["presenceDefinition"]["id"])


def opened(harness: P) -> Iterator[P]:
    """For a fixture to ``yield from``: resets the emulator, yields ``harness``, then stops every
    process started through it (whatever the test did)."""
    try:
        harness.reset()
        yield harness
    finally:
        harness.close()
