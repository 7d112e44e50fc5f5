"""Fuzzing ``presence import`` files: any bytes give rows (each valid, or with a one-line error
naming its line) or one line for the whole file; the command itself never crashes and always
ends with its summary or that one line."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cli.main import app
from tests.support.fuzzing import result_or_one_line
from worker.imports import COLUMNS, parse_updates

# The long budget takes minutes here; the short one seconds.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(3600)]
COMMAND = typer.main.get_command(app)  # built once: typer builds it anew on every invoke

AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"
cells = st.sampled_from([AGENT, "Break", "On Queue", "Coffee", "[/]", "#", '"', ""]) | st.text(
    max_size=30
)
csv_texts = st.builds(
    lambda header, rows, blank: "\n".join(
        [",".join(header), *(("" if blank else ",".join(r)) for r in rows)]
    ),
    st.lists(st.sampled_from([*COLUMNS, "extra", "# note", ""]), max_size=8),
    st.lists(st.lists(cells, max_size=8), max_size=6),
    st.booleans(),
)
files = csv_texts.map(lambda t: t.encode("utf-8", "surrogatepass")) | st.binary(max_size=300)


@given(content=files)
def test_an_import_file_never_raises_anything_but_one_line(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "changes.csv"
        path.write_bytes(content)
        rows = result_or_one_line(lambda: parse_updates(path, source="fuzz", now=datetime.now(UTC)))
    for row in rows or []:
        assert (row.update is None) != (row.error is None)
        if row.error is not None:
            assert "\n" not in row.error
            assert row.error.startswith(f"line {row.line}")


@given(content=files)
def test_the_import_command_always_ends_with_a_summary_or_one_line(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "changes.csv"
        path.write_bytes(content)
        result = CliRunner().invoke(COMMAND, ["import", str(path), "--dry-run", "--no-check"])
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
