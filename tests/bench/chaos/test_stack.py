"""What the harness reads back, against a real emulator and a real Redis: the platform's
writes carry the correlation id the worker records, the WFM sink's accepted deliveries, the
broker's leftovers."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import redis

from bench.chaos.stack import ChaosStack, Managed
from emulator.wfm_sink import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from producer import PresenceProducer, PresenceUpdate
from worker.broker import ledger


def stack_on(emulator=None, redis_url: str | None = None) -> ChaosStack:
    stack = ChaosStack("test", Path("/nonexistent"), None, 0, 0, emulator=emulator)  # type: ignore[arg-type]
    if redis_url:
        stack.redis = SimpleNamespace(url=redis_url)  # type: ignore[assignment]
    return stack


def test_a_patch_is_a_write_with_the_correlation_id_the_caller_saw(api):
    user = api.active_users()[0]
    definitions = api.http.get("/api/v2/presence/definitions").json()["entities"]
    busy = next(d for d in definitions if d["systemPresence"] == "Busy" and d["type"] == "System")
    response = api.http.patch(
        f"/api/v2/users/{user['id']}/presences/purecloud",
        json={"presenceDefinition": {"id": busy["id"]}},
    )
    response.raise_for_status()
    writes, finals = stack_on(api.emulator).writes_and_finals()
    mine = [w for w in writes if w.user_id == user["id"]]
    assert [(w.definition_id, w.correlation_id, w.path) for w in mine] == [
        (busy["id"], response.headers["inin-correlation-id"], "patch")
    ]
    assert finals[user["id"]].definition_id == busy["id"]
    assert finals[user["id"]].label == "Busy"


def test_only_deliveries_the_sink_accepted_count(api):
    base = api.emulator.base_url
    body = b'{"event_id": "e1", "request_id": "r1"}'
    stamp = str(int(time.time()))
    signed = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign("wfm-sink-secret", stamp, body)}
    headers = {"Content-Type": "application/json"}
    httpx.post(f"{base}/__wfm/events", content=body, headers=headers | signed).raise_for_status()
    forged = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: "sha256=00"}
    httpx.post(f"{base}/__wfm/events", content=b'{"event_id": "e2", "request_id": "r2"}',
               headers=headers | forged)  # fmt: skip
    api.admin("POST", "/wfm/fail", {"status": 503, "count": 1})
    httpx.post(f"{base}/__wfm/events", content=body, headers=headers | signed)
    events = stack_on(api.emulator).wfm_events()
    assert [(e.event_id, e.request_id) for e in events] == [("e1", "r1")]


def test_leftovers_count_unacked_queued_and_delayed_messages(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.hset("unacked", mapping={"tag1": "m", "tag2": "m"})
    client.zadd("unacked_index", {"tag1": 1, "tag2": 2})  # the index of the same two
    client.zadd(ledger.QUEUED_KEY, {"tag3|process": ledger.hold_score(3)})  # a ledger hold
    client.rpush("presence", "a", "b", "c")
    client.rpush("presence\x06\x163", "d")  # a priority variant of the queue
    client.rpush("wfm", "e")
    client.zadd("presence:delayed", {"f": 1})
    client.rpush("celeryev.something", "not a queue of ours")
    client.close()
    left = stack_on(redis_url=redis_url).leftovers()
    assert (left.unacked, left.queued, left.delayed, left.total) == (3, 5, 1, 9)


def test_held_names_the_requests_of_queued_and_unacknowledged_messages(redis_url):
    producer = PresenceProducer(redis_url)
    update = PresenceUpdate(user_id=str(uuid.uuid4()), state="Busy", requested_at=datetime.now(UTC))
    producer.send(update, request_id="single-1")
    wave_ids = producer.send_wave([update, update])
    producer.close()
    client = redis.Redis.from_url(redis_url)
    message = client.lpop("presence")  # as a worker takes it: into the unacked hash
    client.hset("unacked", "tag", json.dumps([json.loads(message), "", "presence"]))
    client.close()
    held = stack_on(redis_url=redis_url).held()
    assert {"single-1", *wave_ids} <= held
    assert len(held) == 4  # and the wave message's own task id


def exiting(tmp_path: Path, output: str, code: int) -> Managed:
    script = f"print({output!r}, flush=True); raise SystemExit({code})"
    return Managed("threads", [sys.executable, "-c", script], dict(os.environ), tmp_path / "w.log")


def test_a_process_that_exits_unbidden_died_and_is_started_again(tmp_path):
    process = exiting(tmp_path, "worker: Warm shutdown", 3)
    process.start()
    assert process.process is not None
    process.process.wait()
    process.reap()
    assert process.deaths == ["threads exited with 3"]
    assert process.refusals == []
    assert process.process.pid  # started again
    process.process.wait()


def test_a_worker_refusing_to_start_while_a_dependency_is_down_did_not_die(tmp_path):
    process = exiting(tmp_path, "preflight: not starting, 2 check(s) failed", 1)
    process.start()
    assert process.process is not None
    process.process.wait()
    process.reap()
    assert (process.deaths, process.refusals) == ([], ["threads refused to start (preflight)"])
    process.process.wait()


def test_a_process_stopped_on_purpose_is_left_to_the_fault(tmp_path):
    process = exiting(tmp_path, "", 0)
    process.start()
    assert process.process is not None
    process.stopping = True
    first = process.process
    first.wait()
    process.reap()
    assert process.process is first
    assert process.deaths == []


def test_held_names_a_request_popped_and_never_held_and_a_waiting_retry(redis_url):
    producer = PresenceProducer(redis_url)
    update = PresenceUpdate(user_id=str(uuid.uuid4()), state="Busy", requested_at=datetime.now(UTC))
    producer.send(update, request_id="popped-1")
    producer.close()
    client = redis.Redis.from_url(redis_url)
    client.lpop("presence")  # its consumer died before holding it: only the ledger has it
    ledger.schedule(
        client, ledger.Scheduled("retry-1", "presence.update", [{}], {}, "presence"), 9e9
    )
    client.close()

    held = stack_on(redis_url=redis_url).held()

    assert held == {"popped-1", "retry-1"}
