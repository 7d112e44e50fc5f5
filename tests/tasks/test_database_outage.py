"""A dead-letter due while the audit database is down, with real processes: a PostgreSQL of the
test's own stopped (``-m immediate``) and started again, a ``celery -A worker.app worker`` and
the emulator failing every PATCH, so each request gives up while no row can be written.

Before: the dead-letter write raised outside the retry guard, Celery counted the task as failed
and acknowledged it: no row, no message. Now the write is retried until the database is back.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import migrations
from emulator.launcher import EmulatorProcess
from tests.support.pipeline import Pipeline, opened
from tests.support.services import PrivatePostgres, private_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]  # warm-up, outage, retries
SINGLES = 5
WAVE = 3
DOWN_S = 8.0


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        migrations.upgrade(server.url)
        yield server


@pytest.fixture
def outage(
    pipeline_emulator: EmulatorProcess,
    pipeline_redis_url: str,
    postgres: PrivatePostgres,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    yield from opened(Pipeline(pipeline_emulator, pipeline_redis_url, postgres.url, tmp_path))


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_dead_letter_due_while_the_database_is_down_is_written_once_it_is_back(
    outage: Pipeline, postgres: PrivatePostgres, pool: str
) -> None:
    fleet = outage.start(1, pool=pool, concurrency=4, MAX_RETRIES=1)
    agents = outage.agents(SINGLES + WAVE, online=True)
    outage.admin("POST", "/faults/errors", {"endpoint": "presence.patch", "status": 503})
    outage.admin("POST", "/faults/errors", {"endpoint": "presence.bulk_put", "status": 503})
    postgres.stop()
    singles = [outage.send(outage.update(a["id"], "Available")) for a in agents[:SINGLES]]
    wave = {f"wave-{a['id']}": outage.update(a["id"], "Available") for a in agents[SINGLES:]}
    outage.send_wave(wave)
    ids = [*singles, *wave]

    deadline = time.monotonic() + 60
    while "cannot record dead_letter yet" not in outage.full_logs():
        assert time.monotonic() < deadline, outage.logs()
        time.sleep(0.5)
    time.sleep(DOWN_S)  # several write attempts fail meanwhile
    postgres.start()

    outage.wait_rows(len(ids), request_ids=ids, timeout_s=120)
    outage.wait_idle(timeout_s=60)
    rows = outage.rows(ids)
    assert Counter(r.request_id for r in rows) == dict.fromkeys(ids, 1), [
        (r.request_id, r.outcome) for r in rows
    ]
    assert {r.outcome for r in rows} == {"dead_letter"}, [(r.outcome, r.error_code) for r in rows]
    assert [p.poll() for p in fleet.processes] == [None] * len(fleet.processes)


def test_an_unknown_org_and_a_wave_element_of_another_org_are_recorded_once_the_database_is_back(
    outage: Pipeline, postgres: PrivatePostgres
) -> None:
    fleet = outage.start(1, pool="threads", concurrency=4, MAX_RETRIES=30)
    agents = outage.agents(3, online=True)
    postgres.stop()
    unknown = outage.send(outage.update(agents[0]["id"], "Available", org="nosuch"))
    wave = {
        f"wave-{a['id']}": outage.update(a["id"], "Available", **({"org": "acme"} if i else {}))
        for i, a in enumerate(agents[1:])
    }
    outage.send_wave(wave)
    mixed = [request_id for request_id, p in wave.items() if p.get("org") == "acme"]

    deadline = time.monotonic() + 60
    while "failed unexpectedly" not in outage.full_logs():  # a write failed: the retry is on
        assert time.monotonic() < deadline, outage.logs()
        time.sleep(0.5)
    time.sleep(DOWN_S)
    postgres.start()

    ids = [unknown, *wave]
    outage.wait_rows(len(ids), request_ids=ids, timeout_s=120)
    outage.wait_idle(timeout_s=60)
    rows = {r.request_id: r for r in outage.rows(ids)}
    assert sorted(rows) == sorted(ids)
    assert Counter(r.request_id for r in outage.rows(ids)) == dict.fromkeys(ids, 1)
    assert (rows[unknown].outcome, rows[unknown].error_code) == ("invalid", "org.unknown")
    assert [(rows[i].outcome, rows[i].error_code) for i in mixed] == [("invalid", "org.mixed")]
    assert [p.poll() for p in fleet.processes] == [None] * len(fleet.processes)
