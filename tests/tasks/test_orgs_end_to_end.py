"""Two orgs on one fleet, end to end: real worker processes, a real emulator serving orgs
``acme`` and ``globex`` (and ``default``) whose user ids are the same, a real Redis and audit
database.

The workers read the orgs file (``ORGS_FILE``) naming both orgs' clients; producers address an
org with the payload's ``org`` field on its queue ``presence.<org>``. Run alone with
``pytest -m orgs``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from bench.pipeline import api_requests
from emulator.launcher import EmulatorProcess
from producer.schema import WAVE_TASK_NAME, queue_for, wave_element
from sandbox.orgs import emulator_entries, send_to_org, write_orgs_file
from tests.support.pipeline import APPLIED, Pipeline
from worker.embedded_redis import _free_port

USERS = 100
A, B = "acme", "globex"
ORGS = ("default", A, B)
STATES = ("Available", "Busy", "Meeting")  # allowed from any state; none On Queue

pytestmark = [pytest.mark.orgs, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def pipeline_emulator() -> Iterator[EmulatorProcess]:
    """``default``, ``acme`` and ``globex``, every org's users carrying the same ids; no rate limit
    unless a test sets one."""
    with EmulatorProcess(
        args=["--users", str(USERS), "--queues", "3", "--heartbeat", "0.5", "--rate-limit", "0"],
        orgs=[f"{A},users={USERS}", f"{B},users={USERS}"],
        shared_user_ids=True,
    ) as proc:
        yield proc


class Orgs:
    """The pipeline seen org by org: workers with the orgs file, payloads sent to an org's
    queue, the emulator's admin API on one org, the audit rows with their ``org``."""

    def __init__(self, pipeline: Pipeline, workdir: Path) -> None:
        self.pipeline = pipeline
        self.workdir = workdir

    def start(
        self,
        options: Mapping[str, Mapping[str, object]] | None = None,
        *,
        warm: tuple[str, ...] = ORGS,
        **env_overrides: object,
    ) -> None:
        """One worker process with both orgs in its orgs file (``options``: per-org settings),
        holding a connected, primed channel in each org of ``warm``."""
        entries = emulator_entries(self.pipeline.emulator, [A, B], options)
        env = write_orgs_file(self.workdir / "orgs.toml", entries)
        fleet = self.pipeline.start(1, concurrency=4, warm_up=False, **env, **env_overrides)
        for index, org in enumerate(warm):
            self.warm_up(org, self.eligible()[-1 - index], fleet.logs)

    def warm_up(self, org: str, user_id: str, logs: Callable[[], str]) -> None:
        """Send ``org`` an update for ``user_id`` (a reserved agent); wait for its row and for a
        connected channel of ``org`` carrying every active agent's topic."""
        current = self.users(org)[user_id]["presence"]
        request_id = self.send(org, Pipeline.update(user_id, other_state(current)))
        self.pipeline.wait_rows(1, request_ids=[request_id])
        self.pipeline.warm_up_ids.add(request_id)  # from now on out of the test's rows
        active = sum(1 for u in self.users(org).values() if u["state"] == "active")
        deadline = time.monotonic() + Pipeline.TIMEOUT_S
        while time.monotonic() < deadline:
            channels = [c for c in self.admin(org, "GET", "/channels") if c["connected"]]
            if any(c["topics"] >= active for c in channels):
                return
            time.sleep(0.2)
        pytest.fail(
            f"org {org}: no primed channel: {self.admin(org, 'GET', '/channels')}\n{logs()}"
        )

    def send(self, org: str, payload: dict[str, Any]) -> str:
        """Enqueue one payload for ``org`` on its queue; the request id."""
        return send_to_org(self.pipeline.app, org, [payload])[0]

    def admin(self, org: str, method: str, path: str, json: object = None) -> Any:
        params = {} if org == "default" else {"org": org}
        response = self.pipeline.http.request(
            method, f"/__emulator{path}", params=params, json=json
        )
        response.raise_for_status()
        return response.json()

    def users(self, org: str) -> dict[str, dict[str, Any]]:
        return {u["id"]: u for u in self.admin(org, "GET", "/users")}

    def eligible(self) -> list[str]:
        """User ids active and off queue in every org alike (no capacity rule applies)."""
        users = [self.users(org) for org in ORGS]
        return [
            user_id
            for user_id in users[0]
            if all(
                user_id in org
                and org[user_id]["state"] == "active"
                and org[user_id]["systemPresence"] != "On Queue"
                for org in users
            )
        ]

    def agents(self, count: int) -> list[str]:
        """``count`` eligible user ids, never a warm-up agent."""
        fit = self.eligible()[: -len(ORGS)]
        assert len(fit) >= count, f"only {len(fit)} agents fit in every org"
        return fit[:count]

    def audit(self, request_ids: list[str], timeout_s: float = 60) -> dict[str, Any]:
        """Each request's audit row (``org``, ``outcome``, ``error_code``, ``error_message``),
        once all have one."""
        self.pipeline.wait_rows(len(request_ids), request_ids=request_ids, timeout_s=timeout_s)
        with self.pipeline.engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT request_id, org, outcome, error_code, error_message FROM presence_audit"
                )
            ).all()
        return {row.request_id: row for row in found if row.request_id in request_ids}

    def finished(self, request_ids: list[str]) -> int:
        return len(self.pipeline.rows(request_ids))

    def requests(self, org: str) -> tuple[int, int]:
        """(platform requests the emulator admitted for ``org``, its 429 answers)."""
        return api_requests(self.admin(org, "GET", "/stats"))


@pytest.fixture
def orgs(pipeline: Pipeline, tmp_path: Path) -> Orgs:
    return Orgs(pipeline, tmp_path)


def other_state(current: str, *avoid: str) -> str:
    return next(s for s in STATES if s != current and s not in avoid)


def test_the_same_user_id_in_two_orgs_changes_each_orgs_own_agent(orgs: Orgs) -> None:
    orgs.start()
    [user_id] = orgs.agents(1)
    before = {org: orgs.users(org)[user_id]["presence"] for org in ORGS}
    a_state = other_state(before[A])
    b_state = other_state(before[B], a_state)

    a_id = orgs.send(A, Pipeline.update(user_id, a_state))
    b_id = orgs.send(B, Pipeline.update(user_id, b_state))
    rows = orgs.audit([a_id, b_id])

    assert (rows[a_id].org, rows[a_id].outcome) == (A, "confirmed")
    assert (rows[b_id].org, rows[b_id].outcome) == (B, "confirmed")
    assert orgs.users(A)[user_id]["presence"] == a_state
    assert orgs.users(B)[user_id]["presence"] == b_state
    assert orgs.users("default")[user_id]["presence"] == before["default"]
    a_history = orgs.admin(A, "GET", "/history", None)[user_id]
    b_history = orgs.admin(B, "GET", "/history", None)[user_id]
    assert [(e["path"], e["clientId"]) for e in a_history] == [("patch", f"presence-worker-{A}")]
    assert [(e["path"], e["clientId"]) for e in b_history] == [("patch", f"presence-worker-{B}")]
    assert user_id not in orgs.admin("default", "GET", "/history")


def test_an_update_without_org_is_the_default_orgs_as_before(orgs: Orgs) -> None:
    orgs.start()
    [user_id] = orgs.agents(1)
    before = {org: orgs.users(org)[user_id]["presence"] for org in ORGS}
    state = other_state(before["default"])

    request_id = orgs.send("default", Pipeline.update(user_id, state))
    rows = orgs.audit([request_id])

    assert (rows[request_id].org, rows[request_id].outcome) == ("default", "confirmed")
    assert orgs.users("default")[user_id]["presence"] == state
    assert orgs.users(A)[user_id]["presence"] == before[A]
    assert orgs.users(B)[user_id]["presence"] == before[B]


def test_one_org_out_of_budget_leaves_the_other_orgs_updates_going_at_once(orgs: Orgs) -> None:
    budget = 6
    orgs.admin(A, "PUT", "/settings", {"rate_limit_per_minute": budget})
    orgs.start({A: {"rate_limit_per_minute": budget}}, warm=(B,))
    agents = orgs.agents(15)
    base = datetime.now(UTC)
    a_ids = [
        orgs.send(A, Pipeline.update(u, "Busy", requested_at=base + timedelta(milliseconds=i)))
        for i, u in enumerate(agents)
    ]  # more than a's budget for minutes, queued before any of b's

    b_now = orgs.users(B)
    b_ids = [
        orgs.send(B, Pipeline.update(u, other_state(b_now[u]["presence"]))) for u in agents[:5]
    ]
    b_rows = orgs.audit(b_ids, timeout_s=15)

    assert {r.org for r in b_rows.values()} == {B}
    assert {r.outcome for r in b_rows.values()} <= APPLIED
    a_admitted, a_rejected = orgs.requests(A)
    assert 0 < a_admitted <= budget  # at work, within its own budget
    assert a_rejected == 0
    assert orgs.finished(a_ids) < len(a_ids)
    assert orgs.requests(B)[1] == 0


def test_each_org_has_its_own_token_and_channel(orgs: Orgs) -> None:
    orgs.start()
    [user_id] = orgs.agents(1)
    current = {org: orgs.users(org)[user_id]["presence"] for org in (A, B)}

    ids = [orgs.send(org, Pipeline.update(user_id, other_state(current[org]))) for org in current]
    rows = orgs.audit(ids)

    assert [rows[i].outcome for i in ids] == ["confirmed", "confirmed"]
    for org in (A, B):
        tokens = orgs.admin(org, "GET", "/stats")["tokens"]
        channels = [c for c in orgs.admin(org, "GET", "/channels") if c["connected"]]
        assert tokens
        assert {t["clientId"] for t in tokens} == {f"presence-worker-{org}"}
        assert channels
        assert {c["clientId"] for c in channels} == {f"presence-worker-{org}"}
        assert all(c["topics"] > 0 for c in channels)


def test_a_wave_applies_its_own_orgs_changes_and_refuses_another_orgs(orgs: Orgs) -> None:
    orgs.start(warm=(A,))
    first, second, stray = orgs.agents(3)
    a_now, b_now = orgs.users(A), orgs.users(B)
    wanted = {u: other_state(a_now[u]["presence"]) for u in (first, second)}
    ids = [f"wave-{uuid.uuid4()}" for _ in range(3)]
    elements = [
        wave_element(ids[0], {**Pipeline.update(first, wanted[first]), "org": A}),
        wave_element(ids[1], {**Pipeline.update(second, wanted[second]), "org": A}),
        wave_element(ids[2], {**Pipeline.update(stray, "Busy"), "org": B}),
    ]

    orgs.pipeline.app.send_task(WAVE_TASK_NAME, args=[elements], queue=queue_for(A))
    rows = orgs.audit(ids)

    assert [(rows[i].org, rows[i].outcome) for i in ids[:2]] == [(A, "confirmed")] * 2
    assert (rows[ids[2]].outcome, rows[ids[2]].error_code) == ("invalid", "org.mixed")
    assert {u: orgs.users(A)[u]["presence"] for u in wanted} == wanted
    assert orgs.users(B)[stray]["presence"] == b_now[stray]["presence"]


def test_an_unknown_org_is_invalid_naming_the_known_ones(orgs: Orgs) -> None:
    orgs.start(warm=())
    [user_id] = orgs.agents(1)

    request_id = orgs.send("default", {**Pipeline.update(user_id, "Busy"), "org": "nope"})
    row = orgs.audit([request_id])[request_id]

    assert (row.outcome, row.error_code) == ("invalid", "org.unknown")
    for known in ORGS:
        assert known in row.error_message
    for org in ORGS:
        assert "presence.patch" not in orgs.admin(org, "GET", "/stats")["requests"]


def test_metrics_count_each_orgs_updates_under_its_org_label(orgs: Orgs) -> None:
    port = _free_port()
    orgs.start(warm=(A, B), METRICS_PORT=port)  # one warm-up update in each
    [user_id] = orgs.agents(1)
    current = {org: orgs.users(org)[user_id]["presence"] for org in (A, B)}
    ids = [orgs.send(org, Pipeline.update(user_id, other_state(current[org]))) for org in current]
    ids.append(orgs.send("default", {**Pipeline.update(user_id, "Busy"), "org": "nope"}))
    orgs.audit(ids)

    samples = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    counted: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(samples):
        for sample in family.samples:
            if sample.name == "presence_updates_total" and sample.value:
                key = (sample.labels["org"], sample.labels["outcome"])
                counted[key] = counted.get(key, 0) + sample.value

    assert counted == {(A, "confirmed"): 2, (B, "confirmed"): 2, ("other", "invalid"): 1}
