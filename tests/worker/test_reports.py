"""Reports over the audit table: nearest-rank percentiles, the summary the CLI and benchmarks
print (aggregated by the database, over a window of recent rows), recent rows. Rows are inserted
into real databases built by the migrations: SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from models import AuditRecord, Outcome
from models.db import engine_for, session_scope
from tests.support.services import migrated_database
from worker import reports
from worker.reports import percentile

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("q", "expected"), [(0, 1), (1, 1), (50, 50), (90, 90), (95, 95), (99, 99), (100, 100)]
)
def test_percentiles_are_nearest_rank(q, expected):
    assert percentile([float(v) for v in range(100, 0, -1)], q) == expected


@pytest.mark.parametrize(("q", "expected"), [(50, 5), (90, 9), (95, 10), (99, 10)])
def test_percentiles_of_a_few_values(q, expected):
    assert percentile([float(v) for v in range(1, 11)], q) == expected


def test_percentiles_of_nothing_and_of_one_value():
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as url:
        yield url


_ids = iter(range(1_000_000))


def row(
    outcome: Outcome,
    latency_ms: float | None,
    *,
    calls: int = 1,
    user: str = "agent-1",
    at: datetime = T0,
    org: str = "default",
):
    n = next(_ids)
    return AuditRecord(
        request_id=f"req-{n}",
        org=org,
        user_id=user,
        outcome=outcome.value,
        requested_at=at if latency_ms is not None else None,
        finished_at=at + timedelta(milliseconds=latency_ms or 0),
        genesys_requests=calls,
    )


def insert(url: str, rows: list[AuditRecord]) -> None:
    with session_scope(url) as session:
        session.add_all(rows)


def test_summarize_reports_success_latency_and_requests_per_update(database):
    confirmed = [row(Outcome.CONFIRMED, ms, calls=1) for ms in range(100, 1100, 100)]
    insert(
        database,
        [
            *confirmed,
            row(Outcome.APPLIED_UNCONFIRMED, 5_000, calls=2),
            row(Outcome.DRIFTED, 6_000, calls=2),
            row(Outcome.FAILED, 50, calls=1),
            row(Outcome.INVALID, None, calls=0),
        ],
    )

    with session_scope(database) as session:
        summary = reports.summarize(session)

    assert summary.total == 14
    assert summary.success_rate == pytest.approx(11 / 14)
    assert summary.genesys_requests == 15
    assert summary.requests_per_update == pytest.approx(15 / 12), "calls per applied update"
    assert next(s.outcome for s in summary.by_outcome) == "confirmed", "most frequent first"
    stats = {s.outcome: s for s in summary.by_outcome}
    assert stats["confirmed"].count == 10
    assert stats["confirmed"].p50_ms == pytest.approx(500)
    assert stats["confirmed"].p95_ms == pytest.approx(1000)
    assert stats["applied_unconfirmed"].p99_ms == pytest.approx(5000)
    assert stats["invalid"].p50_ms is None, "no request time, no latency"


def test_summarize_counts_only_rows_after_since_id(database):
    insert(database, [row(Outcome.FAILED, 10), row(Outcome.FAILED, 10)])
    with session_scope(database) as session:
        first_batch_end = reports.count_rows(session)
    insert(database, [row(Outcome.CONFIRMED, 10)])

    with session_scope(database) as session:
        summary = reports.summarize(session, since_id=first_batch_end)

    assert summary.total == 1
    assert summary.success_rate == 1.0


def test_summarize_covers_the_rows_finished_in_the_window(database):
    insert(
        database,
        [
            row(Outcome.FAILED, 10, calls=7, at=T0 - timedelta(days=2)),  # before the window
            row(Outcome.CONFIRMED, 200, at=T0),
            row(Outcome.CONFIRMED, 100, at=T0 + timedelta(hours=1)),
        ],
    )

    with session_scope(database) as session:
        summary = reports.summarize(session, since=T0 - timedelta(hours=1))
        everything = reports.summarize(session)

    assert (summary.total, summary.genesys_requests, summary.success_rate) == (2, 2, 1.0)
    [confirmed] = summary.by_outcome
    assert (confirmed.p50_ms, confirmed.p99_ms) == (pytest.approx(100), pytest.approx(200))
    assert everything.total == 3


def test_percentiles_in_the_database_match_nearest_rank(database):
    latencies = [float(v * 7 % 1000) for v in range(1, 1001)]  # shuffled, with repeats
    insert(database, [row(Outcome.CONFIRMED, ms) for ms in latencies])
    insert(database, [row(Outcome.DRIFTED, ms) for ms in (5.0, 1.0, 3.0)])

    with session_scope(database) as session:
        stats = {s.outcome: s for s in reports.summarize(session).by_outcome}

    for outcome, values in (("confirmed", latencies), ("drifted", [5.0, 1.0, 3.0])):
        got = (stats[outcome].p50_ms, stats[outcome].p95_ms, stats[outcome].p99_ms)
        expected = tuple(percentile(values, q) for q in (50, 95, 99))
        assert got == pytest.approx(expected), outcome


def test_an_empty_table_summarizes_to_zeros(database):
    with session_scope(database) as session:
        summary = reports.summarize(session)

    assert summary.total == 0
    assert summary.success_rate == 0.0
    assert summary.requests_per_update == 0.0
    assert summary.by_outcome == []


def test_recent_rows_are_newest_first_and_filterable(database):
    insert(
        database,
        [
            row(Outcome.CONFIRMED, 10, user="agent-1"),
            row(Outcome.FAILED, 10, user="agent-2"),
            row(Outcome.CONFIRMED, 10, user="agent-2"),
        ],
    )

    with session_scope(database) as session:
        newest = reports.recent(session, limit=2)
        of_agent = reports.recent(session, user_id="agent-2")
        failed = reports.recent(session, outcome="failed")
        assert reports.count_rows(session) == 3

    assert [r.id for r in newest] == [3, 2]
    assert [r.outcome for r in of_agent] == ["confirmed", "failed"]
    assert [r.user_id for r in failed] == ["agent-2"]


def test_a_recent_window_is_served_by_the_finished_at_index(database):
    insert(database, [row(Outcome.CONFIRMED, 10, at=T0 - timedelta(minutes=m)) for m in range(50)])
    engine = engine_for(database)
    since = T0 - timedelta(minutes=5)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
            sql = str(reports._BY_MS_SQLITE)
            params: dict[str, object] = {
                "since_id": 0,
                "since": since.strftime("%Y-%m-%d %H:%M:%S.%f"),
            }
            plan = " ".join(
                str(r[3]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"), params)
            )
        else:
            conn.exec_driver_sql("ANALYZE presence_audit")
            conn.exec_driver_sql("SET enable_seqscan = off")  # a tiny table: ask what it can use
            sql = str(reports._SUMMARY_PG)
            params = {"since_id": 0, "since": since}
            plan = " ".join(str(r[0]) for r in conn.execute(text(f"EXPLAIN {sql}"), params))
    assert "ix_presence_audit_finished_at" in plan, plan


def test_summarize_of_one_org_counts_only_its_rows(database):
    insert(
        database,
        [
            row(Outcome.CONFIRMED, 100),
            row(Outcome.FAILED, 50),
            row(Outcome.CONFIRMED, 900, org="acme"),
            row(Outcome.CONFIRMED, 700, org="acme", at=T0 - timedelta(hours=2)),
        ],
    )

    with session_scope(database) as session:
        acme = reports.summarize(session, org="acme")
        recent_acme = reports.summarize(session, org="acme", since=T0 - timedelta(minutes=1))
        default = reports.summarize(session, org="default")
        every = reports.summarize(session)

    assert (acme.total, acme.success_rate) == (2, 1.0)
    assert acme.by_outcome[0].p99_ms == pytest.approx(900)
    assert recent_acme.total == 1
    assert (default.total, default.success_rate) == (2, 0.5)
    assert every.total == 4


def test_by_org_counts_requests_and_success_per_org_most_first(database):
    insert(
        database,
        [
            row(Outcome.CONFIRMED, 100, org="acme"),
            row(Outcome.FAILED, 100, org="acme"),
            row(Outcome.APPLIED_UNCONFIRMED, 100, org="acme"),
            row(Outcome.CONFIRMED, 100),
            row(Outcome.CONFIRMED, 100, org="globex", at=T0 - timedelta(hours=2)),
        ],
    )

    with session_scope(database) as session:
        every = reports.by_org(session)
        recent = reports.by_org(session, since=T0 - timedelta(minutes=1))

    assert [(c.org, c.total) for c in every] == [("acme", 3), ("default", 1), ("globex", 1)]
    assert every[0].success_rate == pytest.approx(2 / 3)
    assert [c.org for c in recent] == ["acme", "default"]


def test_recent_rows_of_one_org(database):
    insert(database, [row(Outcome.CONFIRMED, 10), row(Outcome.FAILED, 10, org="acme")])

    with session_scope(database) as session:
        rows = reports.recent(session, org="acme")
        assert [(r.org, r.outcome) for r in rows] == [("acme", "failed")]


def test_one_orgs_window_is_served_by_the_org_finished_at_index(database):
    insert(
        database,
        [
            row(Outcome.CONFIRMED, 10, at=T0 - timedelta(minutes=m), org=f"o{m % 5}")
            for m in range(50)
        ],
    )
    engine = engine_for(database)
    since = T0 - timedelta(minutes=5)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
            sql = str(reports._BY_MS_SQLITE_ORG)
            params: dict[str, object] = {
                "since_id": 0,
                "since": since.strftime("%Y-%m-%d %H:%M:%S.%f"),
                "org": "o1",
            }
            plan = " ".join(
                str(r[3]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"), params)
            )
        else:
            conn.exec_driver_sql("ANALYZE presence_audit")
            conn.exec_driver_sql("SET enable_seqscan = off")
            sql = str(reports._SUMMARY_PG_ORG)
            params = {"since_id": 0, "since": since, "org": "o1"}
            plan = " ".join(str(r[0]) for r in conn.execute(text(f"EXPLAIN {sql}"), params))
    assert "ix_presence_audit_org_finished_at" in plan, plan
