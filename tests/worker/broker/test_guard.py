"""The guarded transport: first in this process over a real Redis (Kombu's consumer on
:class:`worker.broker.guard.Transport`), then end to end: every broken envelope of the matrix (and seeded
random mutations of the documented one), LPUSHed around good messages onto a real Redis consumed by
a real ``celery -A worker.app worker`` (threads and prefork) against the emulator.

No worker exits; every good neighbour is applied; nothing is left queued or unacknowledged; each
refused message is recorded (an ``invalid`` audit row or a quarantine record) and counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import migrations
from emulator.launcher import EmulatorProcess
from models import AuditRecord, Outcome
from tests.support.envelopes import SHAPES, envelope, mutations
from tests.support.pipeline import Pipeline, opened
from tests.support.services import scratch_postgres_database
from worker.broker import guard as broker
from worker.broker import ledger
from worker.broker.guard import (
    QUARANTINE_KEY,
    QUARANTINE_LIMIT,
    RAW_CHARS,
    Sinks,
    Transport,
    Unreadable,
    refuse,
    task_signatures,
)
from worker.embedded_redis import _free_port
from worker.envelopes import Refusal, inspect_envelope

APPLIED = {Outcome.CONFIRMED.value, Outcome.APPLIED_UNCONFIRMED.value}
MUTATIONS = 20


# -- in this process: Kombu's consumer over the guarded transport ---------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sinks(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Sinks]:
    """This process's sinks, over the test Redis and a migrated audit database of each kind."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
        else:
            database_url = stack.enter_context(scratch_postgres_database())
        migrations.upgrade(database_url)
        made = Sinks(redis_url, database_url)
        monkeypatch.setattr(Sinks, "_current", (os.getpid(), made))
        yield made


def audit_rows(sinks: Sinks) -> list[AuditRecord]:
    engine = create_engine(sinks.recorder.store.database_url, poolclass=NullPool)  # type: ignore[attr-defined]
    with Session(engine) as session:
        rows = list(session.scalars(select(AuditRecord)))
    engine.dispose()
    return rows


def quarantine(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(r) for r in client.lrange(QUARANTINE_KEY, 0, -1)]


def refused_count(queue: str, reason: str, recorded: str) -> float:
    labels = {"queue": queue, "reason": reason, "recorded": recorded}
    return REGISTRY.get_sample_value("presence_refused_messages_total", labels) or 0.0


def consume(redis_url: str, raws: list[str], wanted: int, on_message: Any = None) -> list[Any]:
    """LPUSH ``raws`` onto ``presence`` and drain it with a Kombu consumer on our transport until
    the list is empty and ``wanted`` messages reached the callback (each acknowledged)."""
    client = redis.Redis.from_url(redis_url)
    for raw in raws:
        client.lpush("presence", raw)
    received: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        if on_message is not None:
            on_message(message)
        received.append(message.headers["id"])
        message.ack()

    queue = Queue("presence", Exchange("", type="direct"), routing_key="presence")
    with (
        Connection(redis_url, transport=Transport) as connection,
        connection.Consumer(queue, callbacks=[callback], accept=["json"]),
    ):
        deadline = time.monotonic() + 20
        while (len(received) < wanted or client.llen("presence")) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=1)
    client.close()
    return received


def test_text_that_is_not_json_loads_as_a_marker_instead_of_raising():
    broker.install()

    marker = kombu_redis.loads("not json")  # type: ignore[attr-defined]

    assert isinstance(marker, Unreadable)
    assert marker.text == "not json"
    assert marker == {}
    assert kombu_redis.loads('{"a": 1}') == {"a": 1}  # type: ignore[attr-defined]


def test_a_consumer_on_the_transport_gets_the_good_messages_around_broken_ones(
    sinks: Sinks, redis_url: str
):
    good = [envelope([{"n": n}], str(uuid.uuid4())) for n in range(2)]
    broken = envelope([{}], str(uuid.uuid4()))
    broken["content-type"] = ""
    before = refused_count("presence", "json", "quarantine")

    received = consume(
        redis_url,
        [json.dumps(good[0]), "not json", json.dumps(broken), json.dumps(good[1])],
        wanted=2,
    )

    assert received == [g["headers"]["id"] for g in good]
    (row,) = audit_rows(sinks)
    assert (row.request_id, row.outcome, row.error_code) == (
        broken["headers"]["id"], Outcome.INVALID.value, "envelope.content_type",
    )  # fmt: skip
    assert row.payload is not None
    assert json.loads(row.payload["envelope"])["headers"]["id"] == broken["headers"]["id"]
    assert [r["reason"] for r in quarantine(sinks.redis)] == ["json"]
    assert refused_count("presence", "json", "quarantine") == before + 1
    assert sinks.redis.hlen("unacked") == 0
    assert sinks.redis.llen("presence") == 0


def test_a_refused_message_leaves_no_ledger_entry_to_push_it_again(sinks: Sinks, redis_url: str):
    broken = envelope([{}], str(uuid.uuid4()))
    broken["content-type"] = ""
    text = json.dumps(broken)
    with sinks.redis.pipeline() as pipe:  # as the producer's push writes it
        tag = broken["properties"]["delivery_tag"]
        ledger.record_queued(pipe, broken["headers"]["id"], "presence", tag, text, time.time())
        pipe.execute()

    consume(redis_url, [text], wanted=0)

    assert [r.outcome for r in audit_rows(sinks)] == [Outcome.INVALID.value]
    assert ledger.pending(sinks.redis) == []  # recorded: the ledger must not push it again


def test_text_a_database_refuses_never_costs_the_audit_row(sinks: Sinks, redis_url: str):
    broken = envelope([{"user_id": "a\x00b"}], str(uuid.uuid4()))
    broken["headers"]["eta"] = "to\x00morrow \ud800"

    consume(redis_url, [json.dumps(broken)], wanted=0)

    (row,) = audit_rows(sinks)
    assert (row.outcome, row.error_code) == (Outcome.INVALID.value, "envelope.eta")
    assert "\x00" not in (row.error_message or "")
    assert quarantine(sinks.redis) == []


@pytest.mark.parametrize(
    ("queue", "args", "org"),
    [
        ("presence.acme", [{"user_id": "u", "org": "globex"}], "globex"),  # the payload says
        ("presence.acme", [{"user_id": "u"}], "acme"),  # else the queue's org
        ("presence", [{"user_id": "u", "org": "Not An Org"}], "default"),
        ("presence", [{"user_id": "u"}], "default"),
    ],
)
def test_a_refused_update_is_audited_under_its_org(
    sinks: Sinks, queue: str, args: list[Any], org: str
):
    request_id = str(uuid.uuid4())
    refusal = Refusal("eta", "eta is not a date", request_id, "presence.update")

    where = refuse(queue, envelope(args, request_id, queue=queue), refusal, sinks=sinks)

    assert where == "audit"
    (row,) = audit_rows(sinks)
    assert (row.request_id, row.org) == (request_id, org)


def test_a_message_whose_delivery_fails_is_settled_and_quarantined_not_fatal(
    sinks: Sinks, redis_url: str
):
    poison, after = (envelope([{}], str(uuid.uuid4())) for _ in range(2))

    def explode(message: Any) -> None:
        if message.headers["id"] == poison["headers"]["id"]:
            raise ValueError("a shape nobody foresaw")

    received = consume(redis_url, [json.dumps(poison), json.dumps(after)], 1, explode)

    assert received == [after["headers"]["id"]]
    (record,) = quarantine(sinks.redis)
    assert (record["reason"], record["request_id"]) == ("delivery", poison["headers"]["id"])
    assert "a shape nobody foresaw" in record["detail"]
    assert audit_rows(sinks) == []  # the task may have been handed on: no verdict of ours
    assert sinks.redis.hlen("unacked") == 0
    assert sinks.redis.zcard("unacked_index") == 0


def test_a_row_the_database_refuses_goes_to_the_quarantine_with_the_reason(
    redis_url: str, tmp_path: Path
):
    unmigrated = Sinks(redis_url, f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    refusal = Refusal("body", "the body is a JSON null", "req-1", "presence.update")

    where = refuse("presence", {"headers": {"id": "req-1"}}, refusal, sinks=unmigrated)

    assert where == "quarantine"
    (record,) = quarantine(unmigrated.redis)
    assert record["request_id"] == "req-1"
    assert record["note"].startswith("audit write failed: OperationalError")


def test_when_no_store_takes_it_the_log_line_is_the_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    nowhere = Sinks(f"redis://127.0.0.1:{_free_port()}/0", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    before = refused_count("wfm", "json", "log")

    where = refuse("wfm", "x" * 10_000, Refusal("json", "not JSON"), sinks=nowhere)

    assert where == "log"
    assert refused_count("wfm", "json", "log") == before + 1
    (line,) = [r.getMessage() for r in caplog.records if "refused a message" in r.getMessage()]
    assert "quarantine failed" in line
    assert len(line) < 2_000  # the raw text is cut in the log too


def test_a_flood_of_refusals_keeps_the_newest_records_only(sinks: Sinks):
    for n in range(QUARANTINE_LIMIT + 5):
        refuse("presence", "bad", Refusal("json", f"not JSON {n}"), sinks=sinks)

    records = quarantine(sinks.redis)
    assert len(records) == QUARANTINE_LIMIT
    assert records[0]["detail"] == f"not JSON {QUARANTINE_LIMIT + 4}"


def test_a_huge_envelope_is_stored_cut(sinks: Sinks):
    where = refuse("presence", "y" * 5_000_000, Refusal("json", "not JSON"), sinks=sinks)

    (record,) = quarantine(sinks.redis)
    assert where == "quarantine"
    assert (len(record["raw"]), record["raw_chars"]) == (RAW_CHARS, 5_000_000)


# -- end to end: real workers ------------------------------------------------------------------
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
