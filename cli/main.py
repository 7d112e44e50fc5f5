"""``presence``: operate the presence worker from a shell."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from cli.render import audit_table, stats_table
from models import AuditRecord, Outcome
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from producer.schema import json_schema
from worker import reports
from worker.settings import get_settings
from worker.updates import invalid_message

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per error, whatever the width

CSV_COLUMNS = (
    "user_id",
    "state",
    "reason",
    "source",
    "expected_state",
    "idempotency_key",
    "message",
)


def _producer() -> PresenceProducer:
    return PresenceProducer(get_settings().redis_url)


@app.command("set")
def set_presence(
    user: Annotated[str, typer.Argument(help="Genesys user id of the agent.")],
    state: Annotated[
        str,
        typer.Argument(
            help='System presence, org label or definition id ("On Queue", "Break", "Coffee").'
        ),
    ],
    reason: Annotated[
        str | None, typer.Option(help="Secondary presence of STATE, e.g. Coffee for Break.")
    ] = None,
    source: Annotated[str, typer.Option(help="Who asks, recorded in the audit row.")] = "cli",
    expected: Annotated[
        str | None, typer.Option(help="Apply only if the agent is in this state now.")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: the same key applies once.")
    ] = None,
    message: Annotated[str | None, typer.Option(help="Presence message shown in Genesys.")] = None,
) -> None:
    """Enqueue one presence change and print its request id."""
    try:
        update = PresenceUpdate(
            user_id=user, state=state, reason=reason, source=source, expected_state=expected,
            idempotency_key=key, message=message, requested_at=datetime.now(UTC),
        )  # fmt: skip
    except ValidationError as exc:
        err.print(f"[red]error:[/] {invalid_message(exc)}")
        raise typer.Exit(2) from None
    producer = _producer()
    request_id = producer.send(update)
    producer.close()
    console.print(f"queued {request_id}")


@app.command("import")
def import_csv(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV with a header row.")
    ],
    source: Annotated[str, typer.Option(help="Default source for rows without one.")] = "import",
) -> None:
    """Enqueue every valid row of a CSV (columns: user_id,state[,reason,source,expected_state,
    idempotency_key,message]); print each bad row's error and a summary."""
    with file.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"user_id", "state"} <= set(rows[0]):
        err.print(f"[red]error:[/] {file} needs at least the columns user_id and state")
        raise typer.Exit(2)
    producer = _producer()
    queued, bad = 0, 0
    now = datetime.now(UTC)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("enqueueing", total=len(rows))
        with producer.app.producer_or_acquire() as conn:
            for number, row in enumerate(rows, start=2):  # line 1 is the header
                fields = {k: (row.get(k) or "").strip() or None for k in CSV_COLUMNS}
                fields["source"] = fields["source"] or source
                try:
                    # File order is request order: later lines win for the same agent.
                    at = now + timedelta(microseconds=number)
                    update = PresenceUpdate.model_validate({**fields, "requested_at": at})
                except ValidationError as exc:
                    bad += 1
                    progress.console.print(
                        f"[yellow]line {number}:[/] {invalid_message(exc)}", soft_wrap=True
                    )
                else:
                    producer.app.send_task(
                        "presence.update",
                        args=[update.to_message()],
                        queue="presence",
                        producer=conn,
                    )
                    queued += 1
                progress.advance(task)
    producer.close()
    console.print(f"queued {queued}, rejected {bad} of {len(rows)} rows")
    if bad:
        raise typer.Exit(1)


@app.command()
def audit(
    user: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    outcome: Annotated[str | None, typer.Option(help="Only this outcome, e.g. failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show, newest first.")] = 20,
) -> None:
    """Show audit rows, newest first."""
    if outcome is not None and outcome not in {o.value for o in Outcome}:
        err.print(
            f"[red]error:[/] unknown outcome {escape(repr(outcome))}; use one of {', '.join(o.value for o in Outcome)}"
        )
        raise typer.Exit(2)
    with session_scope(get_settings().database_url) as session:
        rows = reports.recent(session, user_id=user, outcome=outcome, limit=limit)
        console.print(audit_table(rows))


@app.command()
def stats() -> None:
    """Success rate, p50/p95/p99 latency by outcome, Genesys requests per update."""
    with session_scope(get_settings().database_url) as session:
        console.print(stats_table(reports.summarize(session)))


@app.command()
def requeue(
    outcome: Annotated[
        str, typer.Option(help="Requeue requests that ended with this outcome.")
    ] = "dead_letter",
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
) -> None:
    """Enqueue again the requests that ended with OUTCOME (once each; a newer request for the
    same agent still wins)."""
    allowed = {Outcome.DEAD_LETTER.value, Outcome.FAILED.value, Outcome.DRIFTED.value}
    if outcome not in allowed:
        err.print(f"[red]error:[/] only {', '.join(sorted(allowed))} can be requeued")
        raise typer.Exit(2)
    producer = _producer()
    count = 0
    with session_scope(get_settings().database_url) as session:
        rows = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.outcome == outcome, AuditRecord.requeued_as.is_(None))
            .order_by(AuditRecord.id)
            .limit(limit)
        ).all()
        for row in rows:
            if not row.payload or "user_id" not in row.payload:
                continue
            payload = {k: v for k, v in row.payload.items() if k != "idempotency_key"}
            try:
                update = PresenceUpdate.model_validate(payload)
            except ValidationError:
                continue
            row.requeued_as = producer.send(update)
            count += 1
    producer.close()
    console.print(f"requeued {count} request(s) that ended {outcome}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the presence.update payload."""
    console.print_json(json.dumps(json_schema()))


@app.command("settings")
def settings_reference() -> None:
    """Print every setting (environment variable) with its default, as a Markdown table."""
    from worker.settings import settings_markdown

    print(settings_markdown())


@app.command()
def migrate() -> None:
    """Create or upgrade the audit database at DATABASE_URL (alembic upgrade head)."""
    import migrations

    migrations.upgrade(get_settings().database_url)
    console.print("database is at the latest revision")


@app.command()
def demo(
    agents: Annotated[int, typer.Option(min=10, help="Agents in the demo batch.")] = 500,
    budget: Annotated[
        int, typer.Option(min=60, help="The demo org's API budget per minute.")
    ] = 6000,
) -> None:
    """Run everything locally (emulator, Redis, a worker, SQLite) and apply a realistic batch."""
    from cli.demo import run_demo

    raise typer.Exit(run_demo(agents=agents, budget=budget, console=console))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
