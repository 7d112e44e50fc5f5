"""Shift-wave benchmark: 10,000 agents set On Queue by one scheduled shift change.

Run: ``python -m bench.wave`` (about 4 minutes; ``--quick`` is a smoke run of 1,000 agents
without the saturated-budget preparation, so its ratios are not meaningful). Results go to
``bench/results/wave.json``; the exit status is 1 when any agent lacks an audit row or the
emulator answered any 429.

One ``LocalStack``: the emulator with 10,400 users (about 3 % are seeded inactive or deleted:
10,076 active, the wave's 10,000 and a few spares), the platform limit at 300 per rolling minute and a bulk PUT of at most 50 agents; 2
worker processes x 8 threads with ``RATE_LIMIT_PER_MINUTE=300``; celery beat dispatching due
shift changes every second. Each wave is 10,000 ``ShiftChange`` rows due "now" (target On
Queue: no read of the current presence, no capacity guard), inserted straight into the audit
database; the dispatcher claims them at its next tick (≤ 1 s later) and sends ``presence.wave``
tasks of 1,000 agents. Before the first wave, warm-up updates give each worker process its
token, definitions and a connected socket primed with the first 1,000 active agents.

Wall time of a wave: the claim (the rows' ``dispatched_at``) → the last audit row of its request
ids (``shift-<id>``). Baseline: the physical minimum, 10,000 / 50 bulk PUTs at 300/min = 40 s.

(B) idle budget — the wave right after start-up: the platform's rolling window admits its ~210
    calls at once, so the wave is bound by CPU here, not by the budget (a ratio below 1 is
    possible and says nothing about the budget).
(A) saturated budget — the honest comparison with the physical minimum: before the rows become
    due, the bench process spends the whole budget for 60 s at an even 5 requests/s through the
    workers' own limiter and token (``GET /api/v2/users/{id}`` of a spare agent), until the
    claim; the wave then starts with a full window and can only go as fast as old calls age out.
    Goal: wall ÷ 40 s ≤ 1.15 with zero 429s and every agent audited.
(C) singles — the same change as one ``presence.update`` (PATCH) per agent, scaled down to 250
    agents of the wave (their presence is cached, so no reads either) with the window saturated
    by (A); enqueue → last audit row, extrapolated linearly to 10,000 agents.

Per scenario, from the emulator's counters: 429s, bulk PUTs, other calls (subscriptions, reads),
requests per agent, the highest count in a rolling minute (sampled); from the audit rows:
outcomes, due → audited p50/p99, limiter waits and confirmation times; from the shift rows: the
worst dispatch lateness.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from sqlalchemy import func, insert, select

from bench.report import Report
from models import AuditRecord, ShiftChange, ShiftStatus
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from sandbox.stack import LocalStack
from worker.genesys.client import recording
from worker.limiter import BudgetExhausted
from worker.reports import SUCCESS, percentile
from worker.runtime import Runtime
from worker.settings import Settings

console = Console(width=max(Console().width, 140))

BUDGET = 300  # requests per rolling minute: the default budget
BULK_MAX = 50  # agents per bulk PUT: the platform's maximum and BULK_BATCH_SIZE's default
TARGET = "On Queue"  # needs no read of the current presence and never consults the capacity guard
WARM_UP_AGENTS = 4
WORKERS, THREADS = 2, 8
BURN_S = 60.0  # a whole rolling window of even traffic before scenario (A)
EXCLUDED = ("admin.", "oauth.", "wfm.", "notifications.socket")  # not platform API calls
BURN_ROUTE = "users.get"  # the burn's route; no wave or single uses it
BULK_PUT = "presence.bulk_put"


def physical_minimum_s(agents: int) -> float:
    """Bulk PUTs needed at the budget's even pace: the floor for any wave of ``agents``."""
    return math.ceil(agents / BULK_MAX) / (BUDGET / 60)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def admin(stack: LocalStack, path: str) -> Any:
    assert stack.emulator is not None
    response = httpx.get(f"{stack.emulator.base_url}/__emulator{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def api_counts(stats: dict[str, Any]) -> Counter[tuple[str, str]]:
    """(route, status) → requests, platform API routes only."""
    out: Counter[tuple[str, str]] = Counter()
    for route, by_status in stats["requests"].items():
        if not route.startswith(EXCLUDED):
            for status, count in by_status.items():
                out[(route, status)] += count
    return out


class PeakSampler:
    """The highest count of the emulator's rolling window seen while running (every 0.25 s)."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            tokens = admin(self.stack, "/stats")["tokens"]
            self.peak = max([self.peak, *(int(t["currentPerMinute"]) for t in tokens)])
            self._stop.wait(0.25)


# -- the saturating load ---------------------------------------------------------------------------
class Burn:
    """Even traffic at the budget's pace through the workers' limiter and token, in a thread.

    ``clean_s`` is how long it has run without waiting for the limiter: after 60 clean seconds
    the rolling window holds exactly one budget of its calls, evenly spread.
    """

    def __init__(self, runtime: Runtime, target: str) -> None:
        self.runtime = runtime
        self.path = f"/api/v2/users/{target}"
        self.period = 60 / BUDGET
        self.calls = 0
        self.stalls = 0
        self.clean_since = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def clean_s(self) -> float:
        return time.monotonic() - self.clean_since

    def start(self) -> None:
        self.clean_since = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            with recording() as log:
                try:
                    self.runtime.client.call("GET", self.path)
                except BudgetExhausted as exc:  # the window is still full of earlier traffic
                    self.stalls += 1
                    self._stop.wait(exc.retry_in_s)
                    self.clean_since = next_at = time.monotonic()
                    continue
            self.calls += 1
            if log.limiter_wait_s > self.period / 2:
                self.stalls += 1
                self.clean_since = time.monotonic()
            next_at = max(next_at + self.period, time.monotonic())


# -- the stack -------------------------------------------------------------------------------------
def audited(stack: LocalStack, source: str) -> int:
    with session_scope(stack.database_url) as session:
        count = session.scalar(
            select(func.count()).select_from(AuditRecord).where(AuditRecord.source == source)
        )
    return int(count or 0)


def wait_audited(stack: LocalStack, source: str, expected: int, timeout_s: float) -> int:
    """Audit rows of ``source`` once ``expected`` are there, or whatever is there at timeout."""
    deadline = time.monotonic() + timeout_s
    while (count := audited(stack, source)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def warm_up(stack: LocalStack, producer: PresenceProducer, agents: list[str]) -> bool:
    """Updates to ``agents`` until every worker process holds a connected socket (and so has its
    token, definitions and channel) and has primed it with the first 1,000 active agents, so
    that none of the start-up lands in a wave. ``agents`` must be among those 1,000: a process
    whose channel carries another agent when it primes fails to prime (a 400, 1,001+ topics).
    Returns whether both processes primed (priming is given 30 s after both connect)."""
    deadline = time.monotonic() + 120
    connected_at: float | None = None
    sent = 0
    while time.monotonic() < deadline:
        for agent in agents:
            producer.send(
                PresenceUpdate(
                    user_id=agent, state=TARGET, requested_at=datetime.now(UTC), source="warm-up"
                )
            )
            sent += 1
        time.sleep(2)
        channels = [c for c in admin(stack, "/channels") if c["connected"]]
        if len(channels) < WORKERS:
            continue
        connected_at = connected_at or time.monotonic()
        primed = all(c["topics"] >= 1000 for c in channels)
        if (primed or time.monotonic() - connected_at > 30) and wait_audited(
            stack, "warm-up", sent, 60
        ) >= sent:
            return primed
    raise TimeoutError(f"the workers' sockets never connected; logs in {stack.workdir}")


def schedule(stack: LocalStack, agents: list[str], source: str) -> datetime:
    """One ShiftChange per agent, due now; returns the due time."""
    now = datetime.now(UTC)
    rows = [
        {
            "user_id": agent,
            "due_at": now,
            "state": TARGET,
            "reason": None,
            "capacity_policy": "reject",
            "source": source,
            "status": ShiftStatus.SCHEDULED.value,
            "created_at": now,
            "dispatches": 0,
        }
        for agent in agents
    ]
    with session_scope(stack.database_url) as session:
        session.execute(insert(ShiftChange), rows)
    return now


def first_claim(stack: LocalStack, source: str) -> datetime | None:
    with session_scope(stack.database_url) as session:
        claimed = session.scalar(
            select(func.min(ShiftChange.dispatched_at)).where(ShiftChange.source == source)
        )
    return _aware(claimed) if claimed is not None else None


# -- measuring -------------------------------------------------------------------------------------
def traffic(before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]) -> dict[str, Any]:
    """What the platform saw between two snapshots, the burn's route left out."""
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    calls = {k: v for k, v in delta.items() if k[0] != BURN_ROUTE}
    by_route: Counter[str] = Counter()
    for (route, _), count in calls.items():
        by_route[route] += count
    too_many = sum(v for (_, status), v in delta.items() if status == "429")
    return {
        "requests": sum(calls.values()),
        "bulk_puts": by_route[BULK_PUT],
        "patches": by_route["presence.patch"],
        "by_route": dict(by_route),
        "rejected_429": too_many,
    }


def audit_figures(stack: LocalStack, source: str) -> dict[str, Any]:
    with session_scope(stack.database_url) as session:
        rows = session.execute(
            select(
                AuditRecord.request_id,
                AuditRecord.outcome,
                AuditRecord.requested_at,
                AuditRecord.started_at,
                AuditRecord.finished_at,
                AuditRecord.genesys_requests,
                AuditRecord.limiter_wait_ms,
                AuditRecord.confirm_ms,
                AuditRecord.worker,
                AuditRecord.attempts,
            ).where(AuditRecord.source == source)
        ).all()
    latencies = [
        (_aware(r.finished_at) - _aware(r.requested_at)).total_seconds() * 1000
        for r in rows
        if r.requested_at is not None
    ]
    charged = [r for r in rows if r.genesys_requests]  # a wave charges its batch to one row
    confirms = [r.confirm_ms for r in rows if r.confirm_ms is not None]
    waits = [r.limiter_wait_ms or 0.0 for r in charged]
    return {
        "request_ids": {r.request_id for r in rows},
        "outcomes": dict(Counter(r.outcome for r in rows)),
        "applied": sum(1 for r in rows if r.outcome in SUCCESS),
        "first_started": min((_aware(r.started_at) for r in rows if r.started_at), default=None),
        "last_finished": max((_aware(r.finished_at) for r in rows), default=None),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "audit_genesys_requests": sum(r.genesys_requests for r in rows),
        "charged_rows": len(charged),
        "limiter_wait_ms_mean": sum(waits) / len(waits) if waits else None,
        "limiter_wait_ms_max": max(waits, default=None),
        "confirm_p50_ms": percentile(confirms, 50),
        "confirm_max_ms": max(confirms, default=None),
        "task_runs": len({(r.worker, r.started_at) for r in rows}),
        "retried_rows": sum(1 for r in rows if r.attempts > 1),
    }


def lateness(stack: LocalStack, source: str) -> tuple[float | None, dict[str, int]]:
    with session_scope(stack.database_url) as session:
        worst = session.scalar(
            select(func.max(ShiftChange.lateness_ms)).where(ShiftChange.source == source)
        )
        statuses = session.execute(
            select(ShiftChange.status, func.count())
            .where(ShiftChange.source == source)
            .group_by(ShiftChange.status)
        ).all()
    return worst, {status: count for status, count in statuses}


def run_wave(
    stack: LocalStack, agents: list[str], source: str, timeout_s: float, burn: Burn | None
) -> dict[str, Any]:
    """Schedule a wave due now, wait until it is audited; its figures. With ``burn`` running,
    the burn is stopped as soon as the claim is seen (the window is full when the wave starts)."""
    before = api_counts(admin(stack, "/stats"))
    with PeakSampler(stack) as sampler:
        due = schedule(stack, agents, source)
        deadline = time.monotonic() + 30
        while (claimed := first_claim(stack, source)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the wave was never claimed; logs in {stack.workdir}")
            time.sleep(0.02)
        burn_overlap_s = None
        if burn is not None:
            burn.stop()
            burn_overlap_s = (datetime.now(UTC) - claimed).total_seconds()
        count = wait_audited(stack, source, len(agents), timeout_s)
        after = api_counts(admin(stack, "/stats"))
    figures = audit_figures(stack, source)
    worst, statuses = lateness(stack, source)
    with session_scope(stack.database_url) as session:
        ids = session.scalars(select(ShiftChange.id).where(ShiftChange.source == source)).all()
    missing = {f"shift-{i}" for i in ids} - figures.pop("request_ids")
    last = figures["last_finished"]
    wall = (last - claimed).total_seconds() if last is not None else None
    calls = traffic(before, after)
    first_started = figures["first_started"]
    return {
        "agents": len(agents),
        "due_at": due,
        "claimed_at": claimed,
        "wall_s": wall,
        "physical_minimum_s": physical_minimum_s(len(agents)),
        "ratio": wall / physical_minimum_s(len(agents)) if wall is not None else None,
        "audited": count,
        "missing_audit_rows": len(missing),
        "claim_to_first_task_s": (first_started - claimed).total_seconds()
        if first_started
        else None,
        "max_lateness_ms": worst,
        "shift_statuses": statuses,
        "peak_per_rolling_minute": sampler.peak,
        "requests_per_agent": calls["requests"] / len(agents),
        "burn_overlap_after_claim_s": burn_overlap_s,
        **calls,
        **figures,
    }


def run_singles(
    stack: LocalStack, producer: PresenceProducer, agents: list[str], timeout_s: float
) -> dict[str, Any]:
    source = "bench-singles"
    before = api_counts(admin(stack, "/stats"))
    with PeakSampler(stack) as sampler:
        started = datetime.now(UTC)
        now = datetime.now(UTC)
        ids = producer.send_many(
            PresenceUpdate(user_id=a, state=TARGET, requested_at=now, source=source) for a in agents
        )
        count = wait_audited(stack, source, len(agents), timeout_s)
        after = api_counts(admin(stack, "/stats"))
    figures = audit_figures(stack, source)
    missing = set(ids) - figures.pop("request_ids")
    last = figures["last_finished"]
    wall = (last - started).total_seconds() if last is not None else None
    calls = traffic(before, after)
    return {
        "agents": len(agents),
        "wall_s": wall,
        "audited": count,
        "missing_audit_rows": len(missing),
        "peak_per_rolling_minute": sampler.peak,
        "requests_per_agent": calls["requests"] / len(agents),
        **calls,
        **figures,
    }


# -- reporting -------------------------------------------------------------------------------------
def _s(value: float | None) -> str:
    return f"{value:,.1f} s" if value is not None else "-"


def _ms(value: float | None) -> str:
    return f"{value:,.0f} ms" if value is not None else "-"


def _outcomes(result: dict[str, Any]) -> str:
    parts = ", ".join(f"{n:,} {o}" for o, n in sorted(result["outcomes"].items()))
    return f"{result['audited']:,} of {result['agents']:,} ({parts or 'none'})"


def add_wave(report: Report, label: str, result: dict[str, Any], quick: bool) -> None:
    minimum = result["physical_minimum_s"]
    ratio = result["ratio"]
    note = " (quick: not meaningful)" if quick else ""
    other = result["requests"] - result["bulk_puts"]
    routes = ", ".join(f"{n} {r}" for r, n in sorted(result["by_route"].items()) if r != BULK_PUT)
    report.add(
        f"{label}: wall, claim → last audit row",
        _s(result["wall_s"]),
        f"{minimum:.1f} s physical minimum ({math.ceil(result['agents'] / BULK_MAX)} PUTs at "
        f"{BUDGET // 60}/s)",
        (f"{ratio:.3f}" if ratio is not None else "-") + note,
    )
    report.add(
        f"{label}: Genesys requests",
        f"{result['requests']:,} = {result['bulk_puts']} bulk PUT + {other} other"
        + (f" ({routes})" if routes else "")
        + f"; {result['requests_per_agent']:.4f}/agent",
        f"{math.ceil(result['agents'] / BULK_MAX)} bulk PUTs",
        f"{result['requests'] / math.ceil(result['agents'] / BULK_MAX):.3f}",
    )
    report.add(
        f"{label}: 429s, peak in a rolling minute",
        f"{result['rejected_429']} x 429, peak {result['peak_per_rolling_minute']} of {BUDGET}",
        "0 x 429",
        "-",
    )
    report.add(f"{label}: audited", _outcomes(result), "every agent", "-")
    report.add(
        f"{label}: due → audited p50 / p99; worst lateness",
        f"{_ms(result['latency_p50_ms'])} / {_ms(result['latency_p99_ms'])}; "
        f"{_ms(result['max_lateness_ms'])}",
        "-",
        "-",
    )


def add_singles(
    report: Report, result: dict[str, Any], wave: dict[str, Any], agents: int, quick: bool
) -> None:
    wall = result["wall_s"]
    scale = agents / result["agents"]
    extrapolated = wall * scale if wall is not None else None
    result["extrapolated_to"] = agents
    result["extrapolated_wall_s"] = extrapolated
    note = " (quick: not meaningful)" if quick else ""
    report.add(
        f"(C) singles: {result['agents']} PATCHes, enqueue → last audit row",
        f"{_s(wall)}; {result['requests']:,} requests ({result['requests_per_agent']:.3f}/agent), "
        f"{result['rejected_429']} x 429",
        "-",
        "-",
    )
    report.add(
        f"(C) singles, extrapolated x{scale:g} to {agents:,} agents",
        _s(extrapolated),
        f"{_s(wave['wall_s'])} the wave (A)",
        (f"{extrapolated / wave['wall_s']:.1f}" if extrapolated and wave["wall_s"] else "-") + note,
    )
    report.add("(C) singles: audited", _outcomes(result), "every agent", "-")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 agents, no burn")
    args = parser.parse_args()
    agents_n, singles_n = (1000, 25) if args.quick else (10_000, 250)
    users = 1100 if args.quick else 10_400  # ~97 % of the seeded users are active
    timeout_s = 120.0 if args.quick else 300.0
    emulator_args = [
        "--users", str(users), "--queues", "20", "--rate-limit", str(BUDGET),
        "--bulk-max", str(BULK_MAX), "--heartbeat", "5",
    ]  # fmt: skip
    env = {
        "RATE_LIMIT_PER_MINUTE": str(BUDGET),
        "BULK_BATCH_SIZE": str(BULK_MAX),
        "SHIFT_DISPATCH_INTERVAL_S": "1",
    }
    report = Report()
    report.data.update(quick=args.quick, budget_per_min=BUDGET, bulk_max=BULK_MAX, target=TARGET)
    producer: PresenceProducer | None = None
    stack = LocalStack(emulator_args=emulator_args, redis_db=11, worker_env=env)
    try:
        stack.start()
        active = stack.active_users()
        if len(active) < agents_n + 1:
            raise RuntimeError(f"only {len(active)} active agents for {agents_n}")
        agents, spares = active[:agents_n], active[agents_n:]
        burn_target, warm = spares[0], agents[:WARM_UP_AGENTS]  # warm: in the primed 1,000
        stack.start_workers(WORKERS, concurrency=THREADS)
        stack.start_beat()
        producer = PresenceProducer(stack.broker_url)
        report.data["primed"] = warm_up(stack, producer, warm)
        console.print(f"workers ready; logs in {stack.workdir}")

        idle = run_wave(stack, agents, "bench-wave-idle", timeout_s, None)
        console.print(f"(B) idle budget: {_s(idle['wall_s'])}")

        runtime = Runtime.build(
            Settings.model_validate({k.lower(): v for k, v in stack.env.items()})
        )
        burn = Burn(runtime, burn_target)
        if not args.quick:
            burn.start()
            while burn.clean_s < BURN_S:  # the window holds one even minute of burn calls
                time.sleep(0.1)
        console.print(f"budget burnt: {burn.calls} calls, {burn.stalls} stalls")
        saturated = run_wave(
            stack, agents, "bench-wave-saturated", timeout_s, None if args.quick else burn
        )
        saturated["burn_calls"] = burn.calls
        console.print(f"(A) saturated budget: {_s(saturated['wall_s'])}")

        rng = random.Random(7)
        singles = run_singles(stack, producer, rng.sample(agents, singles_n), timeout_s)
        console.print(f"(C) singles: {_s(singles['wall_s'])}")
        total_429 = int(admin(stack, "/stats")["tooManyRequests"])
    finally:
        if producer is not None:
            producer.close()
        stack.close()  # beat included

    label = "no burn in --quick" if args.quick else "saturated budget"
    add_wave(report, f"(A) wave {agents_n:,}, {label}", saturated, args.quick)
    add_wave(report, f"(B) wave {agents_n:,}, idle budget", idle, args.quick)
    add_singles(report, singles, saturated, agents_n, args.quick)
    report.data.update(saturated=saturated, idle=idle, singles=singles, total_429=total_429)
    title = "shift wave benchmark" + (" (quick: ratios not meaningful)" * args.quick)
    report.publish(console, title, "wave")
    missing = sum(r["missing_audit_rows"] for r in (saturated, idle, singles))
    if missing or total_429:
        console.print(f"[red]FAILED: {missing} agent(s) without an audit row, {total_429} x 429")
        sys.exit(1)


if __name__ == "__main__":
    main()
