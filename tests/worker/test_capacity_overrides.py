"""Capacity override files: values that once silently disabled the guard are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.rules.capacity import QueuePolicy, load_overrides


def overrides(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "capacity.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_a_valid_file_gives_each_queue_its_policy(tmp_path: Path) -> None:
    path = overrides(tmp_path, '[queues."q-1"]\nmin_on_queue = 3\nmax_waiting_per_agent = 2\n')
    assert load_overrides(path) == {"q-1": QueuePolicy(3, 2.0)}


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (
            "[queues.q]\nmax_waiting_per_agent = nan\n",
            "queues.q.max_waiting_per_agent: Input should be a finite number",
        ),
        (
            "[queues.q]\nmax_waiting_per_agent = inf\n",
            "queues.q.max_waiting_per_agent: Input should be a finite number",
        ),
        (
            "[queues.q]\nmin_on_queue = -5\n",
            "queues.q.min_on_queue: Input should be greater than or equal to 0",
        ),
        (
            '[queues.q]\nmin_on_queue = "3"\n',
            "queues.q.min_on_queue: Input should be a valid integer",
        ),
        (
            "[queues.q]\nmin_on_queue = true\n",
            "queues.q.min_on_queue: Input should be a valid integer",
        ),
        ("[queues.q]\nminimum = 3\n", "queues.q.minimum: Extra inputs are not permitted"),
        ("[queue.q]\nmin_on_queue = 3\n", "queue: Extra inputs are not permitted"),
        ("[queues\n", "CAPACITY_OVERRIDES_FILE"),
    ],
    ids=["nan", "inf", "negative", "text", "boolean", "unknown key", "unknown table", "not TOML"],
)
def test_nonsense_is_a_one_line_error_naming_the_file(
    tmp_path: Path, body: str, complaint: str
) -> None:
    path = overrides(tmp_path, body)
    with pytest.raises(ValueError, match="CAPACITY_OVERRIDES_FILE") as caught:
        load_overrides(path)
    assert complaint in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_file_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "capacity.toml"
    path.write_bytes(b"\xff\xfe[queues]")
    with pytest.raises(ValueError, match="CAPACITY_OVERRIDES_FILE"):
        load_overrides(path)


def test_a_queue_id_with_a_line_break_is_named_on_one_line(tmp_path: Path) -> None:
    path = overrides(tmp_path, '[queues."\\n"]\nmin = 0\n')  # found by fuzzing
    with pytest.raises(ValueError, match="Extra inputs") as caught:
        load_overrides(path)
    assert "\n" not in str(caught.value)
    assert r"queues.'\n'.min" in str(caught.value)
