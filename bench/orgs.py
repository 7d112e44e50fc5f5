"""Several orgs on one fleet: each org's budget used to its physical limit, and an org that is far
over its budget never slowing another down.

Run: ``python -m bench.orgs`` (about 7 minutes; ``--quick`` is a smoke run of about 4 whose
figures are not the claim). Two worker processes (threads) serve every org from one orgs file
(``ORGS_FILE``); the emulator gives each org its own OAuth client and budget. Results go to
``bench/results/orgs.json``.

(i) three orgs at ``--budget`` requests per rolling minute each (default 300, the platform's),
    demand above budget in all three: workers primed, the window emptied, then ``--changes``
    single updates per org (default 600; one per agent, none On Queue, so every update needs
    exactly its PATCH). Per org: the span from the first to the last change the emulator applied
    for it (its presence history, exact; beside it the span of every admitted request, sampled
    every 0.25 s) against the physical minimum, and its 429s. The platform
    admits at most ``budget`` requests in any rolling 60 s, so N requests from an empty window
    span at least ``floor((N - 1) / budget)`` minutes however fast each is; N is what the
    emulator admitted for the org in the measured phase.
(ii) noisy neighbour: org ``b`` at ``--rate`` updates/s (default 2) for ``--seconds`` (default
    60), first alone, then while org ``a`` holds a backlog of ``--backlog`` updates (default
    10,000 over 2,500 agents, over half an hour of its budget). Org b's request → confirmed p50/p99 (audit rows:
    ``requested_at`` to ``finished_at``) under the neighbour beside the same load alone, same
    workers, same run.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from sqlalchemy import func, select

from bench.big_org import applied_times, minimum_s
from bench.pipeline import api_counts
from bench.report import Report
from models import AuditRecord
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from sandbox.orgs import send_to_org
from sandbox.stack import LocalStack
from worker.reports import percentile

console = Console()
STATES = ("Available", "Busy", "Meeting", "Training")  # allowed from any state, none On Queue
PROCESSES = 2
CONCURRENCY = 16
REDIS_DB = 14
WARM_UP_PER_PROCESS = 4


@dataclass(frozen=True)
class Target:
    """An agent to change and the state to change it to (never the state it shows)."""

    user_id: str
    state: str


def targets(stack: LocalStack, org: str, count: int, *, skip: int = 0) -> list[Target]:
    """``count`` active agents of ``org`` not On Queue (no capacity rule needs a read), after the
    first ``skip`` such agents (negative: the last ``count``), each with a state other than its
    current one."""
    pool = [
        u for u in stack.users(org) if u["state"] == "active" and u["systemPresence"] != "On Queue"
    ]
    pool = pool[-count:] if skip < 0 else pool[skip : skip + count]
    assert len(pool) >= count, f"org {org}: only {len(pool)} agents fit; give it more users"
    out = []
    for i, user in enumerate(pool):
        choices = [s for s in STATES if s != user["presence"]]
        out.append(Target(user["id"], choices[i % len(choices)]))
    return out


def updates(chosen: list[Target], source: str, count: int | None = None) -> list[PresenceUpdate]:
    """One update per target (cycling when ``count`` is larger), requested in order."""
    count = len(chosen) if count is None else count
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    return [
        PresenceUpdate(
            user_id=chosen[i % len(chosen)].user_id,
            state=STATES[
                (STATES.index(chosen[i % len(chosen)].state) + i // len(chosen)) % len(STATES)
            ],
            requested_at=t0 + timedelta(microseconds=i),
            source=source,
        )
        for i in range(count)
    ]


def rows(stack: LocalStack, source: str) -> int:
    with session_scope(stack.database_url) as session:
        query = select(func.count()).select_from(AuditRecord).where(AuditRecord.source == source)
        return int(session.execute(query).scalar_one())


def outcomes(stack: LocalStack, source: str) -> dict[str, int]:
    with session_scope(stack.database_url) as session:
        query = select(AuditRecord.outcome).where(AuditRecord.source == source)
        return dict(Counter(str(o) for (o,) in session.execute(query)))


def wait_rows(stack: LocalStack, expected: dict[str, int], timeout_s: float) -> float:
    """Seconds until each source has its expected count of audit rows; raises TimeoutError."""
    started = time.monotonic()
    while any(rows(stack, source) < count for source, count in expected.items()):
        if time.monotonic() - started > timeout_s:
            found = {source: rows(stack, source) for source in expected}
            raise TimeoutError(f"audit rows after {timeout_s:.0f} s: {found} of {expected}")
        time.sleep(0.2)
    return time.monotonic() - started


def warm_up(stack: LocalStack, producer: PresenceProducer, orgs: list[str]) -> None:
    """Give each process work in every org, so that each has its org's token, definitions and
    channels before the clock starts."""
    count = PROCESSES * WARM_UP_PER_PROCESS
    for org in orgs:
        chosen = targets(stack, org, count, skip=-1)  # never one a measured run changes
        send_to_org(producer.app, org, updates(chosen, f"warmup-{org}"))
    wait_rows(stack, {f"warmup-{org}": count for org in orgs}, 180)


@contextmanager
def fleet(
    orgs: list[str], budget: int, users: dict[str, int]
) -> Iterator[tuple[LocalStack, PresenceProducer]]:
    """An emulator serving ``orgs`` (each with its own client, ``users`` agents and ``budget``),
    two primed threads workers with the orgs file, and a producer."""
    specs = [f"{org},users={users[org]},queues=4,rate-limit={budget}" for org in orgs]
    options: dict[str, dict[str, object]] = {org: {"rate_limit_per_minute": budget} for org in orgs}
    with LocalStack(
        emulator_args=["--users", "50", "--queues", "2", "--rate-limit", str(budget),
                       "--heartbeat", "5"],
        redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        redis_db=REDIS_DB,
        orgs=specs,
        org_options=options,
        worker_env={"RATE_LIMIT_PER_MINUTE": str(budget)},
    ) as stack:  # fmt: skip
        producer = PresenceProducer(stack.broker_url)
        try:
            stack.start_workers(PROCESSES, concurrency=CONCURRENCY)
            warm_up(stack, producer, orgs)
            yield stack, producer
        finally:
            producer.close()


def admitted(stack: LocalStack, org: str) -> tuple[int, int]:
    """(platform requests the emulator admitted for ``org``, its 429 answers) so far."""
    spent, rejected = api_counts(stack.emulator_stats(org))
    return sum(spent.values()), rejected


class RequestClock:
    """Samples each org's admitted-request count every ``every_s``: when the first and the last
    request of the measured phase were admitted, to ``every_s`` (every route, not only PATCHes)."""

    def __init__(self, stack: LocalStack, orgs: list[str], every_s: float = 0.25) -> None:
        self.stack, self.orgs, self.every_s = stack, orgs, every_s
        self.base = {org: admitted(stack, org)[0] for org in orgs}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._seen = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            now = time.monotonic()
            for org in self.orgs:
                count = admitted(self.stack, org)[0]
                if count > self._seen[org]:
                    self.first.setdefault(org, now)
                    self.last[org] = now
                    self._seen[org] = count

    def stop(self) -> dict[str, float]:
        """Each org's sampled span, seconds (0 for an org with no request)."""
        self._stop.set()
        self._thread.join()
        return {org: self.last.get(org, 0.0) - self.first.get(org, 0.0) for org in self.orgs}


# -- (i) three orgs, each at its budget --------------------------------------------------------------
def bench_three_orgs(report: Report, budget: int, changes: int) -> None:
    orgs = ["a", "b", "c"]
    users = {org: max(2 * changes + 100, 400) for org in orgs}
    results = []
    with fleet(orgs, budget, users) as (stack, producer):
        chosen = {org: targets(stack, org, changes) for org in orgs}
        time.sleep(61)  # every org's window empties, as for one org (bench.big_org)
        before = {org: admitted(stack, org) for org in orgs}
        clock = RequestClock(stack, orgs)
        since = time.time()
        started = time.monotonic()
        batches = {org: updates(chosen[org], f"bench-{org}") for org in orgs}
        step = 50  # interleaved, so that no org's demand is queued long before another's
        for start in range(0, changes, step):
            for org in orgs:
                send_to_org(producer.app, org, batches[org][start : start + step])
        wait_rows(stack, {f"bench-{org}": changes for org in orgs}, 900)
        wall = time.monotonic() - started
        time.sleep(1)  # the clock's last sample
        sampled = clock.stop()
        for org in orgs:
            (req1, rej1), (req0, rej0) = admitted(stack, org), before[org]
            assert stack.emulator is not None
            times = applied_times(stack.emulator.base_url, since, org)
            span = times[-1] - times[0] if times else 0.0
            minimum = minimum_s(req1 - req0, budget)
            results.append(
                {
                    "org": org,
                    "budget_per_min": budget,
                    "changes": changes,
                    "requests": req1 - req0,
                    "patches": len(times),
                    "span_s": span,
                    "span_all_requests_sampled_s": sampled[org],
                    "physical_minimum_s": minimum,
                    "ratio": span / minimum if minimum else None,
                    "rejected_429": rej1 - rej0,
                    "outcomes": outcomes(stack, f"bench-{org}"),
                    # Where the excess is: seconds after the first PATCH of every budget-th
                    # PATCH and of the one before (the edges of each minute).
                    "timeline_s": {
                        str(k): round(times[k] - times[0], 2)
                        for k in sorted(
                            {
                                *range(0, len(times), budget),
                                *range(budget - 1, len(times), budget),
                                len(times) - 1,
                            }
                        )
                        if 0 <= k < len(times)
                    },
                }
            )
    for result in results:
        console.print(result)
        ratio = result["ratio"]
        report.add(
            f"(i) org {result['org']}: span of {result['requests']} requests at {budget}/min",
            f"{result['span_s']:.1f} s",
            f"{result['physical_minimum_s']:.1f} s physical minimum",
            f"{ratio:.3f} ({result['rejected_429']} 429s)" if ratio else "-",
        )
    report.data["three_orgs"] = {"orgs": results, "wall_s": wall}


# -- (ii) the noisy neighbour ---------------------------------------------------------------------
def steady_load(producer: PresenceProducer, chosen: list[Target], source: str, rate: float) -> int:
    """Send one update per target to org b, ``rate`` per second; returns the count sent."""
    started = time.monotonic()
    for i, target in enumerate(chosen):
        update = PresenceUpdate(
            user_id=target.user_id,
            state=target.state,
            requested_at=datetime.now(UTC),
            source=source,
        )
        send_to_org(producer.app, "b", [update])
        time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
    return len(chosen)


@dataclass(frozen=True)
class Confirmed:
    """One confirmed audit row: its agent, when it was requested (epoch seconds) and its
    request → confirmed latency (milliseconds)."""

    user_id: str
    requested_at: float
    ms: float


def confirmed_rows(stack: LocalStack, source: str) -> list[Confirmed]:
    """Each confirmed row of ``source``."""
    with session_scope(stack.database_url) as session:
        found = session.execute(
            select(AuditRecord.user_id, AuditRecord.requested_at, AuditRecord.finished_at).where(
                AuditRecord.source == source, AuditRecord.outcome == "confirmed"
            )
        ).all()
    return [
        Confirmed(u, _aware(r).timestamp(), (_aware(f) - _aware(r)).total_seconds() * 1000)
        for u, r, f in found
        if u is not None and r is not None
    ]


def slowest(
    stack: LocalStack, rows: list[Confirmed], org_a_patches: list[float]
) -> list[dict[str, float | None]]:
    """The five slowest rows, and where their time went: when the emulator applied the row's
    PATCH (ms after the request; the rest is the confirmation), and how many of org a's PATCHes
    it applied in the second around the request."""
    history: dict[str, list[dict[str, Any]]] = stack.admin("GET", "/history", org="b")
    out: list[dict[str, float | None]] = []
    for row in sorted(rows, key=lambda r: -r.ms)[:5]:
        applied = [
            e["timestamp"]
            for e in history.get(row.user_id, [])
            if e["path"] == "patch" and e["timestamp"] >= row.requested_at
        ]
        out.append(
            {
                "ms": round(row.ms, 1),
                "patch_applied_ms": round((min(applied) - row.requested_at) * 1000, 1)
                if applied
                else None,
                "org_a_patches_within_1s": sum(
                    1 for t in org_a_patches if abs(t - row.requested_at) <= 0.5
                ),
            }
        )
    return out


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "confirmed": len(values),
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
    }


def bench_noisy_neighbour(
    report: Report, budget: int, backlog: int, rate: float, seconds: float
) -> None:
    per_run = int(rate * seconds)
    users = {"a": 4000, "b": 2 * per_run + 300}
    with fleet(["a", "b"], budget, users) as (stack, producer):
        alone_targets = targets(stack, "b", per_run)
        noisy_targets = targets(stack, "b", per_run, skip=per_run)
        b_before = admitted(stack, "b")
        steady_load(producer, alone_targets, "bench-b-alone", rate)
        wait_rows(stack, {"bench-b-alone": per_run}, 120)
        a_before = admitted(stack, "a")
        a_since = time.time()
        a_chosen = targets(stack, "a", min(backlog, 2500))  # a few updates per agent
        send_to_org(producer.app, "a", updates(a_chosen, "bench-a-backlog", backlog))
        time.sleep(5)  # org a's budget is being spent and its waits are under way
        b_mid = admitted(stack, "b")
        steady_load(producer, noisy_targets, "bench-b-noisy", rate)
        wait_rows(stack, {"bench-b-noisy": per_run}, 120)
        a_after, b_after = admitted(stack, "a"), admitted(stack, "b")
        alone_rows = confirmed_rows(stack, "bench-b-alone")
        noisy_rows = confirmed_rows(stack, "bench-b-noisy")
        alone, noisy = [r.ms for r in alone_rows], [r.ms for r in noisy_rows]
        assert stack.emulator is not None
        a_patches = applied_times(stack.emulator.base_url, a_since, "a")
        a_done = rows(stack, "bench-a-backlog")
        data: dict[str, Any] = {
            "rate_per_s": rate,
            "seconds": seconds,
            "backlog": backlog,
            "budget_per_min": budget,
            "b_alone": {
                **summary(alone),
                "slowest": slowest(stack, alone_rows, []),
                "outcomes": outcomes(stack, "bench-b-alone"),
                "rejected_429": b_mid[1] - b_before[1],
            },
            "b_noisy": {
                **summary(noisy),
                "slowest": slowest(stack, noisy_rows, a_patches),
                "outcomes": outcomes(stack, "bench-b-noisy"),
                "rejected_429": b_after[1] - b_mid[1],
            },
            "a_during": {
                "requests": a_after[0] - a_before[0],
                "rejected_429": a_after[1] - a_before[1],
                "rows": a_done,
                "outcomes": outcomes(stack, "bench-a-backlog"),
            },
        }
    console.print(data)
    for q in ("p50", "p99"):
        with_a, without = data["b_noisy"][f"{q}_ms"], data["b_alone"][f"{q}_ms"]
        report.add(
            f"(ii) org b request → confirmed {q}, {rate:g}/s, org a {backlog:,} behind",
            f"{with_a:.1f} ms" if with_a is not None else "-",
            f"{without:.1f} ms org b alone" if without is not None else "-",
            f"{with_a / without:.2f}" if with_a and without else "-",
        )
    report.add(
        "(ii) 429s during the noisy run (org b / org a)",
        f"{data['b_noisy']['rejected_429']} / {data['a_during']['rejected_429']}",
        f"{data['b_alone']['rejected_429']} org b alone",
        "-",
    )
    report.data["noisy_neighbour"] = data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=300, help="requests/min per org")
    parser.add_argument("--changes", type=int, default=600, help="single updates per org in (i)")
    parser.add_argument("--backlog", type=int, default=10_000, help="org a's backlog in (ii)")
    parser.add_argument("--rate", type=float, default=2.0, help="org b's updates/s in (ii)")
    parser.add_argument("--seconds", type=float, default=60, help="length of org b's load")
    parser.add_argument("--quick", action="store_true", help="smoke run: short and small")
    parser.add_argument("--only", choices=["i", "ii"], help="run one part")
    args = parser.parse_args()
    if args.quick:
        args.changes, args.backlog, args.seconds = args.budget + 10, 1000, 20
    report = Report()
    if args.only in (None, "i"):
        bench_three_orgs(report, args.budget, args.changes)
    if args.only in (None, "ii"):
        bench_noisy_neighbour(report, args.budget, args.backlog, args.rate, args.seconds)
    report.data["args"] = vars(args)
    report.publish(console, "several orgs on one fleet", "orgs")


if __name__ == "__main__":
    main()
