"""The demo's second act: a shift-change wave at the top of the hour.

Writes a roster CSV (end of shift, breaks, start of shift, two bad rows), imports it the way
``presence shifts import`` does, starts ``celery beat`` and follows the wave until every stored
change has its audit row.
"""

from __future__ import annotations

import csv
import io
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from cli.render import progress_bar
from models import AuditRecord, ShiftChange
from models.db import session_scope
from sandbox.stack import LocalStack
from worker import names
from worker.shifts import schedule
from worker.shifts.formats import parse_schedule

BULK = "presence.bulk_put"


def roster_csv(roster: list[dict[str, Any]], agents: int, due: datetime, rng: random.Random) -> str:
    """Half the agents end their shift, a quarter take a coffee break, the rest start theirs."""
    active = [u for u in roster if u["state"] == "active"][:agents]
    rng.shuffle(active)
    at = due.strftime("%Y-%m-%d %H:%M:%S")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    out.write("# demo roster: the top of the hour\n")
    writer.writerow(["user_id", "at", "timezone", "state", "reason"])
    for index, user in enumerate(active):
        if index < len(active) // 2:
            writer.writerow([user["id"], at, "UTC", "Offline", ""])
        elif index < len(active) * 3 // 4:
            writer.writerow([user["id"], at, "UTC", "Break", "Coffee"])
        else:
            writer.writerow([user["id"], at, "UTC", "On Queue", ""])
    writer.writerow(["agent-7", at, "UTC", "Offline", ""])  # not a user id
    writer.writerow([active[0]["id"], "tomorrow 9am", "UTC", "On Queue", ""])  # not a time
    return out.getvalue()


def run_shift_wave(stack: LocalStack, agents: int, console: Console) -> bool:
    """Import, dispatch and apply one wave; True when every stored change was audited."""
    assert stack.emulator is not None
    assert stack.workdir is not None
    base = stack.emulator.base_url
    roster = httpx.get(f"{base}/__emulator/users").json()
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    path = stack.workdir / "shift-roster.csv"
    path.write_text(roster_csv(roster, agents, due, random.Random(11)))
    console.rule("[bold]the top of the hour: a shift-change wave")
    results = list(parse_schedule(path))
    errors = [r.error for r in results if r.error]
    with session_scope(stack.database_url) as session:
        added = schedule.add_changes(
            session,
            [r.change for r in results if r.change is not None],
            source=path.name,
            now=datetime.now(UTC),
        )
    console.print(
        f"presence shifts import {path}: {added.added} changes stored, {len(errors)} rows refused:"
    )
    for error in errors:
        console.print(f"  [yellow]{error}[/]")
    before = httpx.get(f"{base}/__emulator/stats").json()
    stack.start_beat({"SHIFT_DISPATCH_INTERVAL_S": "1"})
    console.print(
        "beat      celery -A worker.app beat: claims due rows every second and sends them as "
        "presence.wave messages (bulk PUTs of 50)"
    )
    with session_scope(stack.database_url) as session:
        ids = [names.shift_request_id(i) for i in session.scalars(select(ShiftChange.id))]
    done: list[AuditRecord] = []
    with progress_bar(console) as progress:
        task = progress.add_task("shift changes applied", total=len(ids))
        deadline = time.monotonic() + 300
        while len(done) < len(ids) and time.monotonic() < deadline:
            with session_scope(stack.database_url) as session:
                done = list(
                    session.scalars(select(AuditRecord).where(AuditRecord.request_id.in_(ids)))
                )
            progress.update(task, completed=len(done))
            time.sleep(0.5)
    after = httpx.get(f"{base}/__emulator/stats").json()
    console.print(_wave_table(done, before, after, due))
    return len(done) >= len(ids)


def _calls(stats: dict[str, Any], route: str | None = None) -> int:
    """Requests the emulated platform answered (on ``route``); its admin API and WFM sink aside."""
    routes = {
        name: by_status
        for name, by_status in stats["requests"].items()
        if not name.startswith(("admin.", "wfm."))
    }
    if route is not None:
        return int(sum(routes.get(route, {}).values()))
    return sum(sum(by_status.values()) for by_status in routes.values())


def _wave_table(
    rows: list[AuditRecord], before: dict[str, Any], after: dict[str, Any], due: datetime
) -> Table:
    table = Table(title="the wave")
    table.add_column("measure")
    table.add_column("value", justify="right")
    outcomes = Counter(r.outcome for r in rows)
    table.add_row("agents", str(len(rows)))
    table.add_row("outcomes", ", ".join(f"{n} {o}" for o, n in outcomes.most_common()))
    bulk = _calls(after, BULK) - _calls(before, BULK)
    total = _calls(after) - _calls(before)
    table.add_row("bulk PUT calls", str(bulk))
    others = {
        route: _calls(after, route) - _calls(before, route)
        for route in after["requests"]
        if route != BULK and _calls(after, route) > _calls(before, route)
    }
    detail = ", ".join(f"{n} {route}" for route, n in sorted(others.items(), key=lambda i: -i[1]))
    table.add_row("other Genesys calls", f"{total - bulk} ({detail})" if detail else "0")
    table.add_row("HTTP 429 responses", str(after["tooManyRequests"] - before["tooManyRequests"]))
    if rows:
        last = max(r.finished_at for r in rows)
        last = last if last.tzinfo else last.replace(tzinfo=UTC)
        table.add_row("due time → last change applied", f"{(last - due).total_seconds():.1f} s")
    return table
