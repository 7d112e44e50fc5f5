"""The producer contract: the presence.update payload, its JSON schema, and the message that
lands on the ``presence`` queue in Redis (JSON, never pickle)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis
from pydantic import ValidationError

from producer import SCHEMA_VERSION, TASK_NAME, PresenceProducer, PresenceUpdate
from producer.schema import (
    DEFAULT_ORG,
    ORG_NAME_PATTERN,
    QUEUE,
    check_org,
    invalid_message,
    json_schema,
    org_of,
    org_of_queue,
    queue_for,
)

AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def payload(**changes) -> dict:
    return {"user_id": AGENT, "state": "Break", "requested_at": NOW.isoformat(), **changes}


def test_a_minimal_payload_gets_the_defaults():
    update = PresenceUpdate.model_validate(payload())

    assert update.version == SCHEMA_VERSION == 1
    assert update.source == "api"
    assert update.reason is None
    assert update.requested_at == NOW


def test_a_full_payload_is_accepted_and_trimmed():
    update = PresenceUpdate.model_validate(
        payload(
            state="  On Queue ",
            reason="Coffee",
            expected_state="Available",
            source="wfm-shift-change",
            idempotency_key="shift-42:agent-7",
            message="back at 10",
            requested_at="2026-03-02T10:00:00+01:00",
        )
    )

    assert update.state == "On Queue"
    assert update.requested_at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert update.requested_at.utcoffset() == timedelta(hours=1)


def test_the_message_is_json_safe_and_round_trips():
    update = PresenceUpdate.model_validate(payload(reason="Coffee"))

    message = update.to_message()

    assert json.loads(json.dumps(message)) == message
    assert message["requested_at"] == "2026-03-02T09:00:00Z"
    assert "expected_state" not in message, "unset optional fields are left out"
    assert PresenceUpdate.model_validate(message) == update


@pytest.mark.parametrize(
    "requested_at",
    ["2026-03-02T09:00:00", datetime(2026, 3, 2, 9, 0)],  # noqa: DTZ001
)
def test_a_naive_requested_at_is_rejected(requested_at):
    with pytest.raises(ValidationError, match="requested_at must carry a timezone"):
        PresenceUpdate.model_validate(payload(requested_at=requested_at))


def test_any_timezone_is_accepted():
    tz = timezone(timedelta(hours=-5))
    update = PresenceUpdate.model_validate(payload(requested_at=datetime(2026, 1, 1, 4, tzinfo=tz)))

    assert update.requested_at == datetime(2026, 1, 1, 9, tzinfo=UTC)


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError) as caught:
        PresenceUpdate.model_validate(payload(presence="Break"))

    assert caught.value.errors()[0]["loc"] == ("presence",)
    assert caught.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "user_id", ["agent-7", "", "0f3c2a1e5b6d4c7e8f90a1b2c3d4e5f6", AGENT + "0"]
)
def test_a_user_id_that_is_not_a_uuid_is_rejected(user_id):
    with pytest.raises(ValidationError) as caught:
        PresenceUpdate.model_validate(payload(user_id=user_id))

    assert caught.value.errors()[0]["loc"] == ("user_id",)


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "   "},
        {"state": "x" * 101},
        {"version": 2},
        {"idempotency_key": ""},
        {"message": "m" * 501},
        {"requested_at": "yesterday"},
    ],
)
def test_other_bad_values_are_rejected(changes):
    with pytest.raises(ValidationError):
        PresenceUpdate.model_validate(payload(**changes))


def test_the_json_schema_describes_the_payload():
    schema = json_schema()

    assert set(schema["required"]) == {"user_id", "state", "requested_at"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["requested_at"]["format"] == "date-time"
    assert "pattern" in schema["properties"]["user_id"]
    assert schema["properties"]["version"]["const"] == 1
    assert json.loads(json.dumps(schema)) == schema


@pytest.fixture
def producer(redis_url):
    sender = PresenceProducer(redis_url)
    yield sender
    sender.close()


def queued_messages(redis_url: str) -> list[dict]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]
    finally:
        client.close()


def test_send_puts_a_json_presence_update_on_the_presence_queue(producer, redis_url):
    update = PresenceUpdate.model_validate(payload(reason="Coffee"))

    request_id = producer.send(update, request_id="req-fixed-1")

    assert request_id == "req-fixed-1"
    [message] = queued_messages(redis_url)
    assert message["content-type"] == "application/json"
    assert "pickle" not in json.dumps(message)
    assert message["headers"]["task"] == TASK_NAME == "presence.update"
    assert message["headers"]["id"] == "req-fixed-1"
    assert message["properties"]["delivery_info"]["routing_key"] == QUEUE
    body = base64.b64decode(message["body"])
    args, kwargs, _embed = json.loads(body)
    assert args == [update.to_message()]
    assert kwargs == {}


def test_set_presence_validates_before_enqueueing(producer, redis_url):
    with pytest.raises(ValidationError):
        producer.set_presence("not-a-uuid", "Break")
    assert queued_messages(redis_url) == []

    producer.set_presence(AGENT, "Break", reason="Coffee", idempotency_key="k-1")
    [message] = queued_messages(redis_url)
    [sent] = json.loads(base64.b64decode(message["body"]))[0]
    assert sent["reason"] == "Coffee"
    assert sent["idempotency_key"] == "k-1"
    assert datetime.fromisoformat(sent["requested_at"]).tzinfo is not None


def test_send_many_enqueues_each_update_with_its_own_id(producer, redis_url):
    updates = [PresenceUpdate.model_validate(payload(state=s)) for s in ("Break", "Meal", "Away")]

    ids = producer.send_many(updates)

    messages = queued_messages(redis_url)
    assert len(set(ids)) == 3
    assert sorted(m["headers"]["id"] for m in messages) == sorted(ids)


def test_the_org_defaults_to_default_and_is_left_out_of_the_message():
    update = PresenceUpdate.model_validate(payload())

    assert update.org == DEFAULT_ORG == "default"
    assert "org" not in update.to_message(), "a default-org message is what it was before orgs"
    assert "org" not in PresenceUpdate.model_validate(payload(org="default")).to_message()


def test_another_org_travels_in_the_message_and_round_trips():
    update = PresenceUpdate.model_validate(payload(org="acme-eu_2"))

    message = update.to_message()

    assert message["org"] == "acme-eu_2"
    assert PresenceUpdate.model_validate(message) == update


@pytest.mark.parametrize("org", ["Acme", "-acme", "_x", "", "a" * 41, "acme.eu", "ac me", 7])
def test_an_org_that_is_no_org_name_is_rejected_in_one_line(org):
    with pytest.raises(ValidationError) as caught:
        PresenceUpdate.model_validate(payload(org=org))

    assert caught.value.errors()[0]["loc"] == ("org",)
    message = invalid_message(caught.value)
    assert message.startswith("Invalid payload — org: ")
    assert "\n" not in message


def test_org_names_follow_the_pattern():
    assert ORG_NAME_PATTERN == r"^[a-z0-9][a-z0-9_-]{0,39}$"
    assert check_org("a" * 40) == "a" * 40
    assert check_org("0") == "0"
    with pytest.raises(ValueError, match="is not an org name"):
        check_org("a" * 41)


def test_each_org_has_its_queue_and_the_default_org_keeps_presence():
    assert queue_for(DEFAULT_ORG) == QUEUE == "presence"
    assert queue_for("acme") == "presence.acme"
    with pytest.raises(ValueError, match="is not an org name"):
        queue_for("Acme")


@pytest.mark.parametrize(
    ("raw", "org"),
    [
        ({"org": "acme"}, "acme"),
        ({"org": " acme "}, "acme"),
        ({"org": "Acme"}, DEFAULT_ORG),
        ({"org": 7}, DEFAULT_ORG),
        ({}, DEFAULT_ORG),
        ("not an object", DEFAULT_ORG),
        (None, DEFAULT_ORG),
    ],
)
def test_the_org_of_a_raw_payload_is_its_valid_org_else_default(raw, org):
    assert org_of(raw) == org


def test_the_json_schema_describes_the_org():
    org = json_schema()["properties"]["org"]

    assert org["default"] == "default"
    assert org["pattern"] == ORG_NAME_PATTERN
    assert "org" not in json_schema()["required"]


@pytest.mark.parametrize(
    ("queue", "org"),
    [
        ("presence", "default"),
        ("presence.acme", "acme"),
        ("presence.default", None),  # the default org's queue is presence
        ("presence.Acme", None),
        ("presence.", None),
        ("wfm", None),
        ("presencex.acme", None),
    ],
)
def test_the_org_of_a_queue_is_the_inverse_of_queue_for(queue, org):
    assert org_of_queue(queue) == org
    if org is not None:
        assert queue_for(org) == queue
