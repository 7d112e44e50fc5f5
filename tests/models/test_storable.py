"""No terminal write fails on content, on SQLite and on PostgreSQL: NUL characters, lone
surrogates, over-long ids and texts, huge payloads — each of which once lost a request."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from models import AuditRecord, WfmDelivery
from models.db import session_scope
from models.storable import JSON_LIMIT, TEXT_LIMIT, clean, clean_json, storable_id
from producer.schema import wave_element
from tests.worker.flow.fakes import T0, world
from worker.audit import SqlAuditStore
from worker.flow.request import Attempt
from worker.flow.single import handle_update
from worker.flow.wave import handle_wave

AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"


BOTH_DATABASES = pytest.mark.parametrize(
    "audit_database",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


def rows(url: str) -> dict[str, AuditRecord]:
    with session_scope(url) as session:
        return {r.request_id: r for r in session.scalars(select(AuditRecord))}


def test_ids_of_any_length_stay_distinct_and_stable() -> None:
    long_a, long_b = "a" * 100, "a" * 99 + "b"
    assert storable_id("req-1") == "req-1"
    assert len(storable_id(long_a)) == 64
    assert storable_id(long_a) == storable_id(long_a) != storable_id(long_b)
    assert "\x00" not in storable_id("x\x00y")
    assert storable_id("x\x00y") != storable_id("x\ufffdy")


def test_text_and_json_are_cleaned_and_bounded() -> None:
    assert clean("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    assert clean("x" * 10, 5) == "xxxx…"
    assert clean_json({"k\x00": ["\udfff", 1, None]}) == {"k\ufffd": ["\ufffd", 1, None]}
    assert set(clean_json({"big": "x" * 5_000_000})) == {"truncated"}
    assert len(clean_json({"big": "x" * 5_000_000})["truncated"]) < JSON_LIMIT


@BOTH_DATABASES
@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (
            {
                "user_id": AGENT,
                "state": "Break",
                "source": "a\x00b",
                "requested_at": T0.isoformat(),
            },
            "confirmed",
        ),
        (
            {
                "user_id": AGENT,
                "state": "Break",
                "idempotency_key": "k\x00",
                "requested_at": T0.isoformat(),
            },
            "invalid",  # NUL cannot identify a request: refused with its reason, recorded
        ),
        (
            {
                "user_id": AGENT,
                "state": "Break",
                "idempotency_key": "k\ud800",
                "requested_at": T0.isoformat(),
            },
            "invalid",  # not text: the payload is invalid, and its row still stored
        ),
        ({"user_id": "\x00nobody\ud800", "state": "Break"}, "invalid"),
        ({"user_id": AGENT, "state": "Break", "message": "x" * 1_000_050}, "invalid"),
        ({"user_id": AGENT, "state": "x" * 5_000_000}, "invalid"),
    ],
    ids=[
        "NUL in source",
        "NUL in key",
        "surrogate in key",
        "NUL in a bad user id",
        "huge message",
        "5 MB state",
    ],
)
def test_a_single_update_is_recorded_whatever_its_content(
    audit_database: str, raw: dict[str, Any], outcome: str
) -> None:
    database = audit_database
    w = world({AGENT: "def-available"}, store=SqlAuditStore(database))
    request_id = storable_id("task-\x00\ud800" + "9" * 100)  # NUL, surrogate, too long

    assert handle_update(w.ports, raw, Attempt(request_id, T0)).value == outcome

    row = rows(database)[request_id]
    assert row.outcome == outcome
    assert len(row.error_message or "") <= TEXT_LIMIT
    if outcome == "confirmed":
        with session_scope(database) as session:
            assert session.scalars(select(WfmDelivery)).one().audit_id == row.id


@BOTH_DATABASES
def test_a_wave_is_recorded_whole_when_one_element_is_unstorable(audit_database: str) -> None:
    database = audit_database
    others = [f"{AGENT[:-1]}{i}" for i in range(3)]
    w = world(dict.fromkeys(others, "def-available"), store=SqlAuditStore(database))
    elements = [
        wave_element(
            "e-0", {"user_id": others[0], "state": "Break", "requested_at": T0.isoformat()}
        ),
        wave_element("e-1\x00" + "x" * 80, {"user_id": "\x00\ud800", "state": "Break"}),
        wave_element(
            "e-2",
            {
                "user_id": others[2],
                "state": "Break",
                "source": "\x00",
                "requested_at": T0.isoformat(),
            },
        ),
    ]

    handle_wave(w.ports, elements, Attempt("wave\x00-1", T0), lambda *_: None)

    recorded = rows(database)
    assert len(recorded) == 3
    assert recorded["e-0"].outcome == recorded["e-2"].outcome == "confirmed"
    assert recorded[storable_id("e-1\x00" + "x" * 80)].outcome == "invalid"


@BOTH_DATABASES
def test_a_dead_letter_of_unvalidated_content_is_recorded(audit_database: str) -> None:
    database = audit_database
    from worker.flow.single import record_dead_letter
    from worker.retry import GiveUp

    w = world({AGENT: "def-available"}, store=SqlAuditStore(database))
    raw = {"user_id": "\x00" * 100, "source": "\ud800" * 500, "idempotency_key": "x" * 10_000}

    outcome = record_dead_letter(
        w.ports, raw, Attempt("dl-1", T0, failures=3), GiveUp("503", "Gave up after 4 attempts")
    )

    assert outcome.value == "dead_letter"
    assert rows(database)["dl-1"].error_code == "503"
