"""docs/producers.md's raw Celery messages, pushed onto Redis without Celery, against one real
``celery -A worker.app worker`` (emulator, private Redis, migrated SQLite audit database)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import migrations
from emulator.launcher import EmulatorProcess
from models import AuditRecord
from tests.support.processes import celery_worker, private_redis, tail, worker_env

DOC = Path(__file__).resolve().parents[2] / "docs" / "producers.md"
DOC_AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"


@dataclass
class Stack:
    emulator: EmulatorProcess
    redis_url: str
    database_url: str
    log: Path

    def agents(self) -> list[str]:
        users = httpx.get(f"{self.emulator.base_url}/__emulator/users", timeout=10).json()
        return [u["id"] for u in users if u["state"] == "active"]

    def push(self, message: dict[str, Any] | str) -> None:
        client = redis.Redis.from_url(self.redis_url)
        client.lpush("presence", message if isinstance(message, str) else json.dumps(message))
        client.close()

    def row(self, request_id: str, timeout_s: float = 60) -> AuditRecord:
        engine = create_engine(self.database_url, poolclass=NullPool)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                with Session(engine) as session:
                    found = session.scalars(
                        select(AuditRecord).where(AuditRecord.request_id == request_id)
                    ).first()
                if found is not None:
                    return found
                time.sleep(0.2)
        finally:
            engine.dispose()
        pytest.fail(f"no audit row for {request_id} within {timeout_s:.0f} s\n{tail(self.log)}")

    def wait_drained(self, timeout_s: float = 30) -> None:
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout_s
        try:
            while client.llen("presence") or client.hlen("unacked"):
                assert time.monotonic() < deadline, "messages left on the broker"
                time.sleep(0.1)
        finally:
            client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("raw-protocol")
    database_url = f"sqlite:///{workdir / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    log = workdir / "worker.log"
    emulator_args = ["--users", "20", "--queues", "2", "--heartbeat", "0.5", "--rate-limit", "0"]
    with (
        EmulatorProcess(args=emulator_args) as emulator,
        private_redis() as redis_url,
        celery_worker(worker_env(emulator, redis_url, database_url), log),
    ):
        yield Stack(emulator, redis_url, database_url, log)


def message(payload: object, request_id: str, *, args: list[object] | None = None) -> dict:
    """The envelope docs/producers.md documents, built field by field."""
    body = [args if args is not None else [payload], {}, {"callbacks": None, "errbacks": None,
            "chain": None, "chord": None}]  # fmt: skip
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {
            "lang": "py",
            "task": "presence.update",
            "id": request_id,
            "root_id": request_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
        },
        "properties": {
            "correlation_id": request_id,
            "reply_to": "",
            "delivery_mode": 2,
            "priority": 0,
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "presence"},
        },
    }


def payload(agent: str, state: str = "Available", **extra: object) -> dict[str, object]:
    return {
        "version": 1,
        "user_id": agent,
        "state": state,
        "source": "raw",
        "requested_at": datetime.now(UTC).isoformat(),
        **extra,
    }


def doc_example() -> str:
    text = DOC.read_text()
    block = text.split("<!-- raw-example:start -->")[1].split("<!-- raw-example:end -->")[0]
    return block.strip().removeprefix("```bash").removesuffix("```")


def test_the_documented_shell_example_sets_the_presence(stack: Stack):
    bindir = Path(sys.executable).parent
    path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("redis-cli", path=path) is None:
        pytest.skip("no redis-cli")
    agent = stack.agents()[0]
    script = doc_example().replace(DOC_AGENT, agent)

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**os.environ, "PATH": path, "REDIS_URL": stack.redis_url},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    request_id = result.stdout.strip()
    row = stack.row(request_id)
    assert row.outcome in {"confirmed", "applied_unconfirmed"}, (row.outcome, row.error_message)
    assert (row.user_id, row.to_state, row.source) == (agent, "Coffee", "shell")


def test_a_raw_message_is_retried_like_any_other(stack: Stack):
    admin = f"{stack.emulator.base_url}/__emulator"
    fault = {"endpoint": "presence.patch", "status": 503, "count": 1}
    httpx.post(f"{admin}/faults/errors", json=fault, timeout=10).raise_for_status()
    request_id = str(uuid.uuid4())

    stack.push(message(payload(stack.agents()[1], "Busy"), request_id))

    row = stack.row(request_id)
    assert row.outcome in {"confirmed", "applied_unconfirmed"}, (row.outcome, row.error_message)
    assert row.attempts == 2


def test_mistakes_end_as_documented(stack: Stack):
    agent = stack.agents()[2]
    unknown_field, extra_arg, wrong_task = (str(uuid.uuid4()) for _ in range(3))
    stack.push(message(payload(agent, colour="red"), unknown_field))
    stack.push(message(None, extra_arg, args=[payload(agent), "extra"]))
    broken = message(payload(agent), wrong_task)
    broken["headers"]["task"] = "presence.nonexistent"
    stack.push(broken)
    stack.push("not json at all")

    assert stack.row(unknown_field).outcome == "invalid"
    assert "colour" in (stack.row(unknown_field).error_message or "")
    assert stack.row(extra_arg).outcome == "invalid"
    stack.wait_drained()  # the broken ones are removed, not left behind …
    client = redis.Redis.from_url(stack.redis_url)
    quarantined = [json.loads(r) for r in client.lrange("presence:quarantine", 0, -1)]
    client.close()  # … recorded in the quarantine (no usable task: no request to audit) …
    assert sorted(r["reason"] for r in quarantined) == ["json", "task"]
    engine = create_engine(stack.database_url, poolclass=NullPool)
    with Session(engine) as session:  # … and leave no row
        assert (
            session.scalars(select(AuditRecord).where(AuditRecord.request_id == wrong_task)).first()
            is None
        )
    engine.dispose()
    assert "presence.nonexistent" in tail(stack.log, 20_000)
