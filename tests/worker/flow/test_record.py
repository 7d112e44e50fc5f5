"""The recorder over the real SQL store (SQLite; its recorded-already check on PostgreSQL too): one row per request, the WFM outbox row in the
same transaction, metrics and the WFM enqueue only after the commit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

import migrations
from models import AuditRecord, Outcome, WfmDelivery
from models.db import session_scope
from tests.support.services import migrated_database
from tests.worker.flow.fakes import T0
from worker.audit import SqlAuditStore
from worker.flow.record import DRAFT_FIELDS, AuditDraft, Recorder


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(url)
    return url


def recorder(url: str, enqueued: list[int], observed: list[str]) -> Recorder:
    return Recorder(
        SqlAuditStore(url),
        now=lambda: T0,
        observe=lambda d: observed.append(d.request_id),
        enqueue_wfm=enqueued.append,
        wfm_enabled=True,
    )


def draft(request_id: str, **fields: object) -> AuditDraft:
    return AuditDraft(request_id=request_id, started_at=T0, user_id="u1", **fields)  # type: ignore[arg-type]


def test_the_draft_has_exactly_the_audit_columns() -> None:
    columns = {c.key for c in inspect(AuditRecord).columns} - {"id"}
    assert columns == DRAFT_FIELDS


def test_an_unfinished_draft_cannot_become_a_row() -> None:
    with pytest.raises(ValueError, match="no outcome"):
        draft("r1").to_row()


def test_a_batch_is_written_with_outbox_rows_for_state_changes_only(database: str) -> None:
    enqueued: list[int] = []
    observed: list[str] = []
    outcomes = recorder(database, enqueued, observed).finish_many(
        [(draft("r1"), Outcome.CONFIRMED), (draft("r2"), Outcome.SUPERSEDED)]
    )

    assert outcomes == [Outcome.CONFIRMED, Outcome.SUPERSEDED]
    assert observed == ["r1", "r2"]
    with session_scope(database) as session:
        deliveries = session.scalars(select(WfmDelivery)).all()
        assert [d.payload["request_id"] for d in deliveries] == ["r1"]
        assert enqueued == [deliveries[0].id]


def test_a_duplicate_keeps_the_first_row_and_is_neither_observed_nor_sent(database: str) -> None:
    enqueued: list[int] = []
    observed: list[str] = []
    rec = recorder(database, enqueued, observed)
    rec.finish(draft("r1", idempotency_key="k"), Outcome.CONFIRMED)

    again = rec.finish_many(
        [(draft("r2", idempotency_key="k"), Outcome.FAILED), (draft("r3"), Outcome.INVALID)]
    )

    assert again == [Outcome.CONFIRMED, Outcome.INVALID]
    assert observed == ["r1", "r3"]
    assert len(enqueued) == 1
    with session_scope(database) as session:
        assert sorted(session.scalars(select(AuditRecord.request_id))) == ["r1", "r3"]


def test_nothing_is_sent_when_the_write_fails(tmp_path: Path) -> None:
    enqueued: list[int] = []
    observed: list[str] = []
    unmigrated = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    with pytest.raises(Exception, match="no such table"):
        recorder(unmigrated, enqueued, observed).finish(draft("r1"), Outcome.CONFIRMED)
    assert enqueued == []
    assert observed == []


@pytest.fixture(params=["sqlite", "postgres"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as url:
        yield url


def test_the_recorded_outcome_is_found_by_request_id_or_idempotency_key(any_database: str) -> None:
    store = SqlAuditStore(any_database)
    recorder(any_database, [], []).finish(
        draft("req-1", idempotency_key="key-1"), Outcome.SUPERSEDED
    )

    assert store.find_outcome(request_id="req-1", idempotency_key=None) == Outcome.SUPERSEDED
    assert store.find_outcome(request_id="req-2", idempotency_key="key-1") == Outcome.SUPERSEDED
    assert store.find_outcome(request_id="req-2", idempotency_key="key-2") is None
    assert store.find_outcome(request_id="req-2", idempotency_key=None) is None


def test_every_row_records_its_org(database: str) -> None:
    rec = recorder(database, [], [])

    rec.finish_many([(draft("r1"), Outcome.CONFIRMED), (draft("r2", org="acme"), Outcome.INVALID)])

    with session_scope(database) as session:
        orgs = {r.request_id: r.org for r in session.scalars(select(AuditRecord))}
    assert orgs == {"r1": "default", "r2": "acme"}


def test_idempotency_keys_are_per_org(database: str) -> None:
    rec = recorder(database, [], [])
    store = rec.store

    outcomes = rec.finish_many(
        [
            (draft("r1", idempotency_key="shift-42"), Outcome.CONFIRMED),
            (draft("r2", idempotency_key="shift-42", org="acme"), Outcome.FAILED),
            (draft("r3", idempotency_key="shift-42", org="acme"), Outcome.CONFIRMED),
        ]
    )

    assert outcomes == [Outcome.CONFIRMED, Outcome.FAILED, Outcome.FAILED], "r3 repeats r2's key"
    assert store.find_outcome(request_id="x", idempotency_key="shift-42") == Outcome.CONFIRMED
    assert (
        store.find_outcome(request_id="x", idempotency_key="shift-42", org="acme") == Outcome.FAILED
    )
    assert store.find_outcome(request_id="x", idempotency_key="shift-42", org="globex") is None
    assert store.audited([], ["shift-42"], "globex") == set()
    assert store.audited(["r3"], ["shift-42"], "acme") == {"shift-42"}
