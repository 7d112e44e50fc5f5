"""``presence import``: enqueue a CSV of presence changes (the file handling of ``presence shifts
import``, the same checks and the same kind of summary)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn
from urllib.parse import urlsplit

import typer
from kombu.exceptions import OperationalError
from rich.console import Console
from rich.markup import escape

from cli.definitions import DefinitionsUnavailable, OrgChecks, definition_checks
from cli.errors import ORG_HELP, org_option
from cli.render import SHOWN_ERRORS, progress_bar, safe_url
from producer import PresenceProducer, PresenceUpdate
from producer.schema import DEFAULT_ORG
from worker.imports import COLUMNS, ImportRow, parse_updates
from worker.settings import get_settings

console = Console()
err = Console(stderr=True, soft_wrap=True)
BATCH = 200  # updates per broker round of the progress bar


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def checked(rows: list[ImportRow], checks: OrgChecks) -> list[ImportRow]:
    """``rows`` with the valid ones whose state or reason their org does not define made
    invalid. Rows of an org not checked here are left to the worker, which rejects an unknown
    state or reason when it applies the row."""
    result = []
    for row in rows:
        problem = None
        if row.update is not None:
            problem = checks.problem(row.update.org, row.update.state, row.update.reason)
        result.append(
            row if problem is None else ImportRow(row.line, None, f"line {row.line}: {problem}")
        )
    return result


def plan(rows: list[ImportRow], checks: OrgChecks) -> list[str]:
    """What each row would do, one line each, as far as the file and the definitions tell."""
    last_line: dict[tuple[str, str], int] = {}  # (org, agent): user ids are per org
    first_key: dict[str, int] = {}
    for row in rows:
        if row.update is not None:
            last_line[row.update.org, row.update.user_id] = row.line
    lines = []
    for row in rows:
        update = row.update
        if update is None:
            lines.append(f"{row.error} → rejected")
            continue
        target = checks.target(update.org, update.state, update.reason)
        text = f"line {row.line}: {update.user_id} → {target}"
        if update.expected_state:
            text += f", only if now {update.expected_state}"
        later = last_line[update.org, update.user_id]
        if later != row.line:
            text += f"; line {later} sets the same agent later and wins"
        key = update.idempotency_key
        if key is not None:
            if key in first_key:
                text += f"; same idempotency key as line {first_key[key]}: applied once"
            else:
                first_key[key] = row.line
        lines.append(text)
    return lines


def _send(producer: PresenceProducer, updates: list[PresenceUpdate]) -> tuple[int, str | None]:
    """Enqueue ``updates`` in order: how many were sent, and why not all (None when all were)."""
    sent = 0
    with progress_bar(console) as progress:
        task = progress.add_task("enqueueing", total=len(updates))
        for start in range(0, len(updates), BATCH):
            chunk = updates[start : start + BATCH]
            try:
                producer.send_many(chunk)
            except OperationalError as exc:
                return sent, (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
            sent += len(chunk)
            progress.advance(task, len(chunk))
    return sent, None


def import_updates(
    file: Annotated[
        Path,
        typer.Argument(
            help=f"CSV with a header row; columns {', '.join(COLUMNS)} (user_id, state required).",
        ),
    ],
    source: Annotated[str, typer.Option(help="Source of rows that give none.")] = "import",
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Say what each row would do; enqueue nothing."),
    ] = False,
    no_check: Annotated[
        bool,
        typer.Option("--no-check", help="Do not check states and reasons against Genesys first."),
    ] = False,
    org: Annotated[str, typer.Option(help=f"{ORG_HELP} Rows with an org column keep theirs.")] = (
        DEFAULT_ORG
    ),
) -> None:
    """Enqueue every valid row of FILE in file order, each on its org's queue; print each bad
    row's error (the first 20) and a summary.

    Blank lines and lines starting with # are skipped. Each row's state and reason are checked
    against its org's presence definitions when that org's Genesys settings are at hand (the
    default org's GENESYS_*, the others' in ORGS_FILE). Exits 1 when a row was
    invalid (the valid ones are still enqueued), 2 when the file is no import file.
    """
    org = org_option(org) or DEFAULT_ORG
    settings = get_settings()
    try:
        rows = parse_updates(file, source=source, now=datetime.now(UTC), org=org)
    except ValueError as exc:
        _fail(str(exc))
    orgs = sorted({row.update.org for row in rows if row.update is not None})
    try:
        with definition_checks(settings, orgs, no_check=no_check) as checks:
            rows = checked(rows, checks)
            shown = plan(rows, checks) if dry_run else []
    except DefinitionsUnavailable as exc:
        _fail(str(exc), code=1)
    console.print(escape(checks.note), soft_wrap=True)
    errors = [row.error for row in rows if row.error is not None]
    if dry_run:
        for line in shown:
            console.print(escape(line), soft_wrap=True, highlight=False)
    else:
        for error in errors[:SHOWN_ERRORS]:
            console.print(f"[yellow]{escape(error)}[/]", soft_wrap=True, highlight=False)
        if len(errors) > SHOWN_ERRORS:
            console.print(f"[yellow]… and {len(errors) - SHOWN_ERRORS} more invalid rows[/]")
    updates = [row.update for row in rows if row.update is not None]
    if not dry_run and updates:
        producer = PresenceProducer(settings.redis_url)
        try:
            sent, failure = _send(producer, updates)
        finally:
            producer.close()
        if failure is not None:
            password = urlsplit(settings.redis_url).password
            if password:
                failure = failure.replace(password, "***")
            _fail(
                f"Redis at {safe_url(settings.redis_url)} (REDIS_URL): {failure}; queued "
                f"{sent} of {len(updates)} valid rows, in file order",
                code=1,
            )
    overridden = len(updates) - len({(u.org, u.user_id) for u in updates})
    console.print(
        f"{'dry run, nothing queued: would queue' if dry_run else 'queued'} {len(updates)}"
        + (f" ({overridden} set an agent a later line sets again)" if overridden else "")
        + f", invalid {len(errors)} of {len(rows)} rows",
        soft_wrap=True,
        highlight=False,
    )
    if errors:
        raise typer.Exit(1)
