"""WFM synchronisation end to end: the outbox row committed with the audit row, ``wfm.sync``
delivering it to the emulator's sink (signed, retried on 5xx, not on other 4xx), the sweeper
recovering sends lost after the commit, and the ``presence wfm`` commands.

Receivers de-duplicate by ``event_id`` (the contract in ``worker/wfm.py``): a delivery may
legitimately arrive twice when a worker dies after the sink accepted it but before the
``delivered`` commit. None of these scenarios kills a sender, so every event must be accepted
exactly once (``duplicates == 0``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app as cli
from emulator.wfm_sink import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from models import AuditRecord, WfmDelivery
from tests.capacity.conftest import STATE_CHANGING, WFM_SECRET, Harness
from worker import wfm
from worker.settings import get_settings

pytestmark = pytest.mark.timeout(420)


def off_queue_agents(h: Harness, count: int) -> list[str]:
    """Available agents: Available → Busy changes state without consulting the capacity guard."""
    agents = [u["id"] for u in h.agents() if u["systemPresence"] == "Available"]
    assert len(agents) >= count
    return agents[:count]


def canonical(payload: dict[str, Any]) -> bytes:
    """The bytes the worker signs and sends for an event."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def header(delivery: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in delivery["headers"].items() if k.lower() == name.lower()), None)


def check_outbox(h: Harness) -> tuple[list[AuditRecord], list[WfmDelivery]]:
    """Every state-changing audit row has exactly one delivered outbox row, and no other row has
    one; the sink accepted each event exactly once, with a valid signature and the outbox body."""
    rows = h.all_rows()
    changing = [r for r in rows if r.outcome in STATE_CHANGING]
    deliveries = h.deliveries()
    per_audit = Counter(d.audit_id for d in deliveries)
    assert all(per_audit[r.id] == 1 for r in changing), per_audit
    assert all(per_audit[r.id] == 0 for r in rows if r.outcome not in STATE_CHANGING)
    assert len(deliveries) == len(changing)
    assert {d.state for d in deliveries} == {"delivered"}
    assert all(d.delivered_at is not None for d in deliveries)

    sink = h.sink()
    summary = sink["summary"]
    assert summary["uniqueEvents"] == len(changing), summary
    assert summary["accepted"] == len(changing), summary
    assert summary["duplicates"] == 0, summary
    assert summary["badSignatures"] == 0, summary
    accepted = [d for d in sink["deliveries"] if d["status"] < 300]
    assert all(d["signatureValid"] for d in accepted)
    assert sorted(d["eventId"] for d in accepted) == sorted(d.event_id for d in deliveries)
    audit = {r.id: r for r in rows}
    outbox = {d.event_id: d for d in deliveries}
    for received in accepted:
        delivery = outbox[received["eventId"]]
        record = audit[delivery.audit_id]
        body = received["body"]
        assert body == delivery.payload
        assert header(received, "X-Presence-Event-Id") == delivery.event_id
        assert (body["request_id"], body["agent_id"], body["outcome"]) == (
            record.request_id,
            record.user_id,
            record.outcome,
        )
        assert body["to"] == {"state": record.to_state, "definition_id": record.to_definition_id}
        assert body["from"]["definition_id"] == record.from_definition_id
    return changing, deliveries


def test_sink_outage_then_recovery_delivers_every_change_once(harness: Harness) -> None:
    """The sink answers 503 to the next 5 deliveries, then recovers: every change is delivered
    once, each attempt is recorded with its status and latency."""
    harness.start(2, concurrency=4, **harness.wfm_env())
    harness.wait_deliveries(states={"delivered"})  # the warm-up's changes
    settled = harness.sink()["summary"]["received"]
    harness.admin("POST", "/wfm/fail", {"status": 503, "count": 5})

    agents = off_queue_agents(harness, 7)
    ids = [harness.send(harness.update(u, "Busy")) for u in agents[:6]]
    ids.append(harness.send(harness.update(agents[6], "Busy", expected_state="Meal")))
    ids.append(harness.send(harness.update(agents[6], "No Such Presence")))
    rows = harness.wait_rows(len(ids), request_ids=ids)
    assert Counter(r.outcome for r in rows) == {
        "confirmed": 6,
        "rejected_transition": 1,
        "invalid": 1,
    }, [(r.outcome, r.error_message) for r in rows]
    harness.wait_deliveries(states={"delivered"})

    changing, deliveries = check_outbox(harness)
    sink = harness.sink()
    assert sink["summary"]["received"] == settled + 6 + 5
    refused = [d for d in sink["deliveries"] if d["status"] == 503]
    assert len(refused) == 5
    assert all(d["signatureValid"] for d in refused)  # retries are signed afresh too
    ours = {d.event_id for d in deliveries if d.audit_id in {r.id for r in rows}}
    assert {d["eventId"] for d in refused} <= ours

    attempts = harness.attempts()
    assert len(attempts) == sink["summary"]["received"]  # one wfm_attempt per HTTP exchange
    assert Counter((a.status_code, a.result) for a in attempts) == {
        (503, "retry"): 5,
        (200, "delivered"): len(changing),
    }
    assert all(a.latency_ms is not None and a.latency_ms > 0 for a in attempts)
    assert all(a.error and a.error.startswith("HTTP 503") for a in attempts if a.status_code == 503)
    per_delivery = Counter(a.delivery_id for a in attempts)
    for delivery in deliveries:
        assert delivery.attempts == per_delivery[delivery.id]
        assert delivery.last_status == 200
    assert sum(d.attempts - 1 for d in deliveries) == 5


def test_sends_lost_after_commit_are_recovered_by_the_sweeper(harness: Harness) -> None:
    """A crash between the audit commit and the send, simulated honestly: presence workers that
    do not consume ``wfm``, the enqueued ``wfm.sync`` messages deleted from Redis, then a WFM
    worker and ``celery beat`` (sweep every second) — every event is still delivered, once."""
    harness.start(2, queues="presence", concurrency=4, **harness.wfm_env())
    ids = [harness.send(harness.update(u, "Busy")) for u in off_queue_agents(harness, 6)]
    rows = harness.wait_rows(len(ids), request_ids=ids)
    assert {r.outcome for r in rows} == {"confirmed"}
    committed = [r for r in harness.all_rows() if r.outcome in STATE_CHANGING]
    deadline = time.monotonic() + 30
    while harness.redis.llen("wfm") < len(committed):  # each sent right after its commit
        assert time.monotonic() < deadline, harness.redis.llen("wfm")
        time.sleep(0.1)
    assert harness.redis.delete("wfm") == 1  # the sends are lost
    assert harness.sink()["summary"]["received"] == 0
    pending = harness.deliveries()
    assert len(pending) == len(committed)
    assert {(d.state, d.attempts) for d in pending} == {("pending", 0)}

    overrides = harness.wfm_env(WFM_SWEEP_AFTER_S=1, WFM_SWEEP_INTERVAL_S=1)
    sender = harness.start(1, queues="wfm", warm_up=False, **overrides)
    harness.beat(**overrides)
    harness.wait_deliveries(states={"delivered"}, count=len(committed))

    _, deliveries = check_outbox(harness)
    assert {d.attempts for d in deliveries} == {1}
    assert harness.sink()["summary"]["received"] == len(committed)
    log = (sender.logdir / "worker-0.log").read_text(errors="replace")
    assert "re-enqueued" in log  # the sweeper, not a surviving message, sent them


def test_a_4xx_is_not_retried_and_the_cli_lists_and_retries_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 from the sink: the delivery fails after one attempt and stays failed; ``presence wfm
    failed`` lists it; ``presence wfm retry --all`` delivers it once the sink has recovered."""
    harness.start(1, concurrency=4, **harness.wfm_env())
    harness.wait_deliveries(states={"delivered"})
    harness.admin("POST", "/wfm/fail", {"status": 400, "count": 1})
    request_id = harness.send(harness.update(off_queue_agents(harness, 1)[0], "Busy"))
    [row] = harness.wait_rows(1, request_ids=[request_id])
    assert row.outcome == "confirmed"
    harness.wait_deliveries(states={"delivered", "failed"})
    [delivery] = [d for d in harness.deliveries() if d.audit_id == row.id]
    time.sleep(3)  # longer than any WFM backoff here (≤ 1 s): a retry would have happened
    [delivery] = [d for d in harness.deliveries() if d.id == delivery.id]
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 1, 400)
    assert (delivery.last_error or "").startswith("HTTP 400")
    [attempt] = [a for a in harness.attempts() if a.delivery_id == delivery.id]
    assert (attempt.status_code, attempt.result) == (400, "failed")
    received = [d for d in harness.sink()["deliveries"] if d["eventId"] == delivery.event_id]
    assert [d["status"] for d in received] == [400]

    monkeypatch.setenv("REDIS_URL", harness.redis_url)
    monkeypatch.setenv("DATABASE_URL", harness.database_url)
    monkeypatch.setenv("COLUMNS", "200")  # rich's table width: room for the full event id
    get_settings.cache_clear()
    try:
        listed = CliRunner().invoke(cli, ["wfm", "failed"])
        assert listed.exit_code == 0, listed.output
        assert delivery.event_id in listed.output
        assert "HTTP 400" in listed.output

        harness.admin("DELETE", "/wfm/fail")
        retried = CliRunner().invoke(cli, ["wfm", "retry", "--all"])
        assert retried.exit_code == 0, retried.output
        assert "re-sent 1 delivery" in retried.output
        harness.wait_deliveries(states={"delivered"})
        after = CliRunner().invoke(cli, ["wfm", "failed"])
        assert after.exit_code == 0
        assert delivery.event_id not in after.output
    finally:
        get_settings.cache_clear()

    check_outbox(harness)
    [delivery] = [d for d in harness.deliveries() if d.id == delivery.id]
    assert delivery.attempts == 1  # counted afresh by the retry
    results = [
        (a.status_code, a.result) for a in harness.attempts() if a.delivery_id == delivery.id
    ]
    assert results == [(400, "failed"), (200, "delivered")]
    received = [d for d in harness.sink()["deliveries"] if d["eventId"] == delivery.event_id]
    assert [d["status"] for d in received] == [400, 200]  # the same event id, accepted once


def test_signatures_verify_on_the_sink_side(harness: Harness) -> None:
    """Each delivery's signature was verified by the sink over the raw bytes it received; the
    sink never echoes the signature, so it is recomputed from the recorded timestamp and body and
    checked with the sink's own ``verify``; tampered or wrongly keyed copies are refused."""
    harness.start(1, concurrency=4, **harness.wfm_env())
    ids = [harness.send(harness.update(u, "Busy")) for u in off_queue_agents(harness, 3)]
    harness.wait_rows(len(ids), request_ids=ids)
    harness.wait_deliveries(states={"delivered"})
    _, deliveries = check_outbox(harness)
    outbox = {d.event_id: d for d in deliveries}

    recorded = harness.sink()["deliveries"]
    assert len(recorded) == len(deliveries)
    for received in recorded:
        assert received["signatureValid"] is True
        assert header(received, SIGNATURE_HEADER) is None  # never echoed
        timestamp = header(received, TIMESTAMP_HEADER)
        assert timestamp is not None
        assert abs(int(timestamp) - time.time()) < 300
        raw = canonical(outbox[received["eventId"]].payload)
        assert json.loads(raw) == received["body"]
        signature = wfm.sign(WFM_SECRET, timestamp, raw)
        assert verify(WFM_SECRET, timestamp, signature, raw)
        assert not verify("another-secret", timestamp, signature, raw)
        assert not verify(WFM_SECRET, str(int(timestamp) + 1), signature, raw)
        assert not verify(WFM_SECRET, timestamp, signature, raw + b" ")  # one byte more

    # The sink really checks: replays of the first event with a wrong key or a changed body
    # are refused and recorded with signatureValid false (only the correctly signed copy passes).
    body = dict(outbox[recorded[0]["eventId"]].payload)
    timestamp = str(int(time.time()))
    tampered = canonical({**body, "outcome": "drifted"})
    copies = [
        (canonical(body), wfm.sign("another-secret", timestamp, canonical(body)), False),
        (tampered, wfm.sign(WFM_SECRET, timestamp, canonical(body)), False),
        (canonical(body), wfm.sign(WFM_SECRET, timestamp, canonical(body)), True),
    ]
    statuses = [
        harness.http.post(
            harness.sink_url,
            content=raw,
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: signature,
            },
        ).status_code
        for raw, signature, _ in copies
    ]
    assert statuses == [401, 401, 200]
    replays = harness.sink()["deliveries"][len(recorded) :]
    assert [d["signatureValid"] for d in replays] == [valid for _, _, valid in copies]


def test_an_empty_secret_and_plain_http_beyond_loopback_are_logged_once_per_process(
    harness: Harness,
) -> None:
    """WFM_WEBHOOK_SECRET empty and WFM_WEBHOOK_URL http:// to another host: the worker warns
    once per process, one line each, and still attempts the deliveries."""
    url = "http://wfm.invalid/events"
    fleet = harness.start(1, concurrency=4, WFM_WEBHOOK_URL=url, WFM_WEBHOOK_SECRET="",
                          WFM_MAX_RETRIES=0)  # fmt: skip
    ids = [harness.send(harness.update(u, "Busy")) for u in off_queue_agents(harness, 2)]
    harness.wait_rows(len(ids), request_ids=ids)
    harness.wait_deliveries(states={"failed"})
    assert len(harness.deliveries()) >= 2

    log = (fleet.logdir / "worker-0.log").read_text(errors="replace")
    secret = [line for line in log.splitlines() if "WFM_WEBHOOK_SECRET is empty" in line]
    plain = [line for line in log.splitlines() if "WFM_WEBHOOK_URL is plain http://" in line]
    assert len(secret) == 1, log[-3000:]
    assert len(plain) == 1, log[-3000:]
    assert "WARNING" in secret[0]
    assert plain[0].endswith(
        "WFM_WEBHOOK_URL is plain http:// to wfm.invalid: events travel unencrypted and can be "
        "read or replayed on the way; use https://"
    )
