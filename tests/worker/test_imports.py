"""worker/imports.py: ``presence import`` files read into validated updates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.imports import parse_updates

AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "changes.csv"
    path.write_text(text)
    return path


def test_rows_become_updates_in_file_order_with_the_default_source(tmp_path):
    path = write(
        tmp_path,
        "user_id,state,reason,source,message\n"
        f"{AGENT},Break,Coffee,,\n"
        f"{AGENT},On Queue,,wfm,back at 9:15\n",
    )

    first, second = parse_updates(path, source="import", now=NOW)

    assert first.update is not None
    assert second.update is not None
    assert (first.line, first.update.state, first.update.reason, first.update.source) == (
        2, "Break", "Coffee", "import",
    )  # fmt: skip
    assert (second.update.source, second.update.message) == ("wfm", "back at 9:15")
    assert NOW < first.update.requested_at < second.update.requested_at


def test_an_invalid_row_is_one_line_naming_its_line_and_field(tmp_path):
    path = write(tmp_path, f"user_id,state,idempotency_key\n{AGENT},{'x' * 101},k\n")

    [row] = parse_updates(path, source="import", now=NOW)

    assert row.update is None
    assert row.error == "line 2: state: longer than 100 characters"


def test_a_file_that_is_no_import_file_raises_naming_it(tmp_path):
    path = write(tmp_path, "user_id,at,state\n")

    expected = (
        "changes.csv: line 1: unknown column(s) 'at' (the columns are user_id, state, reason, "
        "source, expected_state, idempotency_key, message, org; user_id, state are required)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        parse_updates(path, source="import", now=NOW)
