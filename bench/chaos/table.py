"""The chaos table as text: one line per scenario, the columns the promise is judged by."""

from __future__ import annotations

from rich.table import Table

from bench.chaos.accounting import Tally

COLUMNS = (
    "scenario", "sent", "terminal rows", "lost", "duplicated rows", "applied twice",
    "latest-wins violations", "429s outside storms", "WFM expected", "WFM delivered",
    "WFM duplicated", "WFM redelivered (same event id)", "left unacked", "processes died", "quiesced in",
)  # fmt: skip


def cells(t: Tally) -> list[str]:
    return [
        t.scenario, f"{t.sent:,}", f"{t.terminal:,}", str(t.lost), str(t.duplicated_rows),
        str(t.applied_twice), str(t.latest_wins_violations), str(t.too_many_outside_storms),
        f"{t.wfm_expected:,}", f"{t.wfm_delivered:,}", str(t.wfm_duplicated),
        str(t.wfm_redelivered), str(t.unacknowledged), str(t.died),
        f"{t.seconds:.0f} s" if t.quiesced else f"no ({t.seconds:.0f} s)",
    ]  # fmt: skip


def rich_table(tallies: list[Tally], title: str) -> Table:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for t in tallies:
        table.add_row(*cells(t), style="red" if t.failures() else None)
    return table


def markdown(tallies: list[Tally]) -> str:
    """The table as Markdown (for the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(t)) + " |" for t in tallies]
    return "\n".join(lines)
