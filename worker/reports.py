"""Read-side queries over the audit table, shared by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
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


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    if start.tzinfo is None and end.tzinfo is not None:
        end = end.replace(tzinfo=None)
    elif end.tzinfo is None and start.tzinfo is not None:
        start = start.replace(tzinfo=None)
    return (end - start).total_seconds() * 1000


def summarize(session: Session, *, since_id: int = 0) -> Summary:
    """Success rate, end-to-end latency percentiles by outcome, Genesys requests per update.

    Latency is request → terminal row (``requested_at`` → ``finished_at``). Requests per
    update counts every Genesys call attributed to the updates that reached the platform.
    """
    rows = session.execute(
        select(
            AuditRecord.outcome,
            AuditRecord.requested_at,
            AuditRecord.finished_at,
            AuditRecord.genesys_requests,
        ).where(AuditRecord.id > since_id)
    ).all()
    latencies: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    calls = 0
    applied = 0
    for outcome, requested, finished, requests in rows:
        counts[outcome] += 1
        calls += requests or 0
        if outcome in SUCCESS or outcome == Outcome.DRIFTED.value:
            applied += 1
        latency = _ms(requested, finished)
        if latency is not None:
            latencies[outcome].append(latency)
    total = len(rows)
    by_outcome = [
        OutcomeStats(
            outcome,
            counts[outcome],
            percentile(latencies[outcome], 50),
            percentile(latencies[outcome], 95),
            percentile(latencies[outcome], 99),
        )
        for outcome in sorted(counts, key=lambda o: -counts[o])
    ]
    success = sum(counts[o] for o in SUCCESS)
    return Summary(
        total=total,
        success_rate=success / total if total else 0.0,
        genesys_requests=calls,
        requests_per_update=calls / applied if applied else 0.0,
        by_outcome=by_outcome,
    )


def count_rows(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def recent(
    session: Session, *, user_id: str | None = None, outcome: str | None = None, limit: int = 20
) -> list[AuditRecord]:
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(AuditRecord.user_id == user_id)
    if outcome is not None:
        query = query.where(AuditRecord.outcome == outcome)
    return list(session.scalars(query))
