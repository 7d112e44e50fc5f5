"""``presence``: operate the presence worker from a shell."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.doctor import doctor
from cli.errors import ORG_HELP, org_option, run
from cli.imports import import_updates
from cli.render import audit_table, org_table, plain, stats_table
from cli.shifts import app as shifts_app
from models import Outcome
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from producer.schema import DEFAULT_ORG, invalid_message, json_schema
from worker import audit as audit_service
from worker import names, reports, wfm
from worker.settings import get_settings
from worker.version import package_version

DEFAULT_STATS_HOURS = 24.0
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.command()(doctor)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per error, whatever the width


def _print_version(value: bool) -> None:
    if value:
        typer.echo(package_version())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed presence-worker version and exit.",
        ),
    ] = False,
) -> None:
    # The options that come before any command; the help text is the module docstring.
    pass


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
    org: Annotated[str, typer.Option(help=ORG_HELP)] = DEFAULT_ORG,
) -> None:
    """Enqueue one presence change on its org's queue and print its request id."""
    org = org_option(org) or DEFAULT_ORG
    try:
        update = PresenceUpdate(
            user_id=user, state=state, reason=reason, source=source, expected_state=expected,
            idempotency_key=key, message=message, requested_at=datetime.now(UTC), org=org,
        )  # fmt: skip
    except ValidationError as exc:
        err.print(f"[red]error:[/] {escape(invalid_message(exc))}")
        raise typer.Exit(2) from None
    producer = _producer()
    request_id = producer.send(update)
    producer.close()
    console.print(f"queued {request_id}")


app.command("import")(import_updates)


@app.command()
def audit(
    user: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    outcome: Annotated[str | None, typer.Option(help="Only this outcome, e.g. failed.")] = None,
    org: Annotated[str | None, typer.Option(help="Only this org's requests.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show, newest first.")] = 20,
) -> None:
    """Show audit rows, newest first."""
    org = org_option(org)
    if outcome is not None and outcome not in {o.value for o in Outcome}:
        err.print(
            f"[red]error:[/] unknown outcome {escape(repr(outcome))}; use one of {', '.join(o.value for o in Outcome)}"
        )
        raise typer.Exit(2)
    with session_scope(get_settings().database_url) as session:
        rows = reports.recent(session, user_id=user, outcome=outcome, org=org, limit=limit)
        console.print(audit_table(rows))


@app.command()
def stats(
    hours: Annotated[
        float,
        typer.Option(min=0, help="Cover the requests finished in the last HOURS (0: every one)."),
    ] = DEFAULT_STATS_HOURS,
    org: Annotated[
        str | None, typer.Option(help="Only this org's requests (else every org's, and per org).")
    ] = None,
) -> None:
    """Success rate, p50/p95/p99 latency by outcome, Genesys requests per update (computed by
    the database, over the last 24 hours unless --hours says otherwise); without --org, the
    requests and success rate of each org too when there is more than one."""
    org = org_option(org)
    since = datetime.now(UTC) - timedelta(hours=hours) if hours else None
    with session_scope(get_settings().database_url) as session:
        summary = reports.summarize(session, since=since, org=org)
        orgs = reports.by_org(session, since=since) if org is None else []
    window = f"last {hours:g} h" if hours else "all time"
    if org is not None:
        window = f"org {org} · {window}"
    console.print(stats_table(summary, window=window))
    if len(orgs) > 1:
        console.print(org_table(orgs))


@app.command()
def requeue(
    outcome: Annotated[
        str, typer.Option(help="Requeue requests that ended with this outcome.")
    ] = "dead_letter",
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    org: Annotated[str | None, typer.Option(help="Only this org's requests.")] = None,
) -> None:
    """Enqueue again the requests that ended with OUTCOME (once each, each on its org's queue;
    a newer request for the same agent still wins)."""
    org = org_option(org)
    if outcome not in audit_service.REQUEUEABLE:
        allowed = ", ".join(sorted(audit_service.REQUEUEABLE))
        err.print(f"[red]error:[/] only {allowed} can be requeued")
        raise typer.Exit(2)
    producer = _producer()
    with session_scope(get_settings().database_url) as session:
        count = audit_service.requeue(
            session, outcome=Outcome(outcome), limit=limit, send=producer.send, org=org
        )
    producer.close()
    of_org = f" in org {org}" if org else ""
    console.print(f"requeued {count} request(s) that ended {outcome}{of_org}")


wfm_app = typer.Typer(no_args_is_help=True, help="WFM deliveries: inspect and retry.")
app.add_typer(wfm_app, name="wfm")
app.add_typer(shifts_app, name="shifts")


@wfm_app.command("failed")
def wfm_failed(limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 50) -> None:
    """Deliveries that gave up, newest first, with their last error."""
    with session_scope(get_settings().database_url) as session:
        rows = wfm.failed(session, limit=limit)
        table = Table("id", "event id", "agent", "attempts", "last status", "last error")
        for row in rows:
            table.add_row(
                str(row.id),
                plain(row.event_id),
                plain(str(row.payload.get("agent_id", ""))[:8]),
                str(row.attempts),
                str(row.last_status or "-"),
                plain(row.last_error or ""),
            )
        console.print(table)


@wfm_app.command("retry")
def wfm_retry(
    delivery_id: Annotated[int | None, typer.Option("--id", help="One delivery.")] = None,
    all_failed: Annotated[bool, typer.Option("--all", help="Every failed delivery.")] = False,
) -> None:
    """Send failed deliveries again (same event id: receivers de-duplicate)."""
    if (delivery_id is None) == (not all_failed):
        err.print("[red]error:[/] give exactly one of --id ID or --all")
        raise typer.Exit(2)
    try:
        with session_scope(get_settings().database_url) as session:
            ids = wfm.reset_failed(session, delivery_id=delivery_id)
    except LookupError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    producer = _producer()
    for one in ids:  # after commit: the task must see the row pending
        producer.app.send_task(names.WFM_SYNC_TASK, args=(one,), queue=names.WFM_QUEUE)
    producer.close()
    console.print(f"re-sent {len(ids)} deliver{'y' if len(ids) == 1 else 'ies'}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the presence.update payload."""
    console.print_json(json.dumps(json_schema()))


@app.command()
def metrics(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port of /metrics.")] = 9108,
    address: Annotated[
        str | None, typer.Option(help="Interface to bind. Default: METRICS_HOST (127.0.0.1).")
    ] = None,
) -> None:
    """Serve the workers' Prometheus metrics: every process's files in PROMETHEUS_MULTIPROC_DIR
    (the same directory as the workers') merged into one /metrics."""
    from worker.observability import metrics as observed

    path = observed.multiproc_dir()
    if path is None:
        err.print(f"[red]error:[/] set {observed.MULTIPROC_ENV} to the workers' metrics directory")
        raise typer.Exit(2)
    address = address or get_settings().metrics_host
    try:
        _, thread = observed.serve(port, address)
    except OSError as exc:
        err.print(f"[red]error:[/] cannot listen on {address}:{port}: {escape(str(exc))}")
        raise typer.Exit(1) from None
    err.print(f"serving {escape(path)} on http://{address}:{port}/metrics")
    thread.join()


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
def flower(
    address: Annotated[
        str, typer.Option(help="Interface to bind; loopback unless you mean otherwise.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 5555,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Run without basic auth (loopback only).")
    ] = False,
    allow_control: Annotated[
        bool,
        typer.Option(
            "--allow-control",
            help="Enable Flower's revoke/terminate/pool controls (a revoked request leaves no "
            "audit row).",
        ),
    ] = False,
) -> None:
    """Run Flower on REDIS_URL: live tasks, retries and workers (memory only; the audit table is
    the record). Basic auth from FLOWER_BASIC_AUTH=user:password."""
    import os

    from cli.flower import FlowerConfigError, flower_invocation

    try:
        cmd, env, banner = flower_invocation(
            address=address,
            port=port,
            no_auth=no_auth,
            allow_control=allow_control,
            environ=os.environ,
        )
    except FlowerConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    err.print(banner)
    os.execve(cmd[0], cmd, env)  # noqa: S606 - replaces this process: signals reach Flower


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
    run(app)


if __name__ == "__main__":
    main()
