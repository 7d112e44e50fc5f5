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

from cli.definitions import DefinitionCheck, DefinitionsUnavailable, definition_check
from cli.render import SHOWN_ERRORS, progress_bar, safe_url
from producer import PresenceProducer, PresenceUpdate
from worker.imports import COLUMNS, ImportRow, parse_updates
from worker.settings import get_settings

console = Console()
err = Console(stderr=True, soft_wrap=True)
BATCH = 200  # updates per broker round of the progress bar


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def checked(rows: list[ImportRow], check: DefinitionCheck) -> list[ImportRow]:
    """``rows`` with the valid ones whose state or reason the org does not define made invalid."""
    result = []
    for row in rows:
        problem = None
        if row.update is not None:
            problem = check.problem(row.update.state, row.update.reason)
        result.append(
            row if problem is None else ImportRow(row.line, None, f"line {row.line}: {problem}")
        )
    return result


def plan(rows: list[ImportRow], check: DefinitionCheck) -> list[str]:
    """What each row would do, one line each, as far as the file and the definitions tell."""
    last_line: dict[str, int] = {}
    first_key: dict[str, int] = {}
    for row in rows:
        if row.update is not None:
            last_line[row.update.user_id] = row.line
    lines = []
    for row in rows:
        update = row.update
        if update is None:
            lines.append(f"{row.error} → rejected")
            continue
        text = f"line {row.line}: {update.user_id} → {check.target(update.state, update.reason)}"
        if update.expected_state:
            text += f", only if now {update.expected_state}"
        later = last_line[update.user_id]
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
) -> None:
    """Enqueue every valid row of FILE in file order; print each bad row's error (the first
    20) and a summary.

    Blank lines and lines starting with # are skipped. States and reasons are checked against
    the org's presence definitions when the Genesys settings are set. Exits 1 when a row was
    invalid (the valid ones are still enqueued), 2 when the file is no import file.
    """
    settings = get_settings()
    try:
        rows = parse_updates(file, source=source, now=datetime.now(UTC))
    except ValueError as exc:
        _fail(str(exc))
    try:
        with definition_check(settings, enabled=not no_check) as check:
            rows = checked(rows, check)
            shown = plan(rows, check) if dry_run else []
    except DefinitionsUnavailable as exc:
        _fail(str(exc), code=1)
    console.print(escape(check.note), soft_wrap=True)
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
    overridden = len(updates) - len({u.user_id for u in updates})
    console.print(
        f"{'dry run, nothing queued: would queue' if dry_run else 'queued'} {len(updates)}"
        + (f" ({overridden} set an agent a later line sets again)" if overridden else "")
        + f", invalid {len(errors)} of {len(rows)} rows",
        soft_wrap=True,
        highlight=False,
    )
    if errors:
        raise typer.Exit(1)
