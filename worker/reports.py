"""Read-side queries over the audit table, shared by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from models import AuditRecord, Outcome

SUCCESS = {Outcome.CONFIRMED.value, Outcome.APPLIED_UNCONFIRMED.value}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered) / 100) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class OutcomeStats:
    outcome: str
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    success_rate: float
    genesys_requests: int
    requests_per_update: float
    by_outcome: list[OutcomeStats]


# Latency is request → terminal row in milliseconds, NULL without a request time. Nearest rank
# on both backends. PostgreSQL, in one pass: percentile_disc is the smallest value whose
# cumulative share reaches q — the nearest-rank definition of :func:`percentile` — and ignores
# NULL latencies, as the count does not; date_part's double precision sorts faster than
# EXTRACT's numeric.
_SUMMARY_PG_SQL = """
SELECT outcome, count(*), coalesce(sum(genesys_requests), 0),
       percentile_disc(ARRAY[0.5, 0.95, 0.99])
         WITHIN GROUP (ORDER BY date_part('epoch', finished_at - requested_at) * 1000)
FROM presence_audit WHERE id > :since_id AND finished_at >= :since{org}
GROUP BY outcome
"""
# SQLite has no percentile aggregate: one pass counts the rows of each outcome by latency
# rounded to the millisecond (julianday holds milliseconds; NULL without a request time), in
# order; the nearest ranks are then walked from those counts. What comes back is bounded by the
# distinct latencies, not by the rows.
# (The unary + keeps SQLite's planner on the finished_at index, which serves the window, rather
# than the outcome index or the rowid.)
_BY_MS_SQLITE_SQL = """
SELECT +outcome AS outcome,
       ROUND((julianday(finished_at) - julianday(requested_at)) * 86400000.0) AS ms,
       count(*), coalesce(sum(genesys_requests), 0)
FROM presence_audit WHERE +id > :since_id AND finished_at >= :since{org}
GROUP BY 1, 2 ORDER BY 1, 2
"""
# One org's rows only: its window is served by the (org, finished_at) index.
_ORG_FILTER = " AND org = :org"
_SUMMARY_PG = text(_SUMMARY_PG_SQL.format(org=""))
_SUMMARY_PG_ORG = text(_SUMMARY_PG_SQL.format(org=_ORG_FILTER))
_BY_MS_SQLITE = text(_BY_MS_SQLITE_SQL.format(org=""))
_BY_MS_SQLITE_ORG = text(_BY_MS_SQLITE_SQL.format(org=_ORG_FILTER))
EVERYTHING = datetime(1970, 1, 1, tzinfo=UTC)  # the window of "every row"
QUANTILES = (50, 95, 99)
NO_LATENCY: tuple[float | None, ...] = (None, None, None)


def nearest_rank(q: int, n: int) -> int:
    """The 1-based rank of the q-th percentile among ``n`` ordered values (nearest rank)."""
    return max(1, min(n, math.ceil(q * n / 100)))


# outcome → (rows, Genesys requests, (p50, p95, p99) of latency)
Aggregates = dict[str, tuple[int, int, tuple[float | None, ...]]]


def _aggregate(
    session: Session, since: datetime, since_id: int, org: str | None = None
) -> Aggregates:
    """Counts, Genesys requests and latency percentiles by outcome, computed in the database
    (one org's rows only, when ``org`` is given)."""
    dialect = session.get_bind().dialect.name
    filtered = org is not None
    if dialect == "postgresql":
        params: dict[str, object] = {"since_id": since_id, "since": since, "org": org}
        return {
            outcome: (int(n), int(calls), tuple(float(v) for v in values) if values else NO_LATENCY)
            for outcome, n, calls, values in session.execute(
                _SUMMARY_PG_ORG if filtered else _SUMMARY_PG, params
            )
        }
    if dialect != "sqlite":
        raise ValueError(f"presence stats supports PostgreSQL and SQLite, not {dialect}")
    # As SQLite stores it: UTC text, to the microsecond.
    params = {"since_id": since_id, "since": _sqlite_time(since), "org": org}
    totals: dict[str, tuple[int, int]] = {}
    by_ms: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for outcome, ms, n, calls in session.execute(
        _BY_MS_SQLITE_ORG if filtered else _BY_MS_SQLITE, params
    ):
        rows, requests = totals.get(outcome, (0, 0))
        totals[outcome] = (rows + int(n), requests + int(calls))
        if ms is not None:
            by_ms[outcome].append((float(ms), int(n)))
    return {
        outcome: (rows, requests, _ranked(by_ms[outcome]) if by_ms[outcome] else NO_LATENCY)
        for outcome, (rows, requests) in totals.items()
    }


def _sqlite_time(value: datetime) -> str:
    """``value`` (UTC) as SQLite stores it: text, to the microsecond."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _ranked(counts: list[tuple[float, int]]) -> tuple[float | None, ...]:
    """The nearest-rank percentiles of values given as (value, how many) in ascending order."""
    ranks = [nearest_rank(q, sum(n for _, n in counts)) for q in QUANTILES]
    out: list[float | None] = []
    seen = 0
    for value, n in counts:
        seen += n
        while len(out) < len(ranks) and ranks[len(out)] <= seen:
            out.append(value)
    return tuple(out)


def summarize(
    session: Session,
    *,
    since: datetime | None = None,
    since_id: int = 0,
    org: str | None = None,
) -> Summary:
    """Success rate, end-to-end latency percentiles by outcome, Genesys requests per update,
    over the rows finished at or after ``since`` (every row when None) with an id above
    ``since_id`` — of one org's requests when ``org`` is given, else of every org's.

    Latency is request → terminal row (``requested_at`` → ``finished_at``). Requests per
    update counts every Genesys call attributed to the updates that reached the platform.
    Everything is aggregated by the database (a recent window is served by the ``finished_at``
    index): memory does not grow with the table.
    """
    window = (since or EVERYTHING).astimezone(UTC)  # a naive ``since`` is taken as local time
    aggregates = _aggregate(session, window, since_id, org)
    counts = {outcome: n for outcome, (n, _, _) in aggregates.items()}
    calls = sum(c for _, c, _ in aggregates.values())
    applied = sum(n for o, n in counts.items() if o in SUCCESS or o == Outcome.DRIFTED.value)
    total = sum(counts.values())
    by_outcome = [
        OutcomeStats(outcome, counts[outcome], *aggregates[outcome][2])
        for outcome in sorted(counts, key=lambda o: (-counts[o], o))
    ]
    success = sum(counts.get(o, 0) for o in SUCCESS)
    return Summary(
        total=total,
        success_rate=success / total if total else 0.0,
        genesys_requests=calls,
        requests_per_update=calls / applied if applied else 0.0,
        by_outcome=by_outcome,
    )


@dataclass(frozen=True, slots=True)
class OrgCount:
    org: str
    total: int
    success_rate: float


def by_org(session: Session, *, since: datetime | None = None) -> list[OrgCount]:
    """Requests and success rate per org over the rows finished at or after ``since`` (every
    row when None), most requests first: one grouped count in the database."""
    window = (since or EVERYTHING).astimezone(UTC)
    success = AuditRecord.outcome.in_(sorted(SUCCESS))
    rows = session.execute(
        select(
            AuditRecord.org,
            func.count(),
            func.coalesce(func.sum(case((success, 1), else_=0)), 0),
        )
        .where(AuditRecord.finished_at >= window)
        .group_by(AuditRecord.org)
    ).all()
    counts = [OrgCount(org, int(n), int(ok) / int(n) if n else 0.0) for org, n, ok in rows]
    return sorted(counts, key=lambda c: (-c.total, c.org))


def count_rows(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def recent(
    session: Session,
    *,
    user_id: str | None = None,
    outcome: str | None = None,
    org: str | None = None,
    limit: int = 20,
) -> list[AuditRecord]:
    """The newest ``limit`` rows, of this agent, outcome and org when given."""
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if org is not None:
        query = query.where(AuditRecord.org == org)
    if user_id is not None:
        query = query.where(AuditRecord.user_id == user_id)
    if outcome is not None:
        query = query.where(AuditRecord.outcome == outcome)
    return list(session.scalars(query))
