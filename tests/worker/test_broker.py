"""The guarded transport, end to end: every broken envelope of the matrix (and seeded random
mutations of the documented one), LPUSHed around good messages onto a real Redis consumed by a
real ``celery -A worker.app worker`` (threads and prefork) against the emulator.

No worker exits; every good neighbour is applied; nothing is left queued or unacknowledged; each
refused message is recorded (an ``invalid`` audit row or a quarantine record) and counted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emulator.launcher import EmulatorProcess
from models import Outcome
from tests.support.envelopes import SHAPES, envelope, mutations
from tests.support.pipeline import Pipeline, opened
from worker.broker import QUARANTINE_KEY, QUARANTINE_LIMIT, RAW_CHARS, task_signatures
from worker.embedded_redis import _free_port
from worker.envelopes import inspect_envelope

APPLIED = {Outcome.CONFIRMED.value, Outcome.APPLIED_UNCONFIRMED.value}
MUTATIONS = 20


@pytest.fixture
def pipeline(
    pipeline_emulator: EmulatorProcess,
    pipeline_redis_url: str,
    audit_database: str,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    yield from opened(Pipeline(pipeline_emulator, pipeline_redis_url, audit_database, tmp_path))


class Producer:
    """Pushes raw texts in order (the worker pops them first in, first out) and remembers
    what each one should become."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        agents = pipeline.agents(online=True)
        self.agents = [(a["id"], a["systemPresence"]) for a in agents]
        self.good: list[str] = []
        self.audited: dict[str, str] = {}  # request id → refusal reason
        self.quarantined: Counter[str] = Counter()  # refusal reason → count
        self.refused = 0

    def good_one(self) -> dict[str, Any]:
        agent, presence = self.agents[len(self.good) % len(self.agents)]
        state = "Available" if presence == "Busy" else "Busy"
        request_id = str(uuid.uuid4())
        self.good.append(request_id)
        payload = self.pipeline.update(agent, state, source="guard")
        return envelope([payload], request_id)

    def push(self, raw: str, queue: str = "presence") -> None:
        self.pipeline.redis.lpush(queue, raw)

    def push_good(self) -> None:
        self.push(json.dumps(self.good_one()))

    def bad_base(self) -> dict[str, Any]:
        """A well-formed envelope for an agent nobody else uses, to be broken."""
        payload = self.pipeline.update(str(uuid.uuid4()), "Busy", source="guard")
        return envelope([payload], str(uuid.uuid4()))


def _missing(pipeline: Pipeline, producer: Producer, expected: set[str]) -> str:
    missing = expected - {r.request_id for r in pipeline.rows(expected)}
    return (
        "missing: " + ", ".join(f"{i} ({producer.audited.get(i, 'good')})" for i in missing) + "\n"
    )


def scrape_refused(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "presence_refused_messages"
        for s in family.samples
        if s.name.endswith("_total")
    )


def wait_until(condition: Any, timeout_s: float, what: str, logs: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {timeout_s:.0f} s\n{logs()}")
        time.sleep(0.2)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_no_message_stops_the_worker_or_the_messages_behind_it(pipeline: Pipeline, pool: str):
    producer = Producer(pipeline)
    signatures = task_signatures()

    def expect(refusal_reason: str, recorded: str, request_id: str | None) -> None:
        if recorded == "audit" and request_id is not None:
            producer.audited.setdefault(request_id, refusal_reason)
        else:
            producer.quarantined[refusal_reason] += 1
        producer.refused += 1

    # Left unacknowledged by a worker that died holding them: restored, then refused.
    for shape in (s for s in SHAPES if s.name in {"body null", "no headers.id"}):
        base = producer.bad_base()
        expect(shape.reason, shape.recorded, base["headers"]["id"])
        tag = str(uuid.uuid4())
        pipeline.redis.hset(
            "unacked", tag, json.dumps([json.loads(shape.raw(base)), "", "presence"])
        )
        pipeline.redis.zadd("unacked_index", {tag: time.time() - 3600})
    for shape in SHAPES:
        base = producer.bad_base()
        expect(shape.reason, shape.recorded, base["headers"]["id"])
        producer.push_good()
        producer.push(shape.raw(base))
    for raw in mutations(producer.bad_base(), MUTATIONS, seed=7):
        message = json.loads(raw)
        refusal = inspect_envelope(message, signatures)
        if refusal is None:
            continue  # still a good message: it runs (and leaves a row or nothing, as any)
        auditable = refusal.task == "presence.update"
        expect(refusal.reason, "audit" if auditable else "quarantine", refusal.request_id)
        producer.push_good()
        producer.push(raw)
    # The other queues are guarded too.
    other = [
        ("wfm", "not json"),
        ("shifts", json.dumps({**producer.bad_base(), "headers": {"task": "shifts.dispatch"}})),
        ("wfm", json.dumps(envelope(["a", "b"], str(uuid.uuid4()), task="wfm.sync", queue="wfm"))),
    ]
    for queue, raw in other:
        producer.push(raw, queue)
    producer.quarantined.update(["json", "id", "arguments"])
    producer.refused += len(other)
    producer.push_good()

    port = _free_port()
    fleet = pipeline.start(1, pool=pool, concurrency=2, warm_up=False, METRICS_PORT=port)

    expected = {*producer.good, *producer.audited}
    wait_until(
        lambda: {r.request_id for r in pipeline.rows(expected)} == expected,
        120,
        "audit rows missing",
        lambda: _missing(pipeline, producer, expected) + fleet.logs(),
    )
    rows = {r.request_id: r for r in pipeline.rows(expected)}
    assert {rows[i].outcome for i in producer.good} <= APPLIED, fleet.logs()
    for request_id, reason in producer.audited.items():
        assert rows[request_id].outcome == Outcome.INVALID.value
        assert rows[request_id].error_code == f"envelope.{reason}"
        assert rows[request_id].error_message.startswith("malformed message: ")
    records = [json.loads(r) for r in pipeline.redis.lrange(QUARANTINE_KEY, 0, -1)]
    assert Counter(r["reason"] for r in records) == producer.quarantined
    assert all(len(r["raw"]) <= RAW_CHARS and r["queue"] for r in records)
    assert len(records) <= QUARANTINE_LIMIT

    pipeline.wait_idle(fleet=fleet)
    for queue in ("presence", "wfm", "shifts"):
        assert pipeline.redis.llen(queue) == 0, queue
    assert pipeline.redis.hlen("unacked") == 0
    assert pipeline.redis.zcard("unacked_index") == 0
    assert all(p.poll() is None for p in fleet.processes), fleet.logs()
    assert "Unrecoverable error" not in fleet.logs()
    wait_until(
        lambda: scrape_refused(port) == producer.refused,
        30,
        f"presence_refused_messages_total != {producer.refused} ({scrape_refused(port)})",
        fleet.logs,
    )


def test_a_refused_update_is_one_audit_row_even_when_sent_again(pipeline: Pipeline):
    producer = Producer(pipeline)
    broken = producer.bad_base()
    broken["content-type"] = "application/x-yaml"
    for _ in range(3):
        producer.push(json.dumps(broken))
    producer.push_good()

    fleet = pipeline.start(1, concurrency=2, warm_up=False)

    pipeline.wait_rows(2, request_ids=[broken["headers"]["id"], *producer.good])
    pipeline.wait_idle(fleet=fleet)
    (refused,) = pipeline.rows([broken["headers"]["id"]])
    assert refused.outcome == Outcome.INVALID.value
    assert refused.error_code == "envelope.content_type"
    assert {r.outcome for r in pipeline.rows(producer.good)} <= APPLIED
