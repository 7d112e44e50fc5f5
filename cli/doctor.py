"""``presence doctor``: the worker's start-up checks, printed as a table before going live."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.orgs import load_orgs
from worker.preflight import Finding, Verdict, run_checks
from worker.preflight.local import load_settings

STYLES = {Verdict.OK: "green", Verdict.WARN: "yellow", Verdict.FAIL: "red", Verdict.SKIP: "dim"}


def findings_table(findings: list[Finding], title: str = "presence doctor") -> Table:
    """One row per check: verdict, what was seen, the fix."""
    table = Table("check", "verdict", "seen", "fix", title=escape(title))
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
    org: Annotated[
        str | None,
        typer.Option(
            help="Check only this org of ORGS_FILE (default: every org the fleet serves)."
        ),
    ] = None,
) -> None:
    """Check settings, Redis, the database, Genesys (reachable, credentials, the OAuth client's
    permissions, the API budget) and the WFM endpoint, as the worker does at start, for every
    org. Changes nothing; spends at most nine API requests per org. Exit status 1 when any check
    fails."""
    loaded, _ = load_settings()
    console = Console()
    if loaded is None or (loaded.orgs_file is None and org is None):
        runs = [("presence doctor", run_checks(timeout_s=timeout))]
    else:
        orgs = load_orgs(loaded)  # an OrgsError is one line (cli.errors)
        if org is not None and org not in orgs:
            Console(stderr=True, soft_wrap=True).print(
                f"[red]error:[/] --org {escape(repr(org))} is not configured; "
                f"known orgs: {escape(', '.join(orgs))}"
            )
            raise typer.Exit(2)
        chosen = [orgs[org]] if org is not None else list(orgs.values())
        runs = [
            (
                f"presence doctor: org {o.name}",
                run_checks(o.settings, timeout_s=timeout, prefix=o.prefix),
            )
            for o in chosen
        ]
    findings = [f for _, found in runs for f in found]
    for title, found in runs:
        console.print(findings_table(found, title))
    failed = [f for f in findings if f.failed]
    warned = [f for f in findings if f.verdict is Verdict.WARN]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed[/], {len(warned)} warning(s)")
        raise typer.Exit(1)
    console.print(f"[green]ready[/]: {len(findings)} checks, {len(warned)} warning(s)")
