"""Fuzzing the configuration files: any text, and any TOML built from the right keys with any
values, gives either a usable rule set or one line saying what is wrong — never another error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fuzzing import result_or_one_line
from tests.worker.flow.fakes import DEFINITIONS
from worker.rules.capacity import load_overrides
from worker.rules.transitions import SYSTEM_PRESENCES, TransitionMatrix

# The long budget (HYPOTHESIS_PROFILE=long) takes minutes; the short one seconds.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(3600)]

names = st.sampled_from([*SYSTEM_PRESENCES, "On Queue", "Coffee", "working", "away "]) | st.text(
    max_size=20
)
toml_scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.text(max_size=20)
    | st.sampled_from(["nan", "inf", "-5", "3"])
)
toml_values = st.recursive(
    toml_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=6
) | st.lists(names, max_size=4)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON-compatible
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def tables(draw_tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for table, entries in draw_tables.items():
        lines.append(f"[{json.dumps(table)}]")
        lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in entries.items())
    return "\n".join(lines) + "\n"


matrix_files = st.dictionaries(
    st.sampled_from(["groups", "allow", "other"]),
    st.dictionaries(names, toml_values, max_size=5),
    max_size=3,
).map(tables) | st.text(max_size=200)


@given(text=matrix_files)
def test_a_matrix_file_loads_or_says_what_is_wrong_in_one_line(text: str) -> None:
    matrix = result_or_one_line(lambda: TransitionMatrix.from_toml(text, origin="matrix.toml"))
    if matrix is None:
        return
    for current in DEFINITIONS:  # a matrix that loads answers every question
        for target in DEFINITIONS:
            matrix.check(current, target)
        matrix.always_allows(current)


overrides_files = st.dictionaries(
    st.sampled_from(["queues", "other"]),
    st.dictionaries(
        st.text(max_size=12),
        st.dictionaries(
            st.sampled_from(["min_on_queue", "max_waiting_per_agent", "min"]),
            toml_scalars,
            max_size=3,
        ),
        max_size=3,
    ),
    max_size=2,
)


def overrides_toml(data: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for table, queues in data.items():
        for queue, values in queues.items():
            lines.append(f"[{table}.{json.dumps(queue)}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


@given(text=overrides_files.map(overrides_toml) | st.text(max_size=200))
def test_capacity_overrides_load_only_with_finite_non_negative_numbers(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "capacity.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        policies = result_or_one_line(lambda: load_overrides(path))
    for policy in (policies or {}).values():
        assert isinstance(policy.min_on_queue, int)
        assert not isinstance(policy.min_on_queue, bool)
        assert policy.min_on_queue >= 0
        assert 0 <= policy.max_waiting_per_agent < float("inf")
