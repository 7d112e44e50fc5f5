"""``presence shifts``: import, list and cancel scheduled shift changes (docs/shifts.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from alembic.util.exc import CommandError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import migrations
from cli.definitions import DefinitionsUnavailable, OrgChecks, definition_checks
from cli.errors import ORG_HELP, org_option
from cli.render import SHOWN_ERRORS, progress_bar
from models import ShiftStatus
from models.db import engine_for, session_scope
from producer.schema import DEFAULT_ORG
from worker.settings import get_settings
from worker.shifts import schedule
from worker.shifts.formats import ISO_HINT, RowResult, ScheduledChange, parse_schedule
from worker.shifts.schedule import ShiftRow, utc

app = typer.Typer(no_args_is_help=True, help="Scheduled shift changes: import, list, cancel.")
console = Console()
err = Console(stderr=True, soft_wrap=True)

SOURCE_MAX = 100
STATUSES = tuple(s.value for s in ShiftStatus)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def _database() -> Iterator[str]:
    """DATABASE_URL, migrated to the latest revision; a database error exits 1 with one line."""
    url = get_settings().database_url
    try:
        migrations.upgrade(url)
        yield url
    except (SQLAlchemyError, CommandError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        _fail(f"database: {lines[0]}", code=1)


@contextmanager
def _rolled_back(url: str) -> Iterator[Session]:
    session = sessionmaker(engine_for(url))()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def checked(
    results: list[RowResult], checks: OrgChecks, where: str, org: str = DEFAULT_ORG
) -> list[RowResult]:
    """``results`` with the valid rows whose state or reason their org (their own, else
    ``org``) does not define made invalid (``where`` is how the file counts rows: line or
    change). Rows of an org not checked here are left to the worker."""
    out = []
    for row in results:
        problem = None
        if row.change is not None:
            problem = checks.problem(row.change.org or org, row.change.state, row.change.reason)
        out.append(
            row if problem is None else RowResult(row.line, None, f"{where} {row.line}: {problem}")
        )
    return out


def _time(option: str, value: str | None) -> datetime | None:
    """An option's ISO 8601 time; without an offset it is UTC, like the times ``list`` shows."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        _fail(f"{option}: {value[:60]!r} is not a time ({ISO_HINT}; without an offset, UTC)")
    return utc(parsed)


@app.command("import")
def import_schedule(
    file: Annotated[
        Path,
        typer.Argument(help="A .csv or .json schedule."),
    ],
    source: Annotated[
        str | None, typer.Option(help="Recorded on every row. Default: the file's name.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Validate and count against the database; write nothing."),
    ] = False,
    no_check: Annotated[
        bool,
        typer.Option("--no-check", help="Do not check states and reasons against Genesys first."),
    ] = False,
    org: Annotated[str, typer.Option(help=f"{ORG_HELP} Rows with an org column keep theirs.")] = (
        DEFAULT_ORG
    ),
) -> None:
    """Schedule every valid row of FILE; print each bad row's error (the first 20) and a summary.

    Importing again updates rows still scheduled and leaves the others alone. Each row's state
    and reason are checked against its org's presence definitions when that org's Genesys
    settings are at hand (the default org's GENESYS_*, the others' in ORGS_FILE). Exits 1 when a row was invalid (the valid ones are still imported).
    """
    org = org_option(org) or DEFAULT_ORG
    label = (source if source is not None else file.name[:SOURCE_MAX]).strip()
    if not label or len(label) > SOURCE_MAX:
        _fail(f"--source must be 1 to {SOURCE_MAX} characters")
    try:
        results = list(parse_schedule(file))
    except ValueError as exc:
        _fail(str(exc))
    orgs = sorted({row.change.org or org for row in results if row.change is not None})
    try:
        with definition_checks(get_settings(), orgs, no_check=no_check) as checks:
            results = checked(
                results, checks, "change" if file.suffix.lower() == ".json" else "line", org
            )
    except DefinitionsUnavailable as exc:
        _fail(str(exc), code=1)
    console.print(escape(checks.note), soft_wrap=True)
    errors: list[str] = []
    with (
        _database() as url,
        _rolled_back(url) if dry_run else session_scope(url) as session,
        progress_bar(console) as progress,
    ):
        task = progress.add_task("checking" if dry_run else "importing", total=len(results))

        def valid() -> Iterator[ScheduledChange]:
            for row in results:
                if row.change is not None:
                    yield row.change
                else:
                    errors.append(row.error or f"line {row.line}: invalid")
                    if len(errors) <= SHOWN_ERRORS:
                        progress.console.print(f"[yellow]{escape(errors[-1])}[/]", soft_wrap=True)
                progress.advance(task)

        counts = schedule.add_changes(
            session, valid(), source=label, now=datetime.now(UTC), org=org
        )
    if len(errors) > SHOWN_ERRORS:
        console.print(
            f"[yellow]… and {len(errors) - SHOWN_ERRORS} more invalid rows[/]", soft_wrap=True
        )
    console.print(
        f"{'dry run, nothing written: ' if dry_run else ''}added {counts.added}, "
        f"updated {counts.updated}, unchanged {counts.unchanged}, "
        f"already done {counts.already_done}, duplicate {counts.duplicates}, "
        f"invalid {len(errors)} of {len(results)} rows",
        soft_wrap=True,
    )
    if errors:
        raise typer.Exit(1)


def _duration(ms: float) -> str:
    seconds = ms / 1000
    if abs(seconds) < 1:
        return f"{ms:.0f} ms"
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    if abs(seconds) < 120 * 60:
        return f"{seconds / 60:.0f} min"
    if abs(seconds) < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _lateness(row: ShiftRow, now: datetime) -> str:
    if row.lateness_ms is not None:
        return _duration(row.lateness_ms)
    if row.status == ShiftStatus.SCHEDULED and row.due_at < now:
        return f"{_duration((now - row.due_at).total_seconds() * 1000)} overdue"
    return "-"


def _outcome(row: ShiftRow) -> str:
    if row.outcome is not None:
        return f"{row.outcome}: {row.outcome_detail}" if row.outcome_detail else row.outcome
    if row.status == ShiftStatus.DISPATCHED:
        return "waiting for the worker"
    return row.note or "-"


def shifts_table(rows: list[ShiftRow], now: datetime) -> Table:
    """The listed changes, one line each, times in UTC."""
    table = Table(title=f"{len(rows)} shift change{'' if len(rows) == 1 else 's'} by due time")
    several = len({row.org for row in rows}) > 1
    columns = ("id", "agent", "due (UTC)", "state / reason", "status", "lateness", "outcome")
    for column in ("org", *columns) if several else columns:
        table.add_column(
            column,
            justify="right" if column in ("id", "lateness") else "left",
            overflow="fold",
            no_wrap=column not in ("state / reason", "outcome"),
        )
    for row in rows:
        table.add_row(
            *([escape(row.org)] if several else []),
            str(row.id),
            row.user_id[:8],
            row.due_at.strftime("%Y-%m-%d %H:%M:%S"),
            escape(f"{row.state} / {row.reason}" if row.reason else row.state),
            row.status,
            _lateness(row, now),
            escape(_outcome(row)),
        )
    return table


@app.command("list")
def list_shifts(
    status: Annotated[
        str | None, typer.Option(help=f"Only this status: {', '.join(STATUSES)}.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only this agent (Genesys user id).")] = None,
    since: Annotated[
        str | None, typer.Option(help="Due at or after this time (ISO 8601; no offset = UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Due at or before this time (ISO 8601; no offset = UTC).")
    ] = None,
    org: Annotated[str | None, typer.Option(help="Only this org's changes.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show, earliest due first.")] = 50,
) -> None:
    """Show scheduled shift changes by due time, with each one's outcome, and totals per status."""
    org = org_option(org)
    if status is not None and status not in STATUSES:
        _fail(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    start, end = _time("--since", since), _time("--until", until)
    with _database() as url, session_scope(url) as session:
        rows = schedule.list_changes(
            session, status=status, since=start, until=end, user_id=user, org=org, limit=limit
        )
        totals = schedule.summary(session)
    console.print(shifts_table(rows, datetime.now(UTC)))
    console.print("all: " + " · ".join(f"{name} {count}" for name, count in totals.items()))


@app.command("cancel")
def cancel_shifts(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Shift change ids (from presence shifts list).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only this agent's changes.")] = None,
    until: Annotated[
        str | None, typer.Option(help="Only changes due at or before this time (no offset = UTC).")
    ] = None,
    org: Annotated[
        str | None, typer.Option(help="Only this org's changes (narrows the other selectors).")
    ] = None,
) -> None:
    """Cancel the scheduled changes matching every selector given (IDS, --user, --until, --org).

    Changes already dispatched, skipped or cancelled stay as they are.
    """
    org = org_option(org)
    if not ids and user is None and until is None:
        _fail("say which changes to cancel: give IDS, --user ID or --until TIME")
    end = _time("--until", until)
    with _database() as url, session_scope(url) as session:
        count = schedule.cancel_changes(
            session, ids=ids or None, user_id=user, until=end, org=org, now=datetime.now(UTC)
        )
    console.print(f"cancelled {count} scheduled change{'' if count == 1 else 's'}")
