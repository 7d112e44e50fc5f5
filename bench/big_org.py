"""Big-org and cold-start benchmarks at the real budget, beside the script a Genesys user would
write with the official Python SDK, all in one run.

Run: ``python -m bench.big_org`` (about 6 minutes; ``--changes 300`` for a shorter run). The
emulator holds an org of ``--org`` agents (default 2,500: three channels) and admits
``--budget`` requests per rolling minute (default 300, the platform's); two worker processes
(threads) share that budget. The changes go to agents past the first 1,000 and not On Queue (no
capacity rule applies; ``bench.capacity`` measures those).

(1) big org, warm: workers primed, the window emptied, then ``--changes`` single updates (default
    600) to agents past the first 1,000 (outside what one channel could hold).
(2) cold start: the same changes queued first, then both workers started together.
(3) the SDK script (``bench.sdk_script``): ``PresenceApi.patch_user_presences_purecloud`` for
    each change in a loop, sleeping ``Retry-After`` on a 429 — the loop a Genesys user would
    write; warm (its definitions read a minute before the clock starts) beside (1), cold (its
    own process started on the clock, interpreter, SDK import, token and definitions included,
    as the workers' start is in (2)) beside (2).

``--latency-ms`` adds that much to every answer of the emulator (which otherwise answers in
about a millisecond, far faster than a platform across a network): a loop sending one request
at a time slows with it, a fleet with calls in flight much less.

Physical minimum: the platform admits at most ``budget`` requests in any rolling 60 s, so of N
requests from an empty window the ``k * budget + 1``-th cannot be sent before ``k`` minutes
after the first: N requests span at least ``floor((N - 1) / budget)`` minutes, however fast
each is. For (1) and the warm SDK script N is one request per change; a cold start needs at
least the definitions call more (the fleet's other start-up calls, such as channels and the
priming listings, are counted in its requests per update): 600 changes at 300/min then need
two minutes, not one. Two times per run: the wall time, until the last audit row (the fleet's
rows follow each change's confirmation; the SDK script's end is its last response), and when
the platform applied the last change (the emulator's presence history, the same for both).
Results go to ``bench/results/big_org.json`` (``big_org-<N>ms.json`` with a latency).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from rich.console import Console
from sqlalchemy import func, select

from bench import sdk_script
from bench.pipeline import api_counts
from bench.report import Report
from emulator.launcher import EmulatorProcess
from models import AuditRecord
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from sandbox.stack import LocalStack

console = Console()
STATES = ("Available", "Busy", "Meeting", "Training")  # allowed from any state
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PROCESSES = 2
CHANNEL_TOPICS = 1000
LISTING_PAGE = 500


def emulator_args(org: int, budget: int) -> list[str]:
    return ["--users", str(org), "--queues", "4", "--rate-limit", str(budget), "--heartbeat", "5"]


def minimum_s(requests: int, budget: int) -> float:
    """The least time from the first to the last of ``requests`` in a rolling-minute window."""
    return max(0, requests - 1) // budget * 60.0


def add_latency(base_url: str, latency_ms: float) -> None:
    """Every API route of the emulator answers ``latency_ms`` later (± a quarter), as a platform
    further away than this machine does; nothing when 0."""
    if latency_ms > 0:
        fault = {"endpoint": "*", "latency_ms": latency_ms, "jitter_ms": latency_ms / 4}
        httpx.post(
            f"{base_url}/__emulator/faults/latency", json=fault, timeout=10
        ).raise_for_status()


def targets(base_url: str, count: int) -> list[str]:
    """``count`` active agents past the first 1,000 of the listing (beyond one channel), none On
    Queue: no change takes an agent off queue, so no capacity rule needs a read (its costs are
    ``bench.capacity``'s) and the requests measured are the ones every update needs."""
    users = httpx.get(f"{base_url}/__emulator/users", timeout=30).json()
    active = [u for u in users if u["state"] == "active"]
    pool = [u["id"] for u in active[CHANNEL_TOPICS:] if u["systemPresence"] != "On Queue"]
    assert len(pool) >= count, f"only {len(pool)} agents fit; use a larger --org"
    return pool[:count]


def changes_for(agents: list[str], count: int) -> list[PresenceUpdate]:
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    return [
        PresenceUpdate(
            user_id=agents[i % len(agents)],
            state=STATES[i % len(STATES)],
            requested_at=t0 + timedelta(microseconds=i),
            source="bench",
        )
        for i in range(count)
    ]


def applied_times(base_url: str, since: float, org: str | None = None) -> list[float]:
    """When the emulator applied each PATCH (of ``org``; the default org when None) at or after
    ``since`` (epoch seconds), oldest first: its presence history, exact."""
    params = {"org": org} if org not in (None, "default") else {}
    response = httpx.get(f"{base_url}/__emulator/history", params=params, timeout=60)
    response.raise_for_status()
    history = response.json()
    return sorted(
        e["timestamp"]
        for entries in history.values()
        for e in entries
        if e["path"] == "patch" and e["timestamp"] >= since
    )


def last_applied_s(base_url: str, since: float) -> float:
    """Seconds from ``since`` (epoch) to the last change the emulator applied: when the platform
    held every change, whatever the client did after."""
    times = applied_times(base_url, since)
    return times[-1] - since if times else 0.0


def rows(stack: LocalStack, source: str) -> int:
    with session_scope(stack.database_url) as session:
        query = select(func.count()).select_from(AuditRecord).where(AuditRecord.source == source)
        return int(session.execute(query).scalar_one())


def outcomes(stack: LocalStack) -> dict[str, int]:
    with session_scope(stack.database_url) as session:
        query = select(AuditRecord.outcome).where(AuditRecord.source == "bench")
        return dict(Counter(str(o) for (o,) in session.execute(query)))


def wait_rows(stack: LocalStack, source: str, expected: int, timeout_s: float) -> float:
    started = time.monotonic()
    while rows(stack, source) < expected:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"fewer than {expected} {source} rows after {timeout_s:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def run_workers(
    org: int, budget: int, changes: int, *, cold: bool, latency_ms: float = 0
) -> dict[str, Any]:
    env = {"RATE_LIMIT_PER_MINUTE": str(budget)}
    with LocalStack(
        emulator_args=emulator_args(org, budget), redis_url=REDIS_URL, redis_db=9, worker_env=env
    ) as stack:
        agents = stack.active_users()
        assert stack.emulator is not None
        add_latency(stack.emulator.base_url, latency_ms)
        chosen = targets(stack.emulator.base_url, changes)
        producer = PresenceProducer(stack.broker_url)
        if not cold:
            stack.start_workers(PROCESSES, concurrency=16)
            for user_id in agents[: PROCESSES * 4]:  # each process opens and primes its channels
                producer.send(
                    PresenceUpdate(
                        user_id=user_id,
                        state="Away",
                        requested_at=datetime.now(UTC),
                        source="warmup",
                    )
                )
            wait_rows(stack, "warmup", PROCESSES * 4, 120)
            time.sleep(61)  # an empty budget window, as for the SDK script
        before, _ = api_counts(dict(stack.emulator_stats()))
        started, since = time.monotonic(), time.time()
        producer.send_many(changes_for(chosen, changes))
        if cold:
            stack.start_workers(PROCESSES, concurrency=16)
        wait_rows(stack, "bench", changes, 600)
        wall = time.monotonic() - started
        applied = last_applied_s(stack.emulator.base_url, since)
        producer.close()
        after, rejected = api_counts(dict(stack.emulator_stats()))
        spent = after - before
        result = {
            "case": "cold start" if cold else "big org, warm",
            "org": org,
            "active": len(agents),
            "changes": changes,
            "wall_s": wall,
            "applied_s": applied,
            "requests": sum(spent.values()),
            "by_route": dict(spent),
            "presence_gets": spent.get("presence.get", 0),
            "rejected_429": rejected,
            "outcomes": outcomes(stack),
        }
    # Cold, the fleet needs at least the definitions call before any change, as the SDK does.
    result["physical_minimum_s"] = minimum_s(changes + (1 if cold else 0), budget)
    console.print(result)
    return result


def run_sdk(
    org: int, budget: int, changes: int, *, cold: bool = False, latency_ms: float = 0
) -> dict[str, Any]:
    with EmulatorProcess(args=emulator_args(org, budget)) as emulator:
        add_latency(emulator.base_url, latency_ms)
        chosen = targets(emulator.base_url, changes)
        pairs = [(u.user_id, u.state) for u in changes_for(chosen, changes)]
        if cold:
            run = {
                "base_url": emulator.base_url,
                "client_id": emulator.client_id,
                "client_secret": emulator.client_secret,
                "changes": pairs,
            }
            started, since = time.monotonic(), time.time()
            done = subprocess.run(
                [sys.executable, "-m", "bench.sdk_script"],
                input=json.dumps(run),
                capture_output=True,
                text=True,
                check=True,
            )
            wall = time.monotonic() - started
            retries = json.loads(done.stdout)["retries"]
        else:
            presence, definitions = sdk_script.connect(
                emulator.base_url, emulator.client_id, emulator.client_secret
            )
            time.sleep(61)  # the definitions call leaves the window
            started, since = time.monotonic(), time.time()
            retries = sdk_script.patch_all(presence, definitions, pairs)
            wall = time.monotonic() - started
        applied = last_applied_s(emulator.base_url, since)
        stats = httpx.get(f"{emulator.base_url}/__emulator/stats").json()
        spent, rejected = api_counts(stats)
    requests = sum(spent.values()) - (0 if cold else 1)  # warm: definitions before the clock
    result = {
        "case": "SDK script, cold" if cold else "SDK script",
        "changes": changes,
        "wall_s": wall,
        "applied_s": applied,
        "requests": requests,
        "rejected_429": rejected,
        "retries": retries,
        "physical_minimum_s": minimum_s(requests, budget),
    }
    console.print(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--org", type=int, default=2500, help="agents in the org")
    parser.add_argument("--budget", type=int, default=300, help="requests per rolling minute")
    parser.add_argument("--changes", type=int, default=600, help="single changes per run")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="added to every API answer (± a quarter); 0: the emulator's own, about 1 ms",
    )
    args = parser.parse_args()
    lag = args.latency_ms
    report = Report()
    sdk_runs = {
        False: run_sdk(args.org, args.budget, args.changes, latency_ms=lag),
        True: run_sdk(args.org, args.budget, args.changes, cold=True, latency_ms=lag),
    }
    runs = [
        run_workers(args.org, args.budget, args.changes, cold=False, latency_ms=lag),
        run_workers(args.org, args.budget, args.changes, cold=True, latency_ms=lag),
    ]
    for run in runs:
        sdk_run = sdk_runs[run["case"] == "cold start"]
        minimum = run["physical_minimum_s"]
        report.add(
            f"{run['case']}: wall (physical minimum {minimum:.1f} s)",
            f"{run['wall_s']:.1f} s",
            f"{sdk_run['wall_s']:.1f} s SDK script",
            f"{run['wall_s'] / minimum:.2f} of minimum" if minimum else "-",
        )
        report.add(
            f"{run['case']}: last change applied (platform's history)",
            f"{run['applied_s']:.1f} s",
            f"{sdk_run['applied_s']:.1f} s SDK script",
            f"{run['applied_s'] / minimum:.2f} of minimum" if minimum else "-",
        )
        report.add(
            f"{run['case']}: requests per update ({run['presence_gets']} presence GETs)",
            f"{run['requests'] / run['changes']:.3f}",
            f"{sdk_run['requests'] / sdk_run['changes']:.3f} SDK script",
            f"{run['rejected_429']} 429s (SDK {sdk_run['rejected_429']})",
        )
    report.data = {"sdk": list(sdk_runs.values()), "runs": runs, "args": vars(args)}
    title = "big org and cold start at the real budget" + (
        f", {lag:g} ms per answer" if lag else ""
    )
    report.publish(console, title, f"big_org-{lag:g}ms" if lag else "big_org")


if __name__ == "__main__":
    main()
