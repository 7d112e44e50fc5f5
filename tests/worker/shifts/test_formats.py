"""Schedule files (CSV and JSON) read into validated rows: times end up in UTC, every bad row is
one actionable line naming where it is, and only a file that is no schedule at all raises."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.shifts.formats import RowResult, ScheduledChange, parse_schedule

AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def rows(path: Path) -> list[RowResult]:
    return list(parse_schedule(path))


def only_change(path: Path) -> ScheduledChange:
    [result] = rows(path)
    assert result.error is None, result.error
    assert result.change is not None
    return result.change


def only_error(path: Path) -> str:
    [result] = rows(path)
    assert result.change is None
    assert result.error is not None
    assert "\n" not in result.error
    return result.error


def csv_row(tmp_path: Path, row: str, header: str = "user_id,at,state,reason,timezone") -> Path:
    return write(tmp_path, "shift.csv", f"{header}\n{row}\n")


# -- CSV ----------------------------------------------------------------------------------------
def test_csv_rows_in_any_column_order_become_utc_changes(tmp_path):
    path = write(
        tmp_path,
        "roster.csv",
        "# exported by the WFM tool\n"
        "\n"
        "state, AT ,user_id,capacity_policy,reason,timezone\n"
        f"Break,2026-12-01T09:00:00+01:00,{AGENT},,Coffee,\n"
        "   \n"
        "# the late shift\n"
        f"On Queue,2026-12-01 17:30,{OTHER},defer,,America/New_York\n",
    )

    results = rows(path)

    assert [(r.line, r.error) for r in results] == [(4, None), (7, None)]
    first, second = (r.change for r in results)
    assert first == ScheduledChange(
        user_id=AGENT, at=datetime(2026, 12, 1, 8, 0, tzinfo=UTC), state="Break", reason="Coffee"
    )
    assert first.capacity_policy == "reject"
    assert second is not None
    assert second.at == datetime(2026, 12, 1, 22, 30, tzinfo=UTC)
    assert second.at.tzinfo is UTC
    assert (second.state, second.reason, second.capacity_policy) == ("On Queue", None, "defer")
    assert second.timezone == "America/New_York"


def test_csv_written_by_excel_with_a_bom_and_trailing_empty_cells_reads(tmp_path):
    path = write(
        tmp_path,
        "shift.csv",
        f"user_id,at,state,,\r\n{AGENT},2026-12-01T09:00:00Z,Meal,,\r\n",
        encoding="utf-8-sig",
    )

    assert only_change(path).at == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_a_bad_row_does_not_stop_the_next_ones(tmp_path):
    path = write(
        tmp_path,
        "shift.csv",
        "user_id,at,state\n"
        f"{AGENT},2026-12-01T09:00:00Z,Break\n"
        f"{AGENT},tomorrow,Break\n"
        f"{OTHER},2026-12-01T09:00:00Z,Meal\n",
    )

    results = rows(path)

    assert [(r.line, r.change is not None) for r in results] == [(2, True), (3, False), (4, True)]


# -- time zones ---------------------------------------------------------------------------------
def test_a_naive_time_is_read_in_the_rows_timezone(tmp_path):
    path = csv_row(tmp_path, f"{AGENT},2026-07-01 09:00,Break,,Europe/Berlin")

    assert only_change(path).at == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)  # CEST, +02:00


def test_a_time_with_an_offset_ignores_the_timezone(tmp_path):
    path = csv_row(tmp_path, f"{AGENT},2026-07-01T09:00:00-05:00,Break,,Europe/Berlin")

    assert only_change(path).at == datetime(2026, 7, 1, 14, 0, tzinfo=UTC)


def test_a_naive_time_without_any_timezone_is_an_error(tmp_path):
    error = only_error(csv_row(tmp_path, f"{AGENT},2026-12-01 09:00,Break,,"))

    assert error == (
        "line 2: at: '2026-12-01 09:00' has no UTC offset; add one (e.g. "
        "2026-12-01T09:00:00+01:00) or give a timezone (an IANA time zone such as Europe/Berlin, "
        "America/New_York or UTC)"
    )


def test_local_times_the_clocks_skip_or_repeat_are_errors_with_the_fix(tmp_path):
    skipped = only_error(csv_row(tmp_path, f"{AGENT},2026-03-29 02:30,Break,,Europe/Berlin"))
    repeated = only_error(csv_row(tmp_path, f"{AGENT},2026-10-25 02:30,Break,,Europe/Berlin"))

    assert skipped.startswith("line 2: at: '2026-03-29 02:30' does not exist in Europe/Berlin")
    assert repeated == (
        "line 2: at: '2026-10-25 02:30' happens twice in Europe/Berlin (the clocks go back); "
        "write 2026-10-25T02:30:00+02:00 or 2026-10-25T02:30:00+01:00"
    )


def test_json_file_timezone_applies_to_naive_times_unless_the_row_has_its_own(tmp_path):
    path = write(
        tmp_path,
        "export.json",
        json.dumps(
            {
                "version": 1,
                "timezone": "Europe/Berlin",
                "changes": [
                    {"user_id": AGENT, "at": "2026-12-01T09:00:00", "state": "Break"},
                    {
                        "user_id": OTHER,
                        "at": "2026-12-01T09:00:00",
                        "state": "Break",
                        "timezone": "Asia/Tokyo",
                    },
                    {"user_id": OTHER, "at": "2026-12-01T09:00:00Z", "state": "Meal"},
                ],
            }
        ),
    )

    assert [r.change.at if r.change else r.error for r in rows(path)] == [
        datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    ]


def test_a_change_built_in_python_is_converted_to_utc_too():
    naive = datetime(2026, 12, 1, 9, 0)  # noqa: DTZ001
    change = ScheduledChange(user_id=AGENT, at=naive, timezone="Europe/Paris", state=" Break ")

    assert change.at == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert change.state == "Break"


# -- JSON ---------------------------------------------------------------------------------------
def test_json_export_with_every_field(tmp_path):
    path = write(
        tmp_path,
        "export.json",
        json.dumps(
            {
                "version": 1,
                "changes": [
                    {
                        "user_id": AGENT,
                        "at": "2026-12-01T09:00:00+01:00",
                        "state": "Break",
                        "reason": "Coffee",
                        "timezone": None,
                        "capacity_policy": "force",
                    }
                ],
            }
        ),
    )

    [result] = rows(path)

    assert result.line == 1
    assert result.change == ScheduledChange(
        user_id=AGENT,
        at=datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
        state="Break",
        reason="Coffee",
        capacity_policy="force",
    )


def test_a_bare_json_list_of_changes_reads(tmp_path):
    path = write(
        tmp_path,
        "changes.JSON",
        json.dumps(
            [
                {"user_id": AGENT, "at": "2026-12-01T09:00:00Z", "state": "Break"},
                {"user_id": OTHER, "at": "2026-12-01T10:00:00Z", "state": "Meal"},
            ]
        ),
    )

    assert [(r.line, r.change.user_id if r.change else None) for r in rows(path)] == [
        (1, AGENT),
        (2, OTHER),
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ([AGENT], "change 1: expected an object with user_id, at, state, got a list"),
        (
            {"user_id": AGENT, "at": "2026-12-01T09:00:00Z", "state": "Break", "note": "x"},
            "change 1: note: unknown field (the fields are user_id, at, state, reason, "
            "timezone, capacity_policy, org)",
        ),
        (
            {"user_id": AGENT, "at": "2026-12-01T09:00:00Z", "state": 7},
            "change 1: state: 7 is not text",
        ),
        (
            {"user_id": AGENT, "at": 1796115600, "state": "Break"},
            "change 1: at: 1796115600 is not a time (use ISO 8601, e.g. 2026-12-01T09:00:00+01:00)",
        ),
    ],
)
def test_json_row_errors_name_the_change(tmp_path, change, expected):
    path = write(tmp_path, "export.json", json.dumps({"changes": [change]}))

    assert only_error(path) == expected


# -- row errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            "agent-7,2026-12-01T09:00:00Z,Break,,",
            "line 2: user_id: 'agent-7' is not a Genesys user id (a UUID such as "
            "3ce84f47-4e65-4756-a815-67a2b32e58b8)",
        ),
        (
            f"{AGENT},2026-13-01 09:00,Break,,",
            "line 2: at: '2026-13-01 09:00' is not a time (use ISO 8601, e.g. "
            "2026-12-01T09:00:00+01:00)",
        ),
        (
            f"{AGENT},2026-12-01,Break,,Europe/Berlin",
            "line 2: at: '2026-12-01' is a date without a time of day (use ISO 8601, e.g. "
            "2026-12-01T09:00:00+01:00)",
        ),
        (f"{AGENT},,Break,,", "line 2: at: empty or missing (required)"),
        (f"{AGENT},2026-12-01T09:00:00Z,  ,,", "line 2: state: empty or missing (required)"),
        (
            f"{AGENT},2026-12-01T09:00:00Z,{'B' * 101},,",
            "line 2: state: longer than 100 characters",
        ),
        (
            f"{AGENT},2026-12-01 09:00,Break,,Europe/Berln",
            "line 2: timezone: 'Europe/Berln' is not an IANA time zone such as Europe/Berlin, "
            "America/New_York or UTC",
        ),
        (
            f"{AGENT},2026-12-01T09:00:00Z,Break,,,forse",
            "line 2: capacity_policy: 'forse' is not 'reject', 'defer' or 'force'",
        ),
        (
            f"{AGENT},2026-12-01T09:00:00Z,Break,Coffee, with milk,UTC,reject",
            "line 2: 7 cells but the header names 6 columns (quote values that contain commas)",
        ),
        (
            "agent-7,2026-12-01T09:00:00Z,,,",
            "line 2: user_id: 'agent-7' is not a Genesys user id (a UUID such as "
            "3ce84f47-4e65-4756-a815-67a2b32e58b8); state: empty or missing (required)",
        ),
    ],
    ids=[
        "user_id",
        "time",
        "date-only",
        "no-time",
        "no-state",
        "long-state",
        "zone",
        "policy",
        "cells",
        "two-fields",
    ],
)
def test_each_bad_row_is_one_line_naming_the_line_and_field(tmp_path, row, expected):
    header = "user_id,at,state,reason,timezone,capacity_policy"

    assert only_error(csv_row(tmp_path, row, header)) == expected


def test_line_numbers_count_skipped_lines(tmp_path):
    path = write(
        tmp_path,
        "shift.csv",
        f"# roster\nuser_id,at,state\n\n# morning\n{AGENT},2026-12-01T25:00:00Z,Break\n",
    )

    assert only_error(path).startswith("line 5: at: ")


# -- files that are no schedule -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "shift.xlsx",
            "",
            "shift.xlsx: unknown schedule format '.xlsx'; use a .csv or .json file",
        ),
        (
            "shift.csv",
            f"user_id,when,state,agent\n{AGENT},2026-12-01T09:00:00Z,Break,x\n",
            "shift.csv: line 1: unknown column(s) 'when', 'agent'; missing column(s) at (the "
            "columns are user_id, at, state, reason, timezone, capacity_policy, org; user_id, at, "
            "state are required)",
        ),
        (
            "shift.csv",
            "user_id,at,state,State\n",
            "shift.csv: line 1: column(s) state given twice (the columns are user_id, at, state, "
            "reason, timezone, capacity_policy, org; user_id, at, state are required)",
        ),
        (
            "shift.csv",
            "# nothing but a comment\n\n",
            "shift.csv: no header row (the columns are user_id, at, state, reason, timezone, "
            "capacity_policy, org)",
        ),
        (
            "shift.csv",
            "# roster\n\nuser_id,at,state\n\n",
            "shift.csv: no rows after the header on line 3: nothing to import",
        ),
        (
            "shift.json",
            '{"version": 1, "changes": []}',
            "shift.json: the changes list is empty: nothing to import",
        ),
        (
            "shift.json",
            '{"changes": [}',
            "shift.json: not valid JSON: Expecting value (line 1, column 14)",
        ),
        (
            "shift.json",
            '{"version": 2, "changes": []}',
            "shift.json: version 2 is not supported (this reader knows version 1)",
        ),
        (
            "shift.json",
            '{"timezone": "Mars/Olympus", "changes": []}',
            "shift.json: timezone: 'Mars/Olympus' is not an IANA time zone such as "
            "Europe/Berlin, America/New_York or UTC",
        ),
        (
            "shift.json",
            '{"version": 1, "schedule": []}',
            "shift.json: unknown key(s) 'schedule' (a schedule has version, timezone, changes)",
        ),
        (
            "shift.json",
            '{"version": 1}',
            'shift.json: expected {"version": 1, "changes": [...]} or a list of changes, got '
            "no changes list",
        ),
    ],
    ids=[
        "suffix",
        "columns",
        "repeated",
        "no-header",
        "header-only",
        "no-json-changes",
        "json",
        "version",
        "file-zone",
        "json-keys",
        "no-changes",
    ],
)
def test_a_file_that_is_no_schedule_raises_one_line(tmp_path, name, text, expected):
    path = write(tmp_path, name, text)

    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        parse_schedule(path)


def test_a_file_that_is_not_utf8_raises_one_line(tmp_path):
    path = tmp_path / "shift.csv"
    path.write_bytes("user_id,at,state\nJürgen\n".encode("latin-1"))

    with pytest.raises(
        ValueError,
        match=r"^shift\.csv: line 2 is not UTF-8 text \(byte 2 of the line\); save the file as",
    ):
        parse_schedule(path)


def test_an_unreadable_path_raises_one_line(tmp_path):
    with pytest.raises(
        ValueError, match=r"^cannot read .*missing\.csv: No such file or directory$"
    ):
        parse_schedule(tmp_path / "missing.csv")


def test_an_org_column_names_each_rows_org_and_an_empty_cell_leaves_it_to_the_importer(tmp_path):
    path = write(
        tmp_path,
        "shift.csv",
        f"user_id,at,state,org\n{AGENT},2026-12-01T09:00:00Z,Break,acme\n"
        f"{OTHER},2026-12-01T09:00:00Z,Break,\n",
    )

    [first, second] = rows(path)

    assert [r.change.org if r.change else "invalid" for r in (first, second)] == ["acme", None]


def test_a_json_change_names_its_org(tmp_path):
    change = {"user_id": AGENT, "at": "2026-12-01T09:00:00Z", "state": "Break", "org": "acme"}
    path = write(tmp_path, "export.json", json.dumps({"changes": [change]}))

    assert only_change(path).org == "acme"


def test_a_bad_org_is_one_line_naming_the_row(tmp_path):
    path = write(
        tmp_path, "shift.csv", f"user_id,at,state,org\n{AGENT},2026-12-01T09:00:00Z,Break,ACME\n"
    )

    assert only_error(path).startswith("line 2: org: 'ACME' is not an org name (lower-case")
