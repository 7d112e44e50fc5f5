"""``presence demo``: the whole product on one machine, with embedded defaults.

Starts the Genesys Cloud emulator, uses the Redis at REDIS_URL (its database 15, reserved for
the demo) or a private one, creates a fresh SQLite audit database, starts a Celery worker,
enqueues a realistic batch, shows progress, the statistics and a few audit rows, then runs a
shift-change wave through ``celery beat`` (:mod:`cli.demo_shifts`).
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.demo_shifts import run_shift_wave
from cli.render import audit_table, progress_bar, stats_table
from models import Outcome
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from sandbox.stack import LocalStack
from worker import names, reports
from worker.embedded_redis import EmbeddedRedisMissing
from worker.settings import get_settings

DEMO_DB = 15
DEMO_CLIENT = "presence-demo"
DEMO_SECRET = "demo-secret"  # noqa: S105 - the emulator's sandbox credential


@dataclass
class Batch:
    """The requests to send, in sending order, and how many audit rows they must produce."""

    updates: list[PresenceUpdate] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)  # payloads that fail validation
    duplicates: int = 0

    @property
    def expected_rows(self) -> int:
        return len(self.updates) + len(self.raw) - self.duplicates

    def rows_note(self) -> str:
        """Why fewer requests finish (one audit row each) than were enqueued."""
        sent = len(self.updates) + len(self.raw)
        return (
            f"{sent} enqueued, {self.expected_rows} to finish: {self.duplicates} repeat an "
            "idempotency key (a producer that retried its send), so they are applied once and "
            "add no audit row of their own."
        )


def presence_command() -> str:
    """How to run ``presence`` from the current directory in a shell: the bare name when it is
    on PATH as this installation, else the path of this installation's script."""
    script = Path(sys.executable).parent / "presence"
    found = shutil.which("presence")
    if found is not None and Path(found).resolve() == script.resolve():
        return "presence"
    if not script.exists():
        return f"{sys.executable} -m cli.main"
    relative = os.path.relpath(script)
    return str(script) if relative.startswith("..") else relative


def explore_hint(database_url: str) -> str:
    """The closing hint: commands that work as printed, from where the demo ran."""
    command = f"DATABASE_URL={shlex.quote(database_url)} {presence_command()}"
    lines = [
        "Explore the demo's audit database (its emulator and worker have stopped):",
        *(f"  {command} {args}" for args in ("audit --outcome superseded", "stats", "shifts list")),
    ]
    return escape("\n".join(lines))


def build_batch(roster: list[dict[str, Any]], agents: int, rng: random.Random) -> Batch:
    """Start of shift for everyone, breaks with reasons, out-of-order conflicts, bad input."""
    active = [u for u in roster if u["state"] == "active"][:agents]
    t0 = datetime.now(UTC) - timedelta(milliseconds=10)  # every request time lies in the past
    batch = Batch()

    def add(user: str, state: str, at: datetime, **extra: Any) -> None:
        batch.updates.append(
            PresenceUpdate(user_id=user, state=state, requested_at=at, source="demo", **extra)
        )

    offline = [u for u in active if u["systemPresence"] == "Offline"]
    late = {u["id"] for u in offline[:5]}  # stay offline; asked for a meal → transition refused
    shift = [u for u in active if u["id"] not in late]
    for user in shift:
        add(user["id"], "On Queue", t0)
    for user in rng.sample(shift, k=len(shift) // 5):
        add(user["id"], "Break", t0 + timedelta(milliseconds=1), reason="Coffee")
    for user in rng.sample(shift, k=len(shift) // 10):
        add(user["id"], "Meal", t0 + timedelta(milliseconds=2), reason="Lunch")
    for user in rng.sample(shift, k=min(30, len(shift))):
        # The newer request is sent first; the older one arrives late and must lose.
        add(user["id"], "Busy", t0 + timedelta(milliseconds=4), message="Coaching session")
        add(user["id"], "Available", t0 + timedelta(milliseconds=3))
    for user_id in late:
        add(user_id, "Meal", t0 + timedelta(milliseconds=1), reason="Lunch")
    for user in rng.sample(shift, k=min(10, len(shift))):
        add(user["id"], "Lunchtime", t0 + timedelta(milliseconds=5))  # not a presence in this org
    for user in rng.sample(shift, k=min(3, len(shift))):
        add(user["id"], "Break", t0 + timedelta(milliseconds=5), reason="Nap")  # not a Break reason
    for user in rng.sample(shift, k=min(10, len(shift))):
        key = f"demo-{uuid.uuid4()}"
        for _ in range(2):  # a producer that retried its send: applied once
            add(user["id"], "Training", t0 + timedelta(milliseconds=6), idempotency_key=key)
        batch.duplicates += 1
    batch.raw = [
        {"user_id": "not-a-user-id", "state": "Available", "requested_at": t0.isoformat()},
        {"user_id": shift[0]["id"], "requested_at": t0.isoformat()},
        {"user_id": shift[1]["id"], "state": "Available", "requested_at": "yesterday"},
    ]
    return batch


def run_demo(*, agents: int, budget: int, console: Console) -> int:
    """Run the demo; returns a process exit code."""
    workdir = Path(".presence")
    stack = LocalStack(
        emulator_args=[
            "--users",
            str(agents + 40),
            "--queues",
            "12",
            "--rate-limit",
            str(budget),
            "--heartbeat",
            "5",
        ],
        redis_url=get_settings().redis_url,
        redis_db=DEMO_DB,
        client_id=DEMO_CLIENT,
        client_secret=DEMO_SECRET,
        workdir=workdir,
        database_file="demo.sqlite3",
        worker_env={"RATE_LIMIT_PER_MINUTE": str(budget), "NOTIFICATION_HEARTBEAT_S": "5"},
    )
    # The emulator's WFM sink stands in for the workforce-management platform.
    stack.worker_env["WFM_WEBHOOK_SECRET"] = "wfm-sink-secret"  # noqa: S105 - the sink's default
    try:
        try:
            stack.start()
        except EmbeddedRedisMissing as exc:  # one actionable line, no traceback
            Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(str(exc))}")
            return 1
        console.rule("[bold]presence worker demo")
        assert stack.emulator is not None
        assert stack.redis is not None
        stack.worker_env["WFM_WEBHOOK_URL"] = f"{stack.emulator.base_url}/__wfm/events"
        where = (
            "a private embedded Redis"
            if stack.redis.embedded
            else f"Redis at {stack.broker_url.rsplit('/', 1)[0]} (database {DEMO_DB})"
        )
        console.print(f"emulator  {stack.emulator.base_url} (org budget {budget:,} requests/min)")
        console.print(f"broker    {where}")
        console.print(f"audit db  {stack.database_url.removeprefix('sqlite:///')}")
        stack.start_workers(1, pool="threads", concurrency=16)
        console.print(
            f"worker    celery -A worker.app worker --pool threads -c 16 (log in {workdir}/)"
        )

        roster = httpx.get(f"{stack.emulator.base_url}/__emulator/users").json()
        batch = build_batch(roster, agents, random.Random(7))
        console.print(
            f"\nEnqueueing {len(batch.updates) + len(batch.raw)} requests for {agents} agents: start of shift "
            "(On Queue), breaks with reasons, out-of-order conflicts, repeated idempotency keys, "
            "and some invalid requests."
        )
        console.print(batch.rows_note())
        producer = PresenceProducer(stack.broker_url)
        started = time.monotonic()
        producer.send_many(batch.updates)
        for raw in batch.raw:
            producer.app.send_task(names.UPDATE_TASK, args=[raw], queue=names.PRESENCE_QUEUE)
        producer.close()
        with progress_bar(console) as progress:
            task = progress.add_task("requests finished", total=batch.expected_rows)
            done = 0
            while done < batch.expected_rows and time.monotonic() - started < 600:
                with session_scope(stack.database_url) as session:
                    done = reports.count_rows(session)
                progress.update(task, completed=done)
                time.sleep(0.5)
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # the last WFM deliveries follow their audit rows
        stats = httpx.get(f"{stack.emulator.base_url}/__emulator/stats").json()
        sink = httpx.get(f"{stack.emulator.base_url}/__emulator/wfm/deliveries").json()["summary"]
        with session_scope(stack.database_url) as session:
            console.print(stats_table(reports.summarize(session)))
            samples = []
            for outcome in Outcome:
                samples += reports.recent(session, outcome=outcome.value, limit=1)
            console.print(audit_table(samples))
        table = Table(title="the emulated org saw")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row(
            "Genesys requests (all endpoints)",
            str(sum(sum(c.values()) for c in stats["requests"].values())),
        )
        table.add_row("HTTP 429 responses", str(stats["tooManyRequests"]))
        table.add_row(
            "peak requests in a rolling minute", f"{stats['peakPerMinute']:,} of {budget:,}"
        )
        table.add_row("wall time", f"{elapsed:.1f} s")
        table.add_row(
            "WFM events received (signature valid)",
            f"{sink['uniqueEvents']} ({sink['received'] - sink['badSignatures']} of {sink['received']})",
        )
        console.print(table)
        wave_done = run_shift_wave(stack, agents, console)
        console.print(explore_hint(stack.database_url), soft_wrap=True)
        return 0 if done >= batch.expected_rows and wave_done else 1
    finally:
        stack.close()
