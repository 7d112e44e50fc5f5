"""``presence shifts``, run in-process against a SQLite database the command migrates itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from cli.main import app
from models import AuditRecord, ShiftChange, ShiftStatus
from models.db import session_scope
from worker.settings import get_settings

AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
AGENT_N = "3ce84f47-4e65-4756-a815-{:012d}"
HEADER = "user_id,at,state,reason,timezone\n"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A fresh (not yet migrated) database and a wide terminal, so table rows stay whole."""
    database_url = f"sqlite:///{tmp_path / 'presence.sqlite3'}"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("GENESYS_REGION", "GENESYS_API_URL", "GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield SimpleNamespace(database_url=database_url, tmp_path=tmp_path, monkeypatch=monkeypatch)
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(app, ["shifts", *args])


def schedule_file(env, text: str, name: str = "roster.csv"):
    path = env.tmp_path / name
    path.write_text(text)
    return path


def stored(env) -> list[ShiftChange]:
    with session_scope(env.database_url) as session:
        return list(session.scalars(select(ShiftChange).order_by(ShiftChange.id)))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("line ")]


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a Rich table, cells stripped."""
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


# -- import -------------------------------------------------------------------------------------
def test_import_schedules_the_good_rows_and_reports_each_bad_one(env):
    path = schedule_file(
        env,
        HEADER
        + f"{AGENT},2026-12-01 09:00,Break,Coffee,Europe/Berlin\n"
        + "agent-7,2026-12-01T09:00:00Z,Break,,\n"
        + f"{OTHER},2026-12-01T17:00:00Z,On Queue,,\n"
        + f"{AGENT},2026-13-01 09:00,Break,,Europe/Berlin\n",
    )

    result = run("import", str(path))

    assert result.exit_code == 1, result.output
    assert error_lines(result.stdout) == [
        "line 3: user_id: 'agent-7' is not a Genesys user id (a UUID such as "
        "3ce84f47-4e65-4756-a815-67a2b32e58b8)",
        "line 5: at: '2026-13-01 09:00' is not a time (use ISO 8601, e.g. "
        "2026-12-01T09:00:00+01:00)",
    ]
    assert "importing" in result.stdout
    assert result.stdout.rstrip().endswith(
        "added 2, updated 0, unchanged 0, already done 0, duplicate 0, invalid 2 of 4 rows"
    )
    rows = stored(env)
    assert [(r.user_id, r.state, r.reason, r.source, r.status) for r in rows] == [
        (AGENT, "Break", "Coffee", "roster.csv", "scheduled"),
        (OTHER, "On Queue", None, "roster.csv", "scheduled"),
    ]
    assert rows[0].due_at.replace(tzinfo=UTC) == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_import_stores_each_rows_org_the_column_winning_over_the_option(env):
    path = schedule_file(
        env,
        "user_id,at,state,org\n"
        f"{AGENT},2099-12-01T09:00:00Z,Break,\n"
        f"{OTHER},2099-12-01T09:00:00Z,Break,globex\n"
        f"{AGENT},2099-12-01T10:00:00Z,Meal,globex\n",
    )

    result = run("import", str(path), "--org", "acme")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "states and reasons of org acme, globex not checked here (ORGS_FILE is not set; the "
        "worker rejects unknown ones when it applies each row)"
    )
    assert [(r.user_id, r.org) for r in stored(env)] == [
        (AGENT, "acme"),
        (OTHER, "globex"),
        (AGENT, "globex"),
    ]


def test_import_of_a_bad_org_option_is_one_line_and_exit_2(env):
    path = schedule_file(env, f"user_id,at,state\n{AGENT},2099-12-01T09:00:00Z,Break\n")

    result = run("import", str(path), "--org", "Acme")

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --org: 'Acme' is not an org name (")


def test_list_and_cancel_by_org(env):
    path = schedule_file(
        env,
        "user_id,at,state,org\n"
        f"{AGENT},2099-12-01T09:00:00Z,Break,acme\n"
        f"{AGENT},2099-12-01T09:00:00Z,Break,\n",
    )
    assert run("import", str(path)).exit_code == 0

    every = run("list")
    acme = run("list", "--org", "acme")
    cancelled = run("cancel", "--user", AGENT, "--org", "acme")

    assert every.exit_code == 0, every.output
    assert sorted(row[0] for row in table_rows(every.stdout)) == ["acme", "default"]
    assert acme.exit_code == 0, acme.output
    assert len(table_rows(acme.stdout)) == 1
    assert cancelled.stdout.strip() == "cancelled 1 scheduled change"
    assert {(r.org, r.status) for r in stored(env)} == {
        ("acme", "cancelled"),
        ("default", "scheduled"),
    }


def test_import_says_when_states_are_not_checked(env):
    path = schedule_file(env, HEADER + f"{AGENT},2099-12-01T09:00:00Z,Holiday,,\n")

    result = run("import", str(path))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "states and reasons not checked: GENESYS_REGION or GENESYS_API_URL, GENESYS_CLIENT_ID, "
        "GENESYS_CLIENT_SECRET not set (the worker rejects unknown ones when it applies each row)"
    )


@pytest.mark.parametrize("name", ["roster.csv", "roster.json"])
def test_unknown_states_and_reasons_are_rejected_at_import(env, emulator, redis_url, name):
    httpx.post(f"{emulator.base_url}/__emulator/reset").raise_for_status()
    for variable, value in {
        "REDIS_URL": redis_url,
        "GENESYS_API_URL": emulator.base_url,
        "GENESYS_CLIENT_ID": emulator.client_id,
        "GENESYS_CLIENT_SECRET": emulator.client_secret,
    }.items():
        env.monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    rows = [
        (AGENT, "2099-12-01T09:00:00Z", "Break", "Coffee"),
        (OTHER, "2099-12-01T09:00:00Z", "Holiday", None),
        (AGENT, "2099-12-01T10:00:00Z", "Meal", "Brunch"),
    ]
    if name.endswith(".csv"):
        text = HEADER + "".join(f"{u},{t},{s},{r or ''},\n" for u, t, s, r in rows)
        where = ["line 3", "line 4"]
    else:
        changes = [{"user_id": u, "at": t, "state": s, "reason": r} for u, t, s, r in rows]
        text = json.dumps({"version": 1, "changes": changes})
        where = ["change 2", "change 3"]

    result = run("import", str(schedule_file(env, text, name=name)))

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0].startswith("states and reasons checked against ")
    errors = [line for line in result.stdout.splitlines() if line.startswith(("line", "change"))]
    assert errors[0].startswith(f"{where[0]}: Unknown state 'Holiday'; use one of: ")
    assert (
        errors[1]
        == f"{where[1]}: Unknown reason 'Brunch' for state 'Meal'; reasons for Meal: Lunch"
    )
    assert [(r.state, r.reason) for r in stored(env)] == [("Break", "Coffee")]


def test_import_of_good_rows_exits_0_and_importing_again_changes_nothing(env):
    path = schedule_file(
        env,
        json.dumps(
            {
                "version": 1,
                "timezone": "Europe/Berlin",
                "changes": [{"user_id": AGENT, "at": "2026-12-01T09:00:00", "state": "Meal"}],
            }
        ),
        name="export.json",
    )

    first = run("import", str(path), "--source", "wfm")
    second = run("import", str(path), "--source", "wfm")

    assert first.exit_code == 0, first.output
    assert "added 1, updated 0" in first.stdout
    assert second.exit_code == 0, second.output
    assert "added 0, updated 0, unchanged 1, already done 0" in second.stdout
    assert [(r.state, r.source) for r in stored(env)] == [("Meal", "wfm")]


def test_import_shows_the_first_20_errors_then_a_count(env):
    bad = "".join(f"not-an-agent-{n},2026-12-01T09:00:00Z,Break,,\n" for n in range(25))
    path = schedule_file(env, HEADER + bad + f"{AGENT},2026-12-01T09:00:00Z,Break,,\n")

    result = run("import", str(path))

    assert result.exit_code == 1
    lines = error_lines(result.stdout)
    assert len(lines) == 20
    assert lines[-1].startswith("line 21: user_id: 'not-an-agent-19'")
    assert "… and 5 more invalid rows" in result.stdout
    assert "added 1, " in result.stdout
    assert "invalid 25 of 26 rows" in result.stdout


def test_dry_run_counts_against_the_database_and_writes_nothing(env):
    path = schedule_file(env, HEADER + f"{AGENT},2026-12-01T09:00:00Z,Break,,\n")
    run("import", str(path))
    path.write_text(
        HEADER + f"{AGENT},2026-12-01T09:00:00Z,Meal,,\n{OTHER},2026-12-01T09:00:00Z,Meal,,\n"
    )

    result = run("import", str(path), "--dry-run")

    assert result.exit_code == 0, result.output
    assert "dry run, nothing written: added 1, updated 1, " in result.stdout
    assert [(r.user_id, r.state) for r in stored(env)] == [(AGENT, "Break")]


def test_already_dispatched_rows_are_reported_and_kept(env):
    path = schedule_file(env, HEADER + f"{AGENT},2026-12-01T09:00:00Z,Break,,\n")
    run("import", str(path))
    with session_scope(env.database_url) as session:
        session.execute(update(ShiftChange).values(status=ShiftStatus.DISPATCHED.value))
    path.write_text(HEADER + f"{AGENT},2026-12-01T09:00:00Z,Meal,,\n")

    result = run("import", str(path))

    assert result.exit_code == 0, result.output
    assert "already done 1" in result.stdout
    assert stored(env)[0].state == "Break"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "roster.txt",
            "anything",
            "error: roster.txt: unknown schedule format '.txt'; use a .csv or .json file\n",
        ),
        (
            "roster.csv",
            f"agent,at,state\n{AGENT},2026-12-01T09:00:00Z,Break\n",
            "error: roster.csv: line 1: unknown column(s) 'agent'; missing column(s) user_id "
            "(the columns are user_id, at, state, reason, timezone, capacity_policy, org; user_id, "
            "at, state are required)\n",
        ),
        (
            "roster.json",
            "[",
            "error: roster.json: not valid JSON: Expecting value (line 1, column 2)\n",
        ),
    ],
    ids=["suffix", "columns", "json"],
)
def test_a_file_that_is_no_schedule_exits_2_with_one_line(env, name, text, expected):
    result = run("import", str(schedule_file(env, text, name=name)))

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == expected


def test_a_missing_file_is_one_line_and_exit_2(env):
    path = env.tmp_path / "week49.csv"

    result = run("import", str(path))

    assert result.exit_code == 2
    assert result.stderr == f"error: cannot read {path}: No such file or directory\n"


def test_a_database_that_cannot_be_opened_is_one_line_and_exit_1(env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{env.tmp_path / 'missing' / 'x.sqlite3'}")
    get_settings.cache_clear()

    result = run("list")

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: database: (sqlite3.OperationalError) unable to open")


# -- list ---------------------------------------------------------------------------------------
def add_three(env):
    path = schedule_file(
        env,
        HEADER
        + f"{AGENT},2099-12-01T09:00:00Z,Break,Coffee,\n"
        + f"{OTHER},2099-12-01T08:00:00Z,On Queue,,\n"
        + f"{AGENT},2099-12-02T09:00:00Z,Meal,,\n",
    )
    assert run("import", str(path)).exit_code == 0


def test_list_shows_changes_by_due_time_with_outcomes_and_totals(env):
    add_three(env)
    with session_scope(env.database_url) as session:
        session.execute(
            update(ShiftChange)
            .where(ShiftChange.id.in_([1, 2]))
            .values(status=ShiftStatus.DISPATCHED.value, lateness_ms=1500.0)
        )
        session.add(
            AuditRecord(
                request_id="shift-1",
                outcome="failed",
                error_code="not.found",
                error_message="user not found",
                finished_at=datetime(2099, 12, 1, 9, 0, 2, tzinfo=UTC),
            )
        )

    result = run("list")

    assert result.exit_code == 0, result.output
    assert table_rows(result.stdout) == [
        ["2", OTHER[:8], "2099-12-01 08:00:00", "On Queue", "dispatched", "1.5 s", "waiting for the worker"],
        ["1", AGENT[:8], "2099-12-01 09:00:00", "Break / Coffee", "dispatched", "1.5 s", "failed: not.found: user not found"],
        ["3", AGENT[:8], "2099-12-02 09:00:00", "Meal", "scheduled", "-", "-"],
    ]  # fmt: skip
    assert "3 shift changes by due time" in result.stdout
    assert "all: scheduled 1 · dispatched 2 · skipped 0 · cancelled 0" in result.stdout


def test_list_shows_how_long_a_scheduled_change_is_overdue(env):
    run("import", str(schedule_file(env, HEADER + f"{AGENT},2020-01-01T09:00:00Z,Break,,\n")))

    [row] = table_rows(run("list").stdout)

    days = (datetime.now(UTC) - datetime(2020, 1, 1, 9, tzinfo=UTC)).total_seconds() / 86400
    assert row[4] == "scheduled"
    assert row[5] == f"{days:.0f} d overdue"


def test_list_filters(env):
    add_three(env)

    by_user = run("list", "--user", AGENT)
    by_time = run("list", "--since", "2099-12-01T09:00:00+01:00", "--until", "2099-12-01T09:00")
    by_status = run("list", "--status", "cancelled")
    limited = run("list", "--limit", "1")

    assert [row[0] for row in table_rows(by_user.stdout)] == ["1", "3"]
    assert [row[0] for row in table_rows(by_time.stdout)] == ["2", "1"]
    assert table_rows(by_status.stdout) == []
    assert "0 shift changes" in by_status.stdout
    assert [row[0] for row in table_rows(limited.stdout)] == ["2"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--status", "done"],
            "error: unknown status 'done'; use one of scheduled, dispatched, skipped, cancelled\n",
        ),
        (
            ["--since", "yesterday"],
            "error: --since: 'yesterday' is not a time (use ISO 8601, e.g. "
            "2026-12-01T09:00:00+01:00; without an offset, UTC)\n",
        ),
    ],
)
def test_list_rejects_a_bad_filter_with_one_line(env, args, expected):
    result = run("list", *args)

    assert result.exit_code == 2
    assert result.stderr == expected


# -- cancel -------------------------------------------------------------------------------------
def test_cancel_by_ids_changes_only_scheduled_rows(env):
    add_three(env)
    with session_scope(env.database_url) as session:
        session.execute(
            update(ShiftChange)
            .where(ShiftChange.id == 2)
            .values(status=ShiftStatus.DISPATCHED.value)
        )

    result = run("cancel", "1", "2")

    assert result.exit_code == 0, result.output
    assert result.stdout == "cancelled 1 scheduled change\n"
    assert [r.status for r in stored(env)] == ["cancelled", "dispatched", "scheduled"]


def test_cancel_by_agent_and_time(env):
    add_three(env)

    result = run("cancel", "--user", AGENT, "--until", "2099-12-01T23:59:59Z")

    assert result.exit_code == 0, result.output
    assert result.stdout == "cancelled 1 scheduled change\n"
    assert run("cancel", "--until", "2099-12-31").stdout == "cancelled 2 scheduled changes\n"


def test_cancel_without_a_selector_exits_2_with_one_line(env):
    add_three(env)

    result = run("cancel")

    assert result.exit_code == 2
    assert result.stderr == (
        "error: say which changes to cancel: give IDS, --user ID or --until TIME\n"
    )
    assert {r.status for r in stored(env)} == {"scheduled"}
