"""Pipeline benchmarks: throughput, budget utilisation, requests per update, latency.

Run: ``python -m bench.pipeline`` (about 4 minutes; ``--quick`` shortens the budget runs to a
smoke test whose utilisation numbers are not meaningful). Every figure is compared with a
baseline measured in the same run; results go to ``bench/results/pipeline.json``.

(a) throughput — the whole pipeline (2 worker processes, emulator limit off) vs a raw
    sequential PATCH loop on one keep-alive connection to the same emulator.
(b) budget utilisation — requests the emulator admitted per minute ÷ the configured budget, over
    ≥ 60 s with 2 worker processes and more demand than budget; 429s counted. Beside it, Celery's
    per-worker ``rate_limit`` set to the same total.
(c) Genesys requests per applied update — over the whole run (start-up included) and in steady
    state (audit rows after the first 15 s).
(d) enqueue → confirmed latency, p50 and p99, at a steady 20 updates/s with the limit off.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from rich.console import Console
from sqlalchemy import select

from bench.report import Report
from models import AuditRecord
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from sandbox.stack import LocalStack
from worker.reports import SUCCESS, count_rows, percentile

console = Console()
STATES = ("On Queue", "Available", "Busy", "Meeting")  # any of these may follow any other
OFF_QUEUE_STATES = ("Available", "Busy", "Meeting", "Training")  # allowed from any state
UNLIMITED = "1000000"


def updates_for(
    agents: list[str], count: int, rng: random.Random, *, states: tuple[str, ...] = STATES
) -> list[PresenceUpdate]:
    """``count`` updates spread over ``agents``, each agent's requests in time order."""
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    out = []
    for i in range(count):
        out.append(
            PresenceUpdate(
                user_id=agents[i % len(agents)],
                state=rng.choice(states),
                requested_at=t0 + timedelta(microseconds=i),
                source="bench",
            )
        )
    return out


def wait_rows(stack: LocalStack, expected: int, timeout_s: float) -> float:
    """Seconds until the audit table holds ``expected`` rows; raises TimeoutError."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with session_scope(stack.database_url) as session:
            if count_rows(session) >= expected:
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {expected} audit rows after {timeout_s:.0f} s")


def api_counts(stats: dict[str, Any]) -> tuple[Counter[str], int]:
    """Admitted platform requests by route, and 429 answers, from the emulator's counters (its
    admin, OAuth and WFM-sink routes are not the platform's API)."""
    admitted: Counter[str] = Counter()
    rejected = 0
    for route, by_status in stats["requests"].items():
        if route.startswith(("admin.", "oauth.", "wfm.")):
            continue
        for status, count in by_status.items():
            if status == "429":
                rejected += int(count)
            else:
                admitted[route] += int(count)
    return admitted, rejected


def api_requests(stats: dict[str, Any]) -> tuple[int, int]:
    """(admitted platform API requests, 429 answers) from the emulator's counters."""
    admitted, rejected = api_counts(stats)
    return sum(admitted.values()), rejected


# -- (a) throughput --------------------------------------------------------------------------------
def raw_patch_loop(
    base_url: str, client_id: str, secret: str, agents: list[str], count: int
) -> tuple[float, list[float]]:
    """PATCH/s and per-call latencies (ms) of a sequential loop on one keep-alive connection."""
    token = httpx.post(
        f"{base_url}/oauth/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials"},
    ).json()["access_token"]
    definitions = httpx.get(
        f"{base_url}/api/v2/presence/definitions", headers={"Authorization": f"Bearer {token}"}
    ).json()["entities"]
    ids = [d["id"] for d in definitions if d["type"] == "System"][:4]
    latencies = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        started = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            http.patch(
                f"/api/v2/users/{agents[i % len(agents)]}/presences/purecloud",
                json={"presenceDefinition": {"id": ids[i % len(ids)]}},
            ).raise_for_status()
            latencies.append((time.perf_counter() - t) * 1000)
        elapsed = time.perf_counter() - started
    return count / elapsed, latencies


def bench_throughput(report: Report, updates: int) -> None:
    args = ["--users", "600", "--queues", "4", "--rate-limit", "0", "--heartbeat", "5"]
    with LocalStack(
        emulator_args=args, redis_db=12, worker_env={"RATE_LIMIT_PER_MINUTE": UNLIMITED}
    ) as stack:
        assert stack.emulator is not None
        agents = stack.active_users()
        raw_rate, raw_latencies = raw_patch_loop(
            stack.emulator.base_url, stack.client_id, stack.client_secret, agents, updates
        )
        stack.start_workers(2, concurrency=16)
        time.sleep(2)  # let both processes open their channel and prime
        producer = PresenceProducer(stack.broker_url)
        batch = updates_for(agents, updates, random.Random(1))
        started = time.monotonic()
        producer.send_many(batch)
        elapsed = wait_rows(stack, updates, 300)
        producer.close()
        with session_scope(stack.database_url) as session:
            outcomes = [o for (o,) in session.execute(select(AuditRecord.outcome))]
    rate = updates / elapsed
    report.add(
        "(a) pipeline updates/s (2 workers, limit off)",
        f"{rate:,.0f}",
        f"{raw_rate:,.0f} raw PATCH/s",
        f"{rate / raw_rate:.2f}",
    )
    report.data["throughput"] = {
        "updates": updates,
        "pipeline_updates_per_s": rate,
        "raw_patch_per_s": raw_rate,
        "ratio": rate / raw_rate,
        "raw_patch_p50_ms": percentile(raw_latencies, 50),
        "confirmed_share": sum(1 for o in outcomes if o in SUCCESS) / len(outcomes),
        "enqueue_s": time.monotonic() - started - elapsed,
    }


# -- (b) + (c) budget ------------------------------------------------------------------------------
def sample_admitted(
    stack: LocalStack, stop: threading.Event, samples: list[tuple[float, int, int]]
) -> None:
    while not stop.is_set():
        admitted, rejected = api_requests(stack.emulator_stats())
        samples.append((time.monotonic(), admitted, rejected))
        stop.wait(1.0)


def run_budget(budget: int, duration_s: float, *, celery_rate_limit: bool) -> dict[str, Any]:
    """Saturate the budget for ``duration_s`` with 2 workers; measure what the emulator admitted."""
    # At most one update per agent, so that no update is superseded by a newer one for its
    # agent and demand stays above the budget.
    args = ["--users", "900", "--queues", "4", "--rate-limit", str(budget), "--heartbeat", "5"]
    env = {
        "RATE_LIMIT_PER_MINUTE": UNLIMITED if celery_rate_limit else str(budget),
        "MAX_RETRIES": "20",
    }
    with LocalStack(emulator_args=args, redis_db=12, worker_env=env) as stack:
        assert stack.emulator is not None
        roster = httpx.get(f"{stack.emulator.base_url}/__emulator/users").json()
        # Agents not on queue, moved between presences that are not On Queue: the capacity
        # guard is never consulted (bench.capacity measures it on its own).
        agents = [u["id"] for u in roster if u["state"] == "active" and u["presence"] != "On Queue"]
        extra = {"BENCH_CELERY_RATE_LIMIT": f"{budget // 2}/m"} if celery_rate_limit else None
        app = "bench.celery_rate_limited" if celery_rate_limit else "worker.app"
        demand = min(len(agents), int(budget * duration_s / 60 * 1.3) + 50)
        producer = PresenceProducer(stack.broker_url)
        producer.send_many(updates_for(agents, demand, random.Random(2), states=OFF_QUEUE_STATES))
        producer.close()
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_admitted, args=(stack, stop, samples), daemon=True)
        sampler.start()
        stack.start_workers(2, concurrency=8, app=app, extra_env=extra)
        started = time.monotonic()
        time.sleep(duration_s)
        stop.set()
        sampler.join()
        measured = time.monotonic() - started
        stats = stack.emulator_stats()
        stack.stop_workers()
        admitted, rejected = api_requests(stats)
        steady_from = datetime.now(UTC) - timedelta(seconds=measured - 15)
        with session_scope(stack.database_url) as session:
            rows = session.execute(
                select(AuditRecord.outcome, AuditRecord.genesys_requests, AuditRecord.finished_at)
            ).all()
    applied = [r for r in rows if r.outcome in SUCCESS or r.outcome == "drifted"]
    steady = [r for r in applied if _aware(r.finished_at) >= steady_from]
    windows = rolling_minutes(samples)
    return {
        "budget_per_min": budget,
        "seconds": measured,
        "admitted": admitted,
        "rejected_429": rejected,
        "peak_per_min": stats["peakPerMinute"],
        "rolling_minutes_measured": len(windows),
        "utilisation": statistics.fmean(windows) / budget if windows else None,
        "utilisation_min": min(windows) / budget if windows else None,
        "updates_finished": len(rows),
        "requests_per_update_all": admitted / len(applied) if applied else None,
        "requests_per_update_steady": (
            sum(r.genesys_requests for r in steady) / len(steady) if steady else None
        ),
        "samples": len(samples),
    }


def rolling_minutes(samples: list[tuple[float, int, int]]) -> list[int]:
    """Requests admitted in each window of at most 60 s starting at a sample (1-s resolution)
    and ending inside the run: the platform's own measure, so the bursts a rolling window allows
    do not inflate the figure (a window a little under 60 s can only understate it)."""
    first = samples[0][1] if samples else 0
    samples = [s for s in samples if s[1] > first]  # from the first admitted request on
    out = []
    for i, (start, admitted_then, _) in enumerate(samples):
        if samples[-1][0] <= start + 60:
            break  # the window would end after the run
        end = max((s for s in samples[i:] if s[0] <= start + 60), key=lambda s: s[0])
        out.append(end[1] - admitted_then)
    return out


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def bench_budget(report: Report, budget: int, duration_s: float) -> None:
    ours = run_budget(budget, duration_s, celery_rate_limit=False)
    celery = run_budget(budget, duration_s, celery_rate_limit=True)
    report.add(
        f"(b) budget utilisation, mean of {ours['rolling_minutes_measured']} rolling minutes, 2 workers",
        f"{ours['utilisation']:.3f} (min {ours['utilisation_min']:.3f}; {ours['rejected_429']} 429s)",
        f"{celery['utilisation']:.3f} ({celery['rejected_429']} 429s) Celery rate_limit",
        f"{ours['utilisation'] / celery['utilisation']:.2f}" if celery["utilisation"] else "-",
    )
    report.add(
        "(b) peak requests in a rolling minute",
        f"{ours['peak_per_min']} of {budget}",
        f"{celery['peak_per_min']} of {budget}",
        "-",
    )
    steady = ours["requests_per_update_steady"]
    report.add(
        "(c) Genesys requests per applied update",
        f"{steady:.3f} steady" if steady else "-",
        f"{ours['requests_per_update_all']:.3f} incl. start-up"
        if ours["requests_per_update_all"]
        else "-",
        "-",
    )
    report.data["budget"] = {"shared_limiter": ours, "celery_rate_limit": celery}


# -- (d) latency -----------------------------------------------------------------------------------
def bench_latency(report: Report, rate_per_s: float, seconds: float) -> None:
    args = ["--users", "600", "--queues", "4", "--rate-limit", "0", "--heartbeat", "5"]
    with LocalStack(
        emulator_args=args, redis_db=12, worker_env={"RATE_LIMIT_PER_MINUTE": UNLIMITED}
    ) as stack:
        assert stack.emulator is not None
        agents = stack.active_users()
        _, raw = raw_patch_loop(
            stack.emulator.base_url, stack.client_id, stack.client_secret, agents, 200
        )
        stack.start_workers(2, concurrency=16)
        time.sleep(2)
        producer = PresenceProducer(stack.broker_url)
        count = int(rate_per_s * seconds)
        rng = random.Random(3)
        started = time.monotonic()
        for i in range(count):
            producer.send(
                PresenceUpdate(
                    user_id=agents[i % len(agents)], state=rng.choice(STATES),
                    requested_at=datetime.now(UTC), source="bench",
                )
            )  # fmt: skip
            time.sleep(max(0.0, started + (i + 1) / rate_per_s - time.monotonic()))
        producer.close()
        wait_rows(stack, count, 120)
        with session_scope(stack.database_url) as session:
            rows = session.execute(
                select(AuditRecord.requested_at, AuditRecord.finished_at).where(
                    AuditRecord.outcome == "confirmed"
                )
            ).all()
    latencies = [(_aware(f) - _aware(r)).total_seconds() * 1000 for r, f in rows if r is not None]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    raw50, raw99 = percentile(raw, 50), percentile(raw, 99)
    assert p50 is not None
    assert p99 is not None
    assert raw50 is not None
    assert raw99 is not None
    report.add(
        f"(d) enqueue → confirmed p50, {rate_per_s:.0f}/s",
        f"{p50:.1f} ms",
        f"{raw50:.1f} ms raw PATCH",
        f"{p50 / raw50:.1f}",
    )
    report.add(
        f"(d) enqueue → confirmed p99, {rate_per_s:.0f}/s",
        f"{p99:.1f} ms",
        f"{raw99:.1f} ms raw PATCH",
        f"{p99 / raw99:.1f}",
    )
    report.data["latency"] = {
        "rate_per_s": rate_per_s,
        "confirmed": len(latencies),
        "p50_ms": p50,
        "p99_ms": p99,
        "mean_ms": statistics.fmean(latencies),
        "raw_patch_p50_ms": raw50,
        "raw_patch_p99_ms": raw99,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=2000, help="updates for the throughput run")
    parser.add_argument("--budget", type=int, default=300, help="requests/min for the budget runs")
    parser.add_argument(
        "--seconds", type=float, default=75, help="length of each budget run (≥ 60)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: short and small")
    parser.add_argument("--only", choices=["a", "b", "d"], help="run one part")
    args = parser.parse_args()
    if args.quick:
        args.updates, args.seconds = 300, 65
    report = Report()
    if args.only in (None, "a"):
        bench_throughput(report, args.updates)
    if args.only in (None, "b"):
        bench_budget(report, args.budget, args.seconds)
    if args.only in (None, "d"):
        bench_latency(report, 20.0, 5 if args.quick else 15)
    report.data["quick"] = args.quick
    report.publish(console, "presence pipeline benchmarks", "pipeline")


if __name__ == "__main__":
    main()
