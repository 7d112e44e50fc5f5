"""A message whose producer-set ``expires`` passed before a worker ran it is not applied, and it
does not vanish: Celery drops it, the worker records it ``invalid`` (``message.expired``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from producer.schema import QUEUE, TASK_NAME
from tests.support.pipeline import Pipeline


def test_an_expired_update_is_recorded_not_applied(pipeline: Pipeline) -> None:
    agent = pipeline.agents(2, online=True)
    pipeline.start(1)
    expired = pipeline.app.send_task(
        TASK_NAME,
        args=[pipeline.update(agent[0]["id"], "Break", reason="Coffee")],
        queue=QUEUE,
        expires=datetime.now(UTC) - timedelta(minutes=1),
    ).id
    fresh = pipeline.send(pipeline.update(agent[1]["id"], "Break", reason="Coffee"))

    rows = {r.request_id: r for r in pipeline.wait_rows(2, request_ids=[expired, fresh])}

    assert rows[fresh].outcome == "confirmed"
    assert (rows[expired].outcome, rows[expired].error_code) == ("invalid", "message.expired")
    assert rows[expired].user_id == agent[0]["id"]
    assert pipeline.history([agent[0]["id"]])[agent[0]["id"]] == []
