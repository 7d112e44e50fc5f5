"""Fuzzing schedule files: any bytes in a .csv or .json file give rows (each valid, or with a
one-line error naming its line) or one line for the whole file — never another error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fuzzing import result_or_one_line
from worker.shifts.formats import COLUMNS, parse_schedule

# The long budget (HYPOTHESIS_PROFILE=long) takes minutes; the short one seconds.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(3600)]

AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"
cells = st.sampled_from(
    [
        AGENT,
        "Break",
        "On Queue",
        "2026-12-01T09:00",
        "2026-03-29T02:30",
        "Europe/Paris",
        "defer",
        "",
    ]
) | st.text(max_size=30)
csv_texts = st.builds(
    lambda header, rows, sep: "\n".join([sep.join(header), *(sep.join(r) for r in rows)]),
    st.lists(st.sampled_from([*COLUMNS, "extra", "#user_id", ""]), max_size=7),
    st.lists(st.lists(cells, max_size=7), max_size=6),
    st.sampled_from([",", ";", "\t"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | cells,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*COLUMNS, "version", "changes", "x"]), inner, max_size=4)
    ),
    max_leaves=12,
)
files = st.one_of(
    st.tuples(st.just(".csv"), csv_texts.map(str.encode)),
    st.tuples(st.just(".json"), json_values.map(lambda v: json.dumps(v).encode())),
    st.tuples(st.sampled_from([".csv", ".json"]), st.binary(max_size=200)),
)


@given(file=files)
def test_a_schedule_file_never_raises_anything_but_one_line(file: tuple[str, bytes]) -> None:
    suffix, content = file
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"schedule{suffix}"
        path.write_bytes(content)
        rows = result_or_one_line(lambda: list(parse_schedule(path)))
    for row in rows or []:
        assert (row.change is None) != (row.error is None)
        if row.error is not None:
            assert "\n" not in row.error
