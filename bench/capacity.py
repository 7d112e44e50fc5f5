"""Capacity-guard benchmark: what the guard costs in Genesys requests and latency.

Run: ``python -m bench.capacity`` (about 1½ minutes). Three configurations, each on a fresh
``LocalStack`` (emulator with 600 agents in 4 queues, every active agent put On Queue, 2 worker
processes with 8 threads, platform rate limit off) and the same agents, sent the same way:

* baseline — On Queue → On Queue: the same PATCH and confirmation, the guard never involved;
* shared — On Queue → Break with the guard's observation cache shared for 5 s (the default);
* unshared — On Queue → Break with ``CAPACITY_OBSERVATION_TTL_S=0.001``: one observation query
  per check.

Each configuration sends two batches to distinct agents: ``steady`` (20 updates/s, so latency
is per update, not backlog) and ``burst`` (all at once, 16 threads draining them). Measured per
batch: Genesys API requests per update (the emulator's counters, platform routes only), of which
queue observations and membership reads, and enqueue → finished latency (``requested_at`` →
the audit row's ``finished_at``) p50/p95. Every figure is compared with the baseline of the same
run; results go to ``bench/results/capacity.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from models import AuditRecord
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from sandbox.stack import LocalStack
from worker.embedded_redis import _free_port
from worker.reports import SUCCESS, percentile

console = Console(width=max(Console().width, 120))
RESULTS = Path(__file__).parent / "results"
UNLIMITED = "1000000"
WARM_UP_AGENTS = 4
OBSERVE = "analytics.queue_observations"
MEMBERSHIP = "users.queues"


@dataclass(frozen=True)
class Config:
    name: str
    title: str
    target: str  # the state every batch sets
    env: dict[str, str] = field(default_factory=dict)


CONFIGS = (
    Config("baseline", "baseline: On Queue → On Queue (no guard)", "On Queue"),
    Config(
        "shared",
        "guard, shared observations (TTL 5 s)",
        "Break",
        {"CAPACITY_OBSERVATION_TTL_S": "5"},
    ),
    Config(
        "unshared",
        "guard, unshared (TTL 0.001 s)",
        "Break",
        {"CAPACITY_OBSERVATION_TTL_S": "0.001"},
    ),
)


def admin(stack: LocalStack, method: str, path: str, body: object = None) -> Any:
    assert stack.emulator is not None
    response = httpx.request(
        method, f"{stack.emulator.base_url}/__emulator{path}", json=body, timeout=30
    )
    response.raise_for_status()
    return response.json()


def api_requests(stats: dict[str, Any]) -> dict[str, int]:
    """Requests per platform route (admin, OAuth and the WFM sink left out)."""
    out: dict[str, int] = {}
    for route, by_status in stats["requests"].items():
        if not route.startswith(("admin.", "oauth.", "wfm.")):
            out[route] = sum(by_status.values())
    return out


def count_rows(stack: LocalStack) -> int:
    with session_scope(stack.database_url) as session:
        return len(session.scalars(select(AuditRecord.id)).all())


def wait_rows(stack: LocalStack, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while count_rows(stack) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {expected} audit rows after {timeout_s:.0f} s")
        time.sleep(0.1)


def warm_up(stack: LocalStack, producer: PresenceProducer, agents: list[str], active: int) -> int:
    """Off-queue updates (Available → Available) until both workers hold a connected socket
    carrying every active agent's topic; returns the audit rows written."""
    sent = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for agent in agents:
            producer.send(
                PresenceUpdate(
                    user_id=agent, state="Available", requested_at=datetime.now(UTC), source="warm"
                )
            )
            sent += 1
        time.sleep(1)
        channels = [c for c in admin(stack, "GET", "/channels") if c["connected"]]
        if len(channels) >= 2 and all(c["topics"] >= active for c in channels):
            wait_rows(stack, sent, 60)
            return sent
    raise TimeoutError("the workers' notification sockets never primed")


def run_batch(
    stack: LocalStack,
    producer: PresenceProducer,
    agents: list[str],
    target: str,
    rate_per_s: float | None,
    rows_before: int,
) -> dict[str, Any]:
    """Send one update per agent (at ``rate_per_s``, or all at once) and measure it."""
    before = api_requests(admin(stack, "GET", "/stats"))
    started = time.monotonic()
    request_ids = []
    for i, agent in enumerate(agents):
        update = PresenceUpdate(
            user_id=agent, state=target, requested_at=datetime.now(UTC), source="bench"
        )
        request_ids.append(producer.send(update))
        if rate_per_s is not None:
            time.sleep(max(0.0, started + (i + 1) / rate_per_s - time.monotonic()))
    wait_rows(stack, rows_before + len(agents), 120)
    after = api_requests(admin(stack, "GET", "/stats"))
    delta = {route: after.get(route, 0) - before.get(route, 0) for route in after}
    with session_scope(stack.database_url) as session:
        rows = session.execute(
            select(
                AuditRecord.outcome,
                AuditRecord.requested_at,
                AuditRecord.finished_at,
                AuditRecord.genesys_requests,
            ).where(AuditRecord.request_id.in_(request_ids))
        ).all()
    latencies = [
        (_aware(r.finished_at) - _aware(r.requested_at)).total_seconds() * 1000
        for r in rows
        if r.requested_at is not None
    ]
    updates = len(rows)
    outcomes: dict[str, int] = {}
    for row in rows:
        outcomes[row.outcome] = outcomes.get(row.outcome, 0) + 1
    return {
        "updates": updates,
        "rate_per_s": rate_per_s,
        "outcomes": outcomes,
        "applied": sum(1 for r in rows if r.outcome in SUCCESS),
        "requests_per_update": sum(delta.values()) / updates,
        "audit_requests_per_update": sum(r.genesys_requests for r in rows) / updates,
        "observations": delta.get(OBSERVE, 0),
        "membership_reads": delta.get(MEMBERSHIP, 0),
        "observations_per_update": delta.get(OBSERVE, 0) / updates,
        "membership_per_update": delta.get(MEMBERSHIP, 0) / updates,
        "requests_by_route": {k: v for k, v in delta.items() if v},
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
    }


def run_config(config: Config, batch: int, rate_per_s: float) -> dict[str, Any]:
    args = ["--users", "600", "--queues", "4", "--rate-limit", "0", "--heartbeat", "5"]
    env = {"RATE_LIMIT_PER_MINUTE": UNLIMITED, "ACK_TIMEOUT_S": "5", **config.env}
    # A free port: nothing answers there, so the stack starts a Redis of its own (no other
    # benchmark or test shares its queues).
    private = f"redis://127.0.0.1:{_free_port()}/0"
    with LocalStack(emulator_args=args, redis_url=private, worker_env=env) as stack:
        users = [u for u in admin(stack, "GET", "/users") if u["state"] == "active"]
        warm = [u["id"] for u in users[-WARM_UP_AGENTS:]]
        agents = [u["id"] for u in users[:-WARM_UP_AGENTS]]
        for user_id in agents:  # every agent on queue: queues of ~270 with room to spare
            admin(stack, "PUT", f"/users/{user_id}/presence", {"presence": "On Queue"})
        for user_id in warm:
            admin(stack, "PUT", f"/users/{user_id}/presence", {"presence": "Available"})
        assert len(agents) >= 2 * batch, f"only {len(agents)} agents"
        stack.start_workers(2, concurrency=8)
        producer = PresenceProducer(stack.broker_url)
        try:
            rows = warm_up(stack, producer, warm, len(users))
            first = agents[:batch]
            steady = run_batch(stack, producer, first, config.target, rate_per_s, rows)
            rows += batch
            burst = run_batch(stack, producer, agents[batch : 2 * batch], config.target, None, rows)
            rows += batch
            for user_id in first:  # back on queue (outside the API: the sockets see it)
                admin(stack, "PUT", f"/users/{user_id}/presence", {"presence": "On Queue"})
            time.sleep(1)
            repeat = run_batch(stack, producer, first, config.target, rate_per_s, rows)
        finally:
            producer.close()
    return {
        "title": config.title,
        "target": config.target,
        "steady": steady,
        "burst": burst,
        "repeat": repeat,
    }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


MODES = {
    "steady": "steady {rate:g}/s",
    "burst": "burst",
    "repeat": "steady {rate:g}/s, agents again",
}


def report(results: dict[str, dict[str, Any]]) -> Table:
    base, shared, unshared = results["baseline"], results["shared"], results["unshared"]
    table = Table(title="capacity guard: cost of an off-queue update (2 workers, 8 threads each)")
    table.add_column("batch")
    table.add_column("measure")
    for column in (
        "baseline: on → on",
        "guard, shared 5 s",
        "guard, TTL 1 ms",
        "shared ÷ base",
        "TTL 1 ms ÷ base",
    ):
        table.add_column(column, justify="right")
    for mode, label in MODES.items():
        b, s, u = base[mode], shared[mode], unshared[mode]
        name = label.format(rate=b["rate_per_s"] or 0)
        table.add_row(
            name,
            "requests / update",
            *(f"{x['requests_per_update']:.2f}" for x in (b, s, u)),
            _ratio(s["requests_per_update"], b["requests_per_update"]),
            _ratio(u["requests_per_update"], b["requests_per_update"]),
        )
        table.add_row(
            "",
            "queue observations",
            *(str(x["observations"]) for x in (b, s, u)),
            "",
            "",
        )
        table.add_row(
            "", "membership reads", *(str(x["membership_reads"]) for x in (b, s, u)), "", ""
        )
        for q in ("p50", "p95"):
            table.add_row(
                "",
                f"{q} enqueue → done",
                *(f"{x[f'{q}_ms']:.1f} ms" for x in (b, s, u)),
                _ratio(s[f"{q}_ms"], b[f"{q}_ms"]),
                _ratio(u[f"{q}_ms"], b[f"{q}_ms"]),
            )
        table.add_row(
            "",
            "applied",
            *(f"{x['applied']} / {x['updates']}" for x in (b, s, u)),
            "",
            "",
            end_section=True,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=100, help="updates per batch")
    parser.add_argument("--rate", type=float, default=20.0, help="steady batch: updates/s")
    args = parser.parse_args()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for config in CONFIGS:
        console.print(f"[dim]running {config.title}…[/]")
        results[config.name] = run_config(config, args.batch, args.rate)
    console.print(report(results))
    base = results["baseline"]
    for name in ("shared", "unshared"):
        for mode in MODES:
            ours, ref = results[name][mode], base[mode]
            ours["added_requests_per_update"] = (
                ours["requests_per_update"] - ref["requests_per_update"]
            )
            ours["added_p50_ms"] = ours["p50_ms"] - ref["p50_ms"]
    RESULTS.mkdir(exist_ok=True)
    data = {"batch": args.batch, "rate_per_s": args.rate, "seconds": time.monotonic() - started}
    (RESULTS / "capacity.json").write_text(json.dumps(data | results, indent=2, default=str))
    console.print(f"results written to {RESULTS / 'capacity.json'}")


if __name__ == "__main__":
    main()
