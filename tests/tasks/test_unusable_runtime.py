"""A worker that cannot build its runtime keeps every message: each is retried, none is
acknowledged away without a row (once 0 of 5 requests were recorded and the queue was empty)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.pipeline import Pipeline


def test_messages_wait_for_a_worker_that_can_apply_them(pipeline: Pipeline, tmp_path: Path) -> None:
    broken = tmp_path / "matrix.toml"
    broken.write_text("[groups\n")
    agents = pipeline.agents(5, online=True)
    # A retry after 2 s instead of 30: the same path, each message retried and never dropped.
    unusable = pipeline.start(
        1,
        warm_up=False,
        PREFLIGHT_ON_START="false",
        TRANSITION_MATRIX_FILE=str(broken),
        RUNTIME_RETRY_S="2",
    )
    sent = [pipeline.send(pipeline.update(a["id"], "Break", reason="Coffee")) for a in agents]

    deadline = time.monotonic() + 60
    while unusable.logs().count("cannot start the update flow") < len(sent):
        assert time.monotonic() < deadline, unusable.logs()
        time.sleep(0.2)
    assert pipeline.rows() == []
    while pipeline.queue_length() != len(sent):  # each one kept for its retry, none dropped
        assert time.monotonic() < deadline, (pipeline.queue_length(), unusable.logs())
        time.sleep(0.2)
    unusable.stop()  # the retries wait in the broker ledger for the next worker

    # No warm-up: the new worker applies the due retries as soon as it starts.
    pipeline.start(1, warm_up=False)
    rows = pipeline.wait_rows(len(sent), request_ids=sent)

    assert sorted(r.request_id for r in rows) == sorted(sent)
    assert {r.outcome for r in rows} == {"confirmed"}
