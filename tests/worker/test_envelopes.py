"""The envelope check: every broken shape is refused with its reason, the documented envelope is
accepted, and whatever the check accepts Kombu and Celery can take (fuzzed with hypothesis)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery.utils.time import timezone
from celery.worker.request import Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection
from kombu.utils.json import loads

from tests.support.envelopes import SHAPES, Shape, encoded, envelope, mutations
from worker.app import app
from worker.broker.guard import Unreadable, guarded_loads, task_signatures
from worker.envelopes import auditable_id, inspect_envelope

SIGNATURES = task_signatures()  # imports the tasks into ``app``
AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"


def good(request_id: str = "2f1c4b9e-0a4e-4f3e-9b1a-7d0c6b5a4e3f") -> dict[str, Any]:
    return envelope([{"user_id": AGENT, "state": "Break"}], request_id)


def test_the_documented_envelope_is_accepted():
    assert inspect_envelope(good(), SIGNATURES) is None


def test_every_task_of_ours_is_known():
    assert set(SIGNATURES) == {
        "presence.update", "presence.wave", "wfm.sync", "wfm.sweep", "shifts.dispatch",
    }  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_each_broken_shape_is_refused_with_its_reason(shape: Shape):
    raw = shape.raw(good())
    decoded = guarded_loads(raw)
    if isinstance(decoded, Unreadable):  # refused by the transport before any check
        assert shape.reason == "json"
        assert shape.recorded == "quarantine"
        return

    refusal = inspect_envelope(decoded, SIGNATURES)

    assert refusal is not None
    assert refusal.reason == shape.reason, refusal.detail
    assert "\n" not in refusal.detail
    assert len(refusal.detail) <= 301
    recoverable = refusal.request_id is not None and refusal.task == "presence.update"
    assert recoverable == (shape.recorded == "audit")


def test_a_task_of_ours_with_arguments_it_cannot_take_is_refused():
    message = envelope(["one", "two"], str(uuid.uuid4()), task="wfm.sync", queue="wfm")

    refusal = inspect_envelope(message, SIGNATURES)

    assert refusal is not None
    assert refusal.reason == "arguments"


def test_presence_updates_take_any_arguments_and_record_them_invalid_themselves():
    message = envelope([{"user_id": AGENT}, "extra"], str(uuid.uuid4()))

    assert inspect_envelope(message, SIGNATURES) is None


@pytest.mark.parametrize(
    ("value", "auditable"),
    [("req-1", True), ("x" * 64, True), ("x" * 65, False), ("", False), ("a\x00b", False),
     ("\ud800", False), (12, False), (None, False)],
)  # fmt: skip
def test_an_id_keys_an_audit_row_only_when_it_can_be_stored(value: object, auditable: bool):
    assert (auditable_id(value) is not None) is auditable


# -- the property: accepted means Kombu and Celery take it ---------------------------------------
CHANNEL = Connection("memory://").channel()


def taken_by_kombu_and_celery(raw: dict[str, Any]) -> None:
    """What the consumer's thread and the pool do with a message, raising where they would."""
    message = CHANNEL.Message(raw, channel=CHANNEL)
    message.accept = {"application/json"}
    assert not message.errors
    request = Request(message, app=app, task=app.tasks[message.headers["task"]], hostname="oracle")
    if request.eta is not None:
        timezone.to_system(request.eta).timestamp()
    args, kwargs, embed = loads(message.body)  # the pool's unpacking
    dict(**(embed or {}))
    SIGNATURES[message.headers["task"]].bind(*args, **kwargs)  # type: ignore[union-attr]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
PATHS = [
    "body", "content-type", "content-encoding", "headers", "properties", "headers.task",
    "headers.id", "headers.eta", "headers.expires", "headers.retries", "headers.timelimit",
    "headers.root_id", "headers.parent_id", "headers.group", "headers.lang", "headers.shadow",
    "headers.compression", "headers.ignore_result", "properties.delivery_tag",
    "properties.body_encoding", "properties.delivery_info", "properties.priority",
    "properties.delivery_info.routing_key", "properties.delivery_info.exchange",
]  # fmt: skip


def _edit(message: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = message
    for key in parents:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return message
        node = node[key]
    node[last] = value
    return message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), json_values), min_size=1, max_size=3))
def test_whatever_the_check_accepts_kombu_and_celery_take(edits: list[tuple[str, object]]):
    message = good()
    for path, value in edits:
        message = _edit(message, path, value)

    refusal = inspect_envelope(message, SIGNATURES)

    if refusal is None:
        taken_by_kombu_and_celery(message)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.builds(lambda b: {"body": b}, json_values)))
def test_the_check_never_raises(raw: object):
    inspect_envelope(raw, SIGNATURES)


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(json_values, st.lists(json_values, min_size=3, max_size=3)))
def test_any_body_is_either_refused_or_taken(body: object):
    message = good()
    message["body"] = encoded(body)

    if inspect_envelope(message, SIGNATURES) is None:
        taken_by_kombu_and_celery(message)


def test_the_seeded_mutations_of_the_worker_test_are_refused_or_taken():
    for raw in mutations(good(), 200, seed=12):
        message = json.loads(raw)
        if inspect_envelope(message, SIGNATURES) is None:
            taken_by_kombu_and_celery(message)
