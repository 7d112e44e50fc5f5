"""``presence flower``: the options it refuses, and a real Flower watching a real worker retry.

The end-to-end test starts the emulator, a private Redis, a migrated SQLite audit database, one
``celery -A worker.app worker -E`` and ``presence flower`` exactly as documented (a subprocess,
basic auth from ``FLOWER_BASIC_AUTH``), makes the platform answer one PATCH with 503 and follows
the request through Flower's HTTP API until it succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

import migrations
from cli.flower import AUTH_ENV, FlowerConfigError, flower_invocation
from cli.main import app
from emulator.launcher import EmulatorProcess
from models import AuditRecord
from producer import PresenceProducer
from tests.support.processes import celery_worker, private_redis, stop, tail, worker_env
from worker.embedded_redis import _free_port

USER, PASSWORD = "ops", "flower-test-password"


# -- options ------------------------------------------------------------------------------------
def test_basic_auth_is_required_unless_no_auth_is_explicit(monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)

    result = CliRunner().invoke(app, ["flower"])

    assert result.exit_code == 2
    assert f"set {AUTH_ENV}=user:password" in result.stderr


@pytest.mark.parametrize("value", ["nopassword", ":secret", "user:", "a:b,broken"])
def test_malformed_credentials_are_refused_without_echoing_them(monkeypatch, value):
    monkeypatch.setenv(AUTH_ENV, value)

    result = CliRunner().invoke(app, ["flower"])

    assert result.exit_code == 2
    assert "is not user:password" in result.stderr
    assert "secret" not in result.stderr


def test_no_auth_only_on_loopback():
    with pytest.raises(FlowerConfigError, match="loopback"):
        flower_invocation(
            address="0.0.0.0", port=5555, no_auth=True, allow_control=False, environ={}
        )

    _cmd, env, banner = flower_invocation(
        address="127.0.0.1", port=5555, no_auth=True, allow_control=False, environ={AUTH_ENV: "a:b"}
    )
    assert AUTH_ENV not in env
    assert "no authentication" in banner


def test_the_password_travels_in_the_environment_never_on_the_command_line():
    cmd, env, banner = flower_invocation(
        address="127.0.0.1",
        port=5600,
        no_auth=False,
        allow_control=False,
        environ={AUTH_ENV: f"{USER}:{PASSWORD}"},
    )

    assert cmd[1:] == [
        "-m", "celery", "-A", "worker.app", "flower",
        "--address=127.0.0.1", "--port=5600", "--read_only=True",
    ]  # fmt: skip
    assert env[AUTH_ENV] == f"{USER}:{PASSWORD}"
    assert PASSWORD not in " ".join(cmd) + banner
    assert "read-only" in banner


# -- a real Flower ------------------------------------------------------------------------------
@dataclass
class Ops:
    emulator: EmulatorProcess
    redis_url: str
    database_url: str
    flower_url: str
    worker: str
    logs: list[Path]

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{tail(p)}" for p in self.logs)


def presence_command() -> list[str]:
    """The installed ``presence`` script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("presence")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def wait_for_flower(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Flower did not start:\n{tail(log)}")


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    workdir = tmp_path_factory.mktemp("flower")
    database_url = f"sqlite:///{workdir / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    emulator_args = ["--users", "20", "--queues", "2", "--heartbeat", "0.5", "--rate-limit", "0"]
    with (
        EmulatorProcess(args=emulator_args) as emulator,
        private_redis() as redis_url,
        celery_worker(
            worker_env(emulator, redis_url, database_url), workdir / "worker.log"
        ) as worker,
    ):
        port = _free_port()
        flower_log = workdir / "flower.log"
        env = {**os.environ, "REDIS_URL": redis_url, AUTH_ENV: f"{USER}:{PASSWORD}"}
        with flower_log.open("wb") as out:
            flower = subprocess.Popen(
                [*presence_command(), "flower", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_flower(url, flower, flower_log)
            yield Ops(
                emulator, redis_url, database_url, url, worker, [workdir / "worker.log", flower_log]
            )
        finally:
            stop(flower)


def api(ops: Ops, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{ops.flower_url}{path}", params=params, auth=(USER, PASSWORD), timeout=10
    )
    response.raise_for_status()
    return response.json()


def wait_until(what: str, ops: Ops, check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"{what} not seen within {timeout_s:.0f} s\n{ops.logs_text()}")


def test_flower_shows_the_worker_and_a_retried_task_that_succeeds(ops: Ops):
    # The worker is listed, both through its events (alive) and through inspection.
    wait_until(
        "the worker alive in Flower",
        ops,
        lambda: api(ops, "/api/workers", status=1).get(ops.worker),
    )
    workers = wait_until("the worker inspected", ops, lambda: api(ops, "/api/workers", refresh=1))
    assert ops.worker in workers
    assert "presence.update" in workers[ops.worker]["registered"]

    admin = f"{ops.emulator.base_url}/__emulator"
    users = httpx.get(f"{admin}/users", timeout=10).json()
    agent = next(u["id"] for u in users if u["state"] == "active")
    fault = {"endpoint": "presence.patch", "status": 503, "count": 1}
    httpx.post(f"{admin}/faults/errors", json=fault, timeout=10).raise_for_status()

    producer = PresenceProducer(ops.redis_url)
    request_id = producer.set_presence(agent, "Available", source="flower-test")
    producer.close()

    states: list[str] = []

    def finished() -> dict[str, Any] | None:
        task = api(ops, "/api/tasks").get(request_id)
        if task is None:
            return None
        if not states or states[-1] != task["state"]:
            states.append(task["state"])
        return task if task["state"] in {"SUCCESS", "FAILURE"} else None

    task = wait_until("the task's end in Flower", ops, finished, timeout_s=90)

    assert task["state"] == "SUCCESS", (states, task)
    assert task["retries"] == 1, "the redelivered message counts the retry"
    assert task["name"] == "presence.update"
    assert agent in task["args"], "the payload is readable in Flower"
    assert task["worker"] == ops.worker
    # The state of record is the audit table: one terminal row, after two attempts.
    engine = create_engine(ops.database_url, poolclass=NullPool)
    with Session(engine) as session:
        row = session.scalars(select(AuditRecord).where(AuditRecord.request_id == request_id)).one()
    engine.dispose()
    assert row.outcome in {"confirmed", "applied_unconfirmed"}, (row.outcome, row.error_message)
    assert row.attempts == 2
    assert task["result"] == repr(row.outcome), "Flower's result is the request's outcome"
    # Nothing Flower shows carries the OAuth client secret.
    everything = json.dumps(api(ops, "/api/tasks")) + json.dumps(api(ops, "/api/workers"))
    assert ops.emulator.client_secret not in everything


@pytest.mark.parametrize("auth", [None, (USER, "wrong-password")])
def test_flower_refuses_requests_without_valid_credentials(ops: Ops, auth):
    for path in ("/api/workers", "/api/tasks", "/"):
        response = httpx.get(f"{ops.flower_url}{path}", auth=auth, timeout=10)
        assert response.status_code == 401, path


def test_flower_is_read_only_by_default(ops: Ops):
    response = httpx.post(
        f"{ops.flower_url}/api/task/revoke/{uuid.uuid4()}", auth=(USER, PASSWORD), timeout=10
    )

    assert response.status_code == 403
    assert "Read only" in response.text


def test_only_the_documented_paths_answer_without_credentials(ops: Ops):
    """/healthcheck and /metrics are Flower's own unauthenticated paths (docs/operators.md):
    they carry task names and counts, never a payload or the broker password."""
    health = httpx.get(f"{ops.flower_url}/healthcheck", timeout=10)
    metrics = httpx.get(f"{ops.flower_url}/metrics", timeout=10)

    assert (health.status_code, health.text) == (200, "OK")
    assert metrics.status_code == 200
    assert "flower_" in metrics.text
    assert PASSWORD not in metrics.text
    for path in ("/api/workers", "/api/tasks", "/tasks", "/workers", "/broker"):
        assert httpx.get(f"{ops.flower_url}{path}", timeout=10).status_code == 401, path
