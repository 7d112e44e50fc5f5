"""worker/rowfiles.py: the CSV reading both importers share, on real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.rowfiles import CsvRow, csv_rows, read_text

KNOWN = ("user_id", "state", "reason")
REQUIRED = ("user_id", "state")


def test_line_numbers_are_the_files_own_past_blank_comment_and_multi_line_records():
    lines = ["# exported 2026-12-01", "", "user_id,state,reason", 'a,Break,"two', 'lines"', "",
             "# a note", "b,Meal,"]  # fmt: skip
    text = "\n".join(lines) + "\n"

    assert csv_rows(text, KNOWN, REQUIRED) == [
        CsvRow(4, {"user_id": "a", "state": "Break", "reason": "two\nlines"}, None),
        CsvRow(8, {"user_id": "b", "state": "Meal"}, None),
    ]


def test_header_names_are_case_insensitive_and_trailing_empty_cells_are_ignored():
    rows = csv_rows("User_ID, State ,,\nx,Break,,\n", KNOWN, REQUIRED)

    assert rows == [CsvRow(2, {"user_id": "x", "state": "Break"}, None)]


def test_a_row_with_more_cells_than_the_header_is_an_error_row():
    [row] = csv_rows("user_id,state\nx,Break,Coffee\n", KNOWN, REQUIRED)

    assert row == CsvRow(
        2, None, "3 cells but the header names 2 columns (quote values that contain commas)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no header row (the columns are user_id, state, reason)"),
        ("user_id,state\n\n# nothing yet\n", "no rows after the header on line 1: nothing to import"),
        ("user_id,,state\nx,,y\n", "line 1: column 2 has no name (the columns are user_id, state, "
         "reason; user_id, state are required)"),
        ("user_id,state,user_id\n", "line 1: column(s) user_id given twice (the columns are "
         "user_id, state, reason; user_id, state are required)"),
    ],
    ids=["empty", "header-only", "unnamed", "repeated"],
)  # fmt: skip
def test_a_file_that_is_no_table_raises_one_line(text, expected):
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        csv_rows(text, KNOWN, REQUIRED)


def test_read_text_drops_the_bom_and_names_the_line_of_a_bad_byte(tmp_path: Path):
    good = tmp_path / "good.csv"
    good.write_bytes("\ufeffuser_id,state\n".encode())
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"user_id,state\nx,Break\ny,Pause caf\xe9\n")

    assert read_text(good) == "user_id,state\n"
    expected = "bad.csv: line 3 is not UTF-8 text (byte 12 of the line); save the file as UTF-8"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        read_text(bad)
