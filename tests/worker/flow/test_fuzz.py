"""Fuzzing both update flows: any payload, any sequence of platform failures.

Whatever arrives and whatever fails, a delivery ends in exactly one of two ways — one terminal
row recorded, or RetryLater with nothing recorded — and a change the platform accepted is never
sent again and is always recorded as applied. The real SQL store takes every row.
"""

from __future__ import annotations

import tempfile
import uuid
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migrations
from producer.schema import wave_element
from tests.worker.flow.fakes import T0, World, world
from worker.audit import SqlAuditStore
from worker.flow.request import Attempt
from worker.flow.single import handle_update
from worker.flow.wave import handle_wave
from worker.genesys.errors import BadRequest, NotFound, ServerError, TransportError
from worker.limiter import BudgetExhausted
from worker.retry import RetryLater

# The long budget (HYPOTHESIS_PROFILE=long) takes minutes; the short one seconds.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(3600)]

AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"
APPLIED = {"confirmed", "applied_unconfirmed", "drifted"}

any_text = st.text(st.characters(exclude_categories=()), max_size=80)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
times = st.datetimes(
    min_value=T0.replace(tzinfo=None) - timedelta(days=3),
    max_value=T0.replace(tzinfo=None) + timedelta(days=3),
    timezones=st.just(UTC),
).map(lambda t: t.isoformat())
states = st.sampled_from(
    ["Break", "On Queue", "OnQueue", "Available", "Coffee", "Offline", "Meal", "def-break"]
)
plausible = st.fixed_dictionaries(
    {"user_id": st.just(AGENT) | any_text, "state": states | any_text},
    optional={
        "version": st.just(1) | json_like,
        "reason": st.just("Coffee") | any_text,
        "expected_state": states | json_like,
        "source": any_text,
        "requested_at": times | json_like,
        "idempotency_key": any_text,
        "message": any_text,
        "capacity_policy": st.sampled_from(["reject", "defer", "force"]) | json_like,
        "defer_until": times | json_like,
        "force_reason": any_text,
        "extra": json_like,
    },
)
payloads = plausible | json_like
errors = st.sampled_from(
    [
        None,
        ServerError("5xx", status=503),
        TransportError("timed out"),
        BudgetExhausted(3),
        NotFound("gone", status=404, code="not.found"),
        BadRequest("bad", status=400, code="bad.request"),
    ]
)
conditions = st.fixed_dictionaries(
    {
        "agent_in": st.sampled_from(["def-available", "def-onqueue", "def-offline", "def-coffee"]),
        "writes": st.lists(errors, max_size=3),
        "reads": st.lists(errors, max_size=3),
        "socket": st.sampled_from(["live", "silent", "elsewhere", "down"]),
        "no_room": st.booleans(),
        "busy": st.booleans(),
        "newer": st.booleans(),
        "wave": st.booleans(),
    }
)


def prepared(c: dict[str, Any], store: Any = None) -> World:
    w = world({AGENT: c["agent_in"]}, store=store)
    w.api.faults["write"].extend(c["writes"])
    w.api.faults["read"].extend(c["reads"])
    if c["socket"] == "down":
        w.confirmations.connected = False
    elif c["socket"] == "silent":
        w.confirmations.silent.add(AGENT)
    elif c["socket"] == "elsewhere":
        w.confirmations.elsewhere.add(AGENT)
    if c["no_room"]:
        w.capacity.refuse[AGENT] = "queue-1 full"
    if c["busy"]:
        w.ordering.busy.add(AGENT)
    if c["newer"]:
        w.ordering.register(AGENT, 2**62, "newer")
    return w


def deliver(w: World, raw: Any, request_id: str, as_wave: bool) -> str | None:
    """One delivery; the recorded outcome, or None (retry later, or handed over)."""
    attempt = Attempt(request_id, T0)
    try:
        if as_wave:
            handle_wave(w.ports, [wave_element(request_id, raw)], attempt, lambda *_: None)
        else:
            handle_update(w.ports, raw, attempt)
    except RetryLater:
        return None
    row = w.store.rows.get(request_id) if hasattr(w.store, "rows") else None
    return row.outcome.value if row is not None and row.outcome else None


@given(raw=payloads, c=conditions)
def test_a_delivery_records_one_row_or_nothing_and_never_writes_twice(
    raw: Any, c: dict[str, Any]
) -> None:
    w = prepared(c)

    first = deliver(w, raw, "req-1", c["wave"])
    assert len(w.store.rows) <= 1
    if w.api.writes[AGENT]:
        assert first in APPLIED, "an accepted change is always recorded as applied"

    second = deliver(w, raw, "req-1", c["wave"])  # a redelivery, all faults spent
    assert w.api.writes[AGENT] <= 1
    assert len(w.store.rows) <= 1
    if first is not None:
        assert second in (first, None)
        assert w.row("req-1").outcome.value == first  # type: ignore[union-attr]
    assert not w.confirmations.open


@pytest.fixture(scope="module")
def sql_store() -> SqlAuditStore:
    directory = Path(tempfile.mkdtemp(prefix="presence-fuzz-"))
    url = f"sqlite:///{directory / 'audit.sqlite3'}"
    migrations.upgrade(url)
    return SqlAuditStore(url)


@given(raw=payloads, as_wave=st.booleans(), request_id=any_text)
def test_the_real_store_takes_every_row(
    sql_store: SqlAuditStore, raw: Any, as_wave: bool, request_id: str
) -> None:
    from models.storable import clean, storable_id

    rid = storable_id(f"{uuid.uuid4().hex}{request_id}")
    w = world({AGENT: "def-available"}, store=sql_store)

    deliver(w, raw, rid, as_wave)

    key = raw.get("idempotency_key") if isinstance(raw, dict) else None
    key = key if isinstance(key, str) and clean(key) == key else None  # only a valid key keys a row
    # A repeated idempotency key (an earlier example's) is answered by the earlier row.
    assert sql_store.find_outcome(
        request_id=rid, idempotency_key=key if isinstance(key, str) else None
    )
