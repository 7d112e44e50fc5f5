"""Rich tables for audit rows and statistics, and the CLI's progress bar."""

from __future__ import annotations

from urllib.parse import urlsplit

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from models import AuditRecord
from worker.reports import OrgCount, Summary


def plain(value: object) -> Text:
    """Text from the database or the platform, shown as it is (never read as Rich markup)."""
    return Text(str(value))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def stats_table(summary: Summary, *, window: str | None = None) -> Table:
    table = Table(
        title=(
            f"{summary.total} requests · success {summary.success_rate:.1%} · "
            f"{summary.requests_per_update:.2f} Genesys requests per applied update"
            + (f" · {window}" if window else "")
        )
    )
    for column in ("outcome", "count", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "outcome" else "right")
    for row in summary.by_outcome:
        table.add_row(
            plain(row.outcome), str(row.count), _ms(row.p50_ms), _ms(row.p95_ms), _ms(row.p99_ms)
        )
    return table


def org_table(orgs: list[OrgCount]) -> Table:
    """Requests and success rate of each org, most requests first."""
    table = Table(title="by org")
    for column in ("org", "requests", "success"):
        table.add_column(column, justify="left" if column == "org" else "right")
    for one in orgs:
        table.add_row(plain(one.org), str(one.total), f"{one.success_rate:.1%}")
    return table


def audit_table(rows: list[AuditRecord]) -> Table:
    """Audit rows, one line each; the org column only when the rows span several orgs."""
    table = Table()
    several = len({row.org for row in rows}) > 1
    columns = ("finished", "agent", "from → to", "outcome", "ms", "calls", "detail")
    for column in ("org", *columns) if several else columns:
        table.add_column(column, overflow="fold", no_wrap=column == "finished")
    for row in rows:
        total = None
        if row.requested_at is not None and row.finished_at is not None:
            finished = (
                row.finished_at
                if row.finished_at.tzinfo
                else row.finished_at.replace(tzinfo=row.requested_at.tzinfo)
            )
            total = (finished - row.requested_at).total_seconds() * 1000
        cells: list[RenderableType] = [
            row.finished_at.strftime("%H:%M:%S"),
            plain((row.user_id or "-")[:8]),
            plain(f"{row.from_state or '?'} → {row.to_state or '?'}"),
            plain(row.outcome),
            _ms(total),
            str(row.genesys_requests),
            plain(row.error_message or ""),
        ]
        table.add_row(*([plain(row.org), *cells] if several else cells))
    return table


def progress_bar(console: Console) -> Progress:
    """The CLI's one progress bar: description, bar, done/total, elapsed time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def safe_url(url: str) -> str:
    """``url`` without its user name and password, for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl() if parts.scheme else netloc


SHOWN_ERRORS = 20  # an import prints this many row errors, then a count of the rest
