"""``presence doctor``: the worker's start-up checks, printed as a table before going live."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.preflight import Finding, Verdict, run_checks

STYLES = {Verdict.OK: "green", Verdict.WARN: "yellow", Verdict.FAIL: "red", Verdict.SKIP: "dim"}


def findings_table(findings: list[Finding]) -> Table:
    """One row per check: verdict, what was seen, the fix."""
    table = Table("check", "verdict", "seen", "fix", title="presence doctor")
    for finding in findings:
        style = STYLES[finding.verdict]
        table.add_row(
            finding.check,
            f"[{style}]{finding.verdict.value}[/]",
            escape(finding.detail),
            escape(finding.fix),
        )
    return table


def doctor(
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each network check may take.")
    ] = 5.0,
) -> None:
    """Check settings, Redis, the database, Genesys (reachable, credentials, the OAuth client's
    permissions, the API budget) and the WFM endpoint, as the worker does at start. Changes
    nothing; spends at most nine API requests. Exit status 1 when any check fails."""
    findings = run_checks(timeout_s=timeout)
    console = Console()
    console.print(findings_table(findings))
    failed = [f for f in findings if f.failed]
    warned = [f for f in findings if f.verdict is Verdict.WARN]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed[/], {len(warned)} warning(s)")
        raise typer.Exit(1)
    console.print(f"[green]ready[/]: {len(findings)} checks, {len(warned)} warning(s)")
