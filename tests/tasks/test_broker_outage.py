"""Redis going away while workers hold messages and retries are due, with real processes: a
Redis persisting like production (AOF, ``everysec``), killed (SIGKILL or SIGTERM) and started
again on the same port; ``celery -A worker.app worker`` of both pools; the emulator answering
every PATCH slowly and with a 503 while Redis is down, so each held request retries exactly then.

Before: the retry's publish failed, Celery turned it into ``Reject(requeue=False)`` and deleted
the message (no row); and the worker could exit with ``Unrecoverable error: AttributeError(...
'hostname')`` while closing the lost connection.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.launcher import EmulatorProcess
from tests.support.pipeline import Pipeline, opened
from tests.support.processes import DurableRedis, durable_redis

pytestmark = pytest.mark.timeout(300)  # a worker warm-up, an outage and every retry
REQUESTS = 8
KILL_AFTER_S = 1.5  # > 1 s: AOF everysec has written the queued messages by then
PATCH_LATENCY_MS = 3000  # the PATCHes in flight answer (503) while Redis is down
DOWN_S = 4.0  # well inside the time a retry waits for the broker
BROKER_WAIT_S = 12  # the retry's write waits this long for Redis (production: 30 s)
LOCK_TTL_S = 10  # above a PATCH's latency, so a live lock never expires (production: 60 s)


@pytest.fixture
def redis_server() -> Iterator[DurableRedis]:
    with durable_redis() as server:
        yield server


@pytest.fixture
def outage(
    pipeline_emulator: EmulatorProcess,
    redis_server: DurableRedis,
    audit_database: str,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    yield from opened(Pipeline(pipeline_emulator, redis_server.url, audit_database, tmp_path))


@pytest.mark.parametrize(
    ("pool", "sig"),
    [
        ("threads", signal.SIGKILL),
        ("prefork", signal.SIGKILL),
        ("threads", signal.SIGTERM),
    ],
)
def test_redis_restart_while_retries_are_due_loses_nothing(
    outage: Pipeline, redis_server: DurableRedis, pool: str, sig: signal.Signals
) -> None:
    # Waits shortened, not removed: an agent lock that Redis kept while it was down expires
    # after AGENT_LOCK_TTL_S (60 s by default) and a retry is written again for BROKER_WAIT_S.
    fleet = outage.start(
        1,
        pool=pool,
        concurrency=4,
        MAX_RETRIES=10,
        AGENT_LOCK_TTL_S=LOCK_TTL_S,
        BROKER_WAIT_S=BROKER_WAIT_S,
    )
    agents = outage.agents(REQUESTS, online=True)
    outage.admin(
        "POST", "/faults/latency", {"endpoint": "presence.patch", "latency_ms": PATCH_LATENCY_MS}
    )
    outage.admin("POST", "/faults/errors", {"endpoint": "presence.patch", "status": 503})
    ids = [outage.send(outage.update(agent["id"], "Available")) for agent in agents]

    time.sleep(KILL_AFTER_S)
    redis_server.kill(sig)
    time.sleep(DOWN_S)
    redis_server.start()
    outage.admin("DELETE", "/faults")

    rows = outage.wait_rows(REQUESTS, request_ids=ids, timeout_s=120)
    outage.wait_idle(timeout_s=60)
    rows = outage.rows(ids)
    logs = outage.full_logs()
    assert Counter(r.request_id for r in rows) == dict.fromkeys(ids, 1), [
        (r.request_id, r.outcome) for r in rows
    ]
    assert [p.poll() for p in fleet.processes] == [None] * len(fleet.processes), logs
    assert "Unrecoverable error" not in logs
    assert "cannot schedule its retry" in logs  # the outage did hit a retry
