"""End-to-end harness for the capacity-guard and WFM tests (``tests/wfm`` imports it).

:class:`Harness` is the shared :class:`tests.support.pipeline.Pipeline` (module emulator, private
``redis-server``, a migrated SQLite audit database per test, worker processes consuming the queues
a test names) plus what these suites need: a larger emulator, capacity settings, the WFM outbox
and sink, queue membership and ``celery beat``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from emulator.launcher import EmulatorProcess, stop_processes
from models import WfmAttempt, WfmDelivery
from tests.support.pipeline import Pipeline, opened

WFM_SECRET = "wfm-sink-secret"  # the emulator sink's default key
STATE_CHANGING = {"confirmed", "applied_unconfirmed", "drifted"}


@pytest.fixture(scope="module")
def emulator_args() -> list[str]:
    """400 agents in 4 queues (each agent in 1-3 of them), fast heartbeats, no rate limit."""
    return ["--users", "400", "--queues", "4", "--heartbeat", "0.5", "--rate-limit", "0"]


class Harness(Pipeline):
    """One test's pipeline, with the audit *and* outbox tables, the WFM sink and ``celery beat``.

    The warm-up agents are set Available on reset, so the warm-up's Available → Available changes
    never consult the capacity guard.
    """

    WARM_UP_AGENTS = 4
    TIMEOUT_S = 120

    def __init__(
        self, emulator: EmulatorProcess, redis_url: str, database_url: str, workdir: Path
    ) -> None:
        super().__init__(emulator, redis_url, database_url, workdir)
        self.beats: list[subprocess.Popen[bytes]] = []

    # -- environment, beat ------------------------------------------------------------------------
    def env(self, **overrides: object) -> dict[str, str]:
        """The shared worker environment with a platform budget the guard tests never reach."""
        return super().env(**{"RATE_LIMIT_PER_MINUTE": "100000", **overrides})

    @property
    def sink_url(self) -> str:
        return f"{self.emulator.base_url}/__wfm/events"

    def wfm_env(self, **overrides: object) -> dict[str, object]:
        """WFM sync to the emulator's sink with short backoffs."""
        return {
            "WFM_WEBHOOK_URL": self.sink_url,
            "WFM_WEBHOOK_SECRET": WFM_SECRET,
            "WFM_RETRY_BACKOFF_S": "0.2",
            "WFM_RETRY_BACKOFF_MAX_S": "1",
            **overrides,
        }

    def beat(self, **overrides: object) -> subprocess.Popen[bytes]:
        """``celery -A worker.app beat`` (its schedule file in the test's directory)."""
        log = (self.workdir / f"beat-{len(self.beats)}.log").open("wb")
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO",
            "-s", str(self.workdir / f"beat-schedule-{len(self.beats)}"),
        ]  # fmt: skip
        process = subprocess.Popen(
            cmd, env={**os.environ, **self.env(**overrides)}, stdout=log, stderr=subprocess.STDOUT
        )
        self.beats.append(process)
        return process

    def logs(self) -> str:
        beats = [p.read_text(errors="replace")[-3000:] for p in self.workdir.glob("beat-*.log")]
        return "\n".join([super().logs(), *beats])

    def close(self) -> None:
        stop_processes(self.beats, timeout_s=20)
        super().close()

    # -- the outbox table ---------------------------------------------------------------------
    def deliveries(self) -> list[WfmDelivery]:
        with Session(self.engine) as session:
            return list(session.scalars(select(WfmDelivery).order_by(WfmDelivery.id)))

    def attempts(self) -> list[WfmAttempt]:
        with Session(self.engine) as session:
            return list(session.scalars(select(WfmAttempt).order_by(WfmAttempt.id)))

    def wait_deliveries(
        self, *, states: set[str], count: int | None = None, timeout_s: float | None = None
    ) -> list[WfmDelivery]:
        """Wait until every outbox row (at least ``count`` of them) is in one of ``states``."""
        timeout_s = self.TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.deliveries()
            if (count is None or len(rows) >= count) and all(r.state in states for r in rows):
                return rows
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"outbox not settled after {timeout_s:.0f} s: "
                    f"{[(r.id, r.state, r.attempts, r.last_status) for r in rows]}\n{self.logs()}"
                )
            time.sleep(0.2)

    # -- the emulator -------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        for user in self.warm_up_agents():
            self.set_presence(user["id"], "Available")  # warm-up changes never consult the guard

    def active_users(self) -> list[dict[str, Any]]:
        """Read afresh each time: the tests staff queues through the admin API."""
        return [u for u in self.users() if u["state"] == "active"]

    def history_paths(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """Per agent, how each presence change came (``patch``, ``admin``, …), oldest first."""
        history = self.history(user_ids)
        return {u: [entry["path"] for entry in entries] for u, entries in history.items()}

    def sink(self) -> dict[str, Any]:
        """The WFM sink: ``{"summary": …, "deliveries": […]}``."""
        result: dict[str, Any] = self.admin("GET", "/wfm/deliveries").json()
        return result

    def joined_members(self, queue_id: str) -> set[str]:
        """Users joined to the queue (the ones its observations count)."""
        out: set[str] = set()
        page = 1
        while True:
            listing = self.api_get(
                f"/api/v2/routing/queues/{queue_id}/members",
                pageSize=100,
                pageNumber=page,
                joined="true",
            )
            out |= {m["id"] for m in listing["entities"]}
            if len(listing["entities"]) < 100:
                return out
            page += 1


@pytest.fixture
def harness(
    pipeline_emulator: EmulatorProcess,
    pipeline_redis_url: str,
    audit_database: str,
    tmp_path: Path,
) -> Iterator[Harness]:
    """A reset emulator (warm-up agents set Available), an empty Redis, a fresh migrated audit
    database; every process started through it is stopped at the end of the test."""
    yield from opened(Harness(pipeline_emulator, pipeline_redis_url, audit_database, tmp_path))
