"""``PresenceProducer`` against a real Redis broker: what lands in the ``presence`` queue, and in
each other org's ``presence.<org>`` queue."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from producer import TASK_NAME, WAVE_TASK_NAME, PresenceProducer, PresenceUpdate

AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"


def queued(redis_url: str, queue: str = "presence") -> list[dict[str, Any]]:
    """A queue's messages, oldest first, as task name, args and raw body."""
    client = redis.Redis.from_url(redis_url)
    raws = client.lrange(queue, 0, -1)
    client.close()
    out = []
    for raw in reversed(raws):  # kombu pushes on the left
        message = json.loads(raw)
        body = base64.b64decode(message["body"])
        args = json.loads(body)[0]
        out.append({"task": message["headers"]["task"], "args": args, "body": body})
    return out


def update(**changes: Any) -> PresenceUpdate:
    fields = {"user_id": AGENT, "state": "Break", "requested_at": datetime.now(UTC), **changes}
    return PresenceUpdate.model_validate(fields)


def test_send_wave_splits_many_agents_into_waves_of_a_channels_worth(redis_url: str) -> None:
    now = datetime.now(UTC)
    updates = [
        PresenceUpdate(user_id=str(uuid.uuid4()), state="On Queue", requested_at=now)
        for _ in range(1500)
    ]
    producer = PresenceProducer(redis_url)

    request_ids = producer.send_wave(updates)
    producer.close()

    messages = queued(redis_url)
    assert [m["task"] for m in messages] == [WAVE_TASK_NAME, WAVE_TASK_NAME]
    elements = [e for m in messages for e in m["args"][0]]
    assert [len(m["args"][0]) for m in messages] == [1000, 500]
    assert [e["request_id"] for e in elements] == request_ids
    assert len(set(request_ids)) == 1500
    assert [e["update"] for e in elements] == [u.to_message() for u in updates]


def test_a_default_org_producer_sends_what_it_sent_before_orgs(redis_url: str) -> None:
    one = update()
    producer = PresenceProducer(redis_url)

    producer.send(one)
    producer.close()

    [message] = queued(redis_url)
    assert message["args"] == [one.to_message()]
    assert "org" not in message["args"][0]
    assert b'"org"' not in message["body"]


def test_an_org_producer_sends_to_its_orgs_queue_with_the_org_in_the_payload(
    redis_url: str,
) -> None:
    producer = PresenceProducer(redis_url, org="acme")

    request_id = producer.send(update(reason="Coffee"))
    producer.set_presence(AGENT, "Meal")
    producer.close()

    assert queued(redis_url) == []
    messages = queued(redis_url, "presence.acme")
    assert [m["task"] for m in messages] == [TASK_NAME, TASK_NAME]
    assert [m["args"][0]["org"] for m in messages] == ["acme", "acme"]
    assert messages[0]["args"][0]["reason"] == "Coffee"
    assert request_id


def test_an_updates_own_org_wins_over_the_producers(redis_url: str) -> None:
    producer = PresenceProducer(redis_url, org="acme")

    producer.send(update(org="globex"))
    producer.send(update(org="default"))  # named explicitly: the default org's queue
    producer.set_presence(AGENT, "Break", org="initech")
    producer.close()

    assert [m["args"][0].get("org") for m in queued(redis_url, "presence.globex")] == ["globex"]
    assert [m["args"][0].get("org") for m in queued(redis_url)] == [None]
    assert [m["args"][0]["org"] for m in queued(redis_url, "presence.initech")] == ["initech"]
    assert queued(redis_url, "presence.acme") == []


def test_send_many_sends_each_update_to_its_orgs_queue(redis_url: str) -> None:
    producer = PresenceProducer(redis_url)

    ids = producer.send_many([update(), update(org="acme"), update()])
    producer.close()

    assert len(ids) == 3
    assert len(queued(redis_url)) == 2
    assert [m["args"][0]["org"] for m in queued(redis_url, "presence.acme")] == ["acme"]


def test_a_wave_holds_one_orgs_updates_and_goes_to_its_queue(redis_url: str) -> None:
    updates = [
        update(org=org, user_id=str(uuid.uuid4()))
        for org in ("acme", "default", "acme", "globex", "default")
    ]
    producer = PresenceProducer(redis_url)

    request_ids = producer.send_wave(updates)
    producer.close()

    by_queue = {
        queue: [e for m in queued(redis_url, queue) for e in m["args"][0]]
        for queue in ("presence", "presence.acme", "presence.globex")
    }
    assert [len(queued(redis_url, q)) for q in by_queue] == [1, 1, 1]
    assert [e["update"].get("org") for e in by_queue["presence"]] == [None, None]
    assert [e["update"]["org"] for e in by_queue["presence.acme"]] == ["acme", "acme"]
    assert [e["update"]["org"] for e in by_queue["presence.globex"]] == ["globex"]
    sent = {e["request_id"]: e["update"]["user_id"] for es in by_queue.values() for e in es}
    assert [sent[r] for r in request_ids] == [u.user_id for u in updates], "ids in given order"


@pytest.mark.parametrize("org", ["Acme", "", "presence.acme"])
def test_a_producer_for_no_org_name_is_refused(redis_url: str, org: str) -> None:
    with pytest.raises(ValueError, match="is not an org name"):
        PresenceProducer(redis_url, org=org)
