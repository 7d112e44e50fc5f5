"""Prometheus metrics from a real prefork worker, merged by one exporter, against the audit table.

A short real run: the emulator, a private ``redis-server``, a migrated SQLite audit database, one
``celery -A worker.app worker --pool prefork --concurrency 2`` with ``PROMETHEUS_MULTIPROC_DIR``
set to a fresh directory, and the ``presence metrics`` exporter reading the same directory. About
twenty updates (a few invalid, one refused by ``expected_state``, one PATCH answered 429) go
through; then both exporters (the CLI one and the worker's own ``METRICS_PORT``) are scraped over
HTTP and their counters compared with the audit rows and the emulator's request log.

The ``org`` label is specified in this process's own registry: which series carry it, the value
each recording function exports (the given org, ``other`` for an org not configured, ``default``
when none is given), and the Grafana dashboard's org selector over exactly those series.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import migrations
from models import AuditRecord, Outcome
from producer.schema import QUEUE, TASK_NAME
from tests.support import processes
from tests.support.fleet import WorkerFleet
from worker.embedded_redis import _free_port
from worker.observability import metrics as m

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A ``redis-server`` of this module's own (see tests/support/pipeline.py for why)."""
    with processes.private_redis() as url:
        yield url


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_label(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    """``{label value: sample}`` of ``name``, summed over other labels, filtered by ``match``."""
    out: Counter[str] = Counter()
    for (sample, labels), value in samples.items():
        found = dict(labels)
        if sample == name and all(found.get(k) == v for k, v in match.items()):
            out[found[label]] += value
    return dict(out)


def total(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def answering(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(240)
def test_counters_by_outcome_match_the_audit_table_under_prefork(
    emulator, api, private_redis, tmp_path: Path
) -> None:
    redis.Redis.from_url(private_redis).flushall()
    database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    worker_port, exporter_port = _free_port(), _free_port()
    env = {
        "GENESYS_API_URL": emulator.base_url,
        "GENESYS_CLIENT_ID": emulator.client_id,
        "GENESYS_CLIENT_SECRET": emulator.client_secret,
        "REDIS_URL": private_redis,
        "DATABASE_URL": database_url,
        "NOTIFICATION_HEARTBEAT_S": "0.5",
        "NOTIFICATION_PRIME_AGENTS": "0",
        "ACK_TIMEOUT_S": "3",
        "RETRY_BACKOFF_S": "0.2",
        "RETRY_BACKOFF_MAX_S": "2",
        "MAX_RETRIES": "3",
        "BROKER_VISIBILITY_TIMEOUT_S": "600",
        "RATE_LIMIT_PER_MINUTE": "3000",
        "PYTHONUNBUFFERED": "1",
        m.MULTIPROC_ENV: str(metrics_dir),
        "METRICS_PORT": str(worker_port),
    }
    # One PATCH answered 429 (then retried and applied): the 429 counter has something to count.
    api.admin(
        "POST",
        "/faults/errors",
        {"endpoint": "presence.patch", "status": 429, "count": 1, "retry_after_s": 1},
    )
    agents = api.active_users()[:17]
    now = datetime.now(UTC).isoformat()
    payloads: list[object] = [
        {"user_id": a["id"], "state": state, "source": "metrics", "requested_at": now}
        for a, state in zip(agents[:16], ["Available", "On Queue", "Busy"] * 6, strict=False)
    ]
    odd = agents[16]
    not_in = "Meal" if odd["systemPresence"] != "Meal" else "Busy"
    payloads += [
        {**payloads[0], "user_id": odd["id"], "expected_state": not_in},  # rejected_transition
        {**payloads[0], "user_id": "not-a-uuid"},  # invalid payload
        {**payloads[0], "user_id": agents[15]["id"], "state": "No Such Presence"},  # unknown
        {"user_id": agents[14]["id"], "state": "Available"},  # no requested_at
        "not even a dict",
    ]

    fleet = WorkerFleet(env, tmp_path)
    exporter: subprocess.Popen[bytes] | None = None
    producer = Celery("metrics-test", broker=private_redis, set_as_current=False)
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        fleet.start(1, pool="prefork", concurrency=2)
        exporter = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "metrics", "--port", str(exporter_port),
             "--address", "127.0.0.1"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "exporter.log").open("wb"),
        )  # fmt: skip
        wait_for(lambda: answering(exporter_port), 30, "the presence metrics exporter")
        wait_for(lambda: answering(worker_port), 30, "the worker's METRICS_PORT exporter")

        for payload in payloads:
            producer.send_task(TASK_NAME, args=[payload], queue=QUEUE, task_id=str(uuid.uuid4()))

        def rows() -> list[AuditRecord]:
            with Session(engine) as session:
                return list(session.scalars(select(AuditRecord)))

        wait_for(lambda: len(rows()) >= len(payloads), 120, f"{len(payloads)} audit rows")
        audited = Counter(r.outcome for r in rows())
        timed = Counter(r.outcome for r in rows() if r.requested_at is not None)
        assert sum(audited.values()) == len(payloads), fleet.logs()
        assert audited[Outcome.INVALID] == 4
        assert audited[Outcome.REJECTED_TRANSITION] == 1

        def connected_channels() -> int:
            channels = api.admin("GET", "/channels").json()
            return sum(1 for c in channels if c["connected"])

        def settled() -> bool:
            samples = scrape(exporter_port)
            sockets = total(samples, m.NOTIFICATION_SOCKETS_CONNECTED)
            return total(samples, m.UPDATES_TOTAL) == len(payloads) and sockets == (
                connected_channels()
            )

        wait_for(settled, 30, "the exporter to show every terminal row and socket")
        emulator_stats = api.admin("GET", "/stats").json()

        expected = {o.value: float(audited.get(o.value, 0)) for o in Outcome}
        for port in (exporter_port, worker_port):
            samples = scrape(port)
            assert by_label(samples, m.UPDATES_TOTAL, "outcome") == expected, port
            latency = by_label(samples, f"{m.UPDATE_LATENCY_SECONDS}_count", "outcome")
            assert latency == {k: float(n) for k, n in timed.items()}, "rows with requested_at"

        samples = scrape(exporter_port)
        patches = by_label(samples, f"{m.GENESYS_REQUEST_SECONDS}_count", "status", method="PATCH")
        assert patches == {
            status: float(n) for status, n in emulator_stats["requests"]["presence.patch"].items()
        }
        assert patches["429"] == 1.0
        assert total(samples, m.RATE_LIMITED_TOTAL) == emulator_stats["tooManyRequests"] == 1
        calls = total(samples, f"{m.GENESYS_REQUEST_SECONDS}_count")
        assert total(samples, f"{m.LIMITER_WAIT_SECONDS}_count") == calls, "one slot per call"
        assert 0 < total(samples, m.BUDGET_UTILISATION_RATIO) <= 1
        applied = audited[Outcome.CONFIRMED] + audited[Outcome.APPLIED_UNCONFIRMED]
        confirmations = total(samples, f"{m.CONFIRMATION_SECONDS}_count")
        assert confirmations == applied + audited[Outcome.DRIFTED]
        assert 1 <= total(samples, m.NOTIFICATION_SOCKETS_CONNECTED) <= 2

        # The children exit: their counts stay, their live socket gauges go.
        fleet.stop()
        after = scrape(exporter_port)
        assert by_label(after, m.UPDATES_TOTAL, "outcome") == expected
        assert total(after, m.NOTIFICATION_SOCKETS_CONNECTED) == 0
    finally:
        fleet.stop()
        if exporter is not None:
            exporter.terminate()
            exporter.wait(timeout=10)
        producer.close()
        engine.dispose()


DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "presence-worker.json"


def test_the_grafana_dashboard_uses_exactly_the_exported_metric_names() -> None:
    names = {
        value
        for key, value in vars(m).items()
        if key.isupper() and str(value).startswith("presence_")
    }
    histograms = {m.UPDATE_LATENCY_SECONDS, m.GENESYS_REQUEST_SECONDS, m.CONFIRMATION_SECONDS,
                  m.LIMITER_WAIT_SECONDS, m.SHIFT_LATENESS_SECONDS}  # fmt: skip
    exposed = names | {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "count", "sum")}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]

    used = {name for expr in exprs for name in re.findall(r"\bpresence_[a-z_]+", expr)}

    assert used <= exposed, used - exposed
    assert {n for n in names if not any(u.startswith(n) for u in used)} == set()


# -- the org label ----------------------------------------------------------------------------
@pytest.fixture
def orgs() -> Iterator[Callable[..., None]]:
    """``configure_orgs`` for one test; back to ``default`` alone afterwards."""
    yield m.configure_orgs
    m.configure_orgs(())


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


T0 = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Recording:
    """One recording function, and the sample that one call moves by ``step``."""

    record: Callable[..., None]
    sample: str
    labels: dict[str, str] = field(default_factory=dict)
    step: float = 1.0


RECORDINGS = {
    "updates": Recording(
        lambda **org: m.observe_update(
            "confirmed",
            requested_at=T0,
            finished_at=T0 + timedelta(seconds=2),
            confirm_ms=80,
            **org,
        ),
        m.UPDATES_TOTAL,
        {"outcome": "confirmed"},
    ),
    "update latency": Recording(
        lambda **org: m.observe_update(
            "drifted",
            requested_at=T0,
            finished_at=T0 + timedelta(seconds=2),
            confirm_ms=None,
            **org,
        ),
        f"{m.UPDATE_LATENCY_SECONDS}_count",
        {"outcome": "drifted"},
    ),
    "confirmation": Recording(
        lambda **org: m.observe_update(
            "confirmed", requested_at=None, finished_at=None, confirm_ms=80, **org
        ),
        f"{m.CONFIRMATION_SECONDS}_count",
        {"outcome": "confirmed"},
    ),
    "genesys call": Recording(
        lambda **org: m.observe_genesys_call("PATCH", 202, 0.05, **org),
        f"{m.GENESYS_REQUEST_SECONDS}_count",
        {"method": "PATCH", "status": "202"},
    ),
    "429": Recording(lambda **org: m.observe_rate_limited(**org), m.RATE_LIMITED_TOTAL),
    "limiter wait": Recording(
        lambda **org: m.observe_limiter_wait(0.2, **org), f"{m.LIMITER_WAIT_SECONDS}_count"
    ),
    "budget exhausted": Recording(
        lambda **org: m.observe_budget_exhausted(**org), m.LIMITER_EXHAUSTED_TOTAL
    ),
    "socket connected": Recording(
        lambda **org: m.socket_connected(**org), m.NOTIFICATION_SOCKETS_CONNECTED
    ),
    "socket disconnected": Recording(
        lambda **org: m.socket_disconnected(**org), m.NOTIFICATION_SOCKETS_CONNECTED, step=-1
    ),
    "reconnect": Recording(
        lambda **org: m.socket_reconnecting(**org), m.NOTIFICATION_RECONNECTS_TOTAL
    ),
    "wfm delivery": Recording(
        lambda **org: m.record_wfm_delivery("delivered", **org),
        m.WFM_DELIVERIES_TOTAL,
        {"outcome": "delivered"},
    ),
    "shift changes": Recording(
        lambda **org: m.record_shift_dispatch([3.0, 4.0], 1, 2, **org),
        m.SHIFT_CHANGES_TOTAL,
        {"event": "skipped"},
        step=2,
    ),
    "shift lateness": Recording(
        lambda **org: m.record_shift_dispatch([3.0, 4.0], 0, 0, **org),
        f"{m.SHIFT_LATENESS_SECONDS}_count",
        step=2,
    ),
}


@pytest.mark.parametrize(
    ("given", "exported"),
    [({"org": "acme"}, "acme"), ({"org": "zeta"}, "other"), ({}, "default")],
    ids=["configured org", "unknown org", "no org given"],
)
@pytest.mark.parametrize("recording", RECORDINGS.values(), ids=RECORDINGS.keys())
def test_each_recording_carries_its_org_bounded_to_the_configured_ones(
    orgs, recording: Recording, given: dict[str, str], exported: str
) -> None:
    orgs(["acme", "beta"])
    watched = {org: sample(recording.sample, **recording.labels, org=org)
               for org in ("acme", "beta", "other", "default")}  # fmt: skip

    recording.record(**given)

    moved = {
        org: sample(recording.sample, **recording.labels, org=org) - before
        for org, before in watched.items()
    }
    assert moved == {org: recording.step if org == exported else 0 for org in watched}


def test_the_budget_gauge_is_one_value_per_org() -> None:
    m.observe_budget(150, 300, org="default")
    m.observe_budget(30, 300, org="not-configured")

    assert sample(m.BUDGET_UTILISATION_RATIO, org="default") == 0.5
    assert sample(m.BUDGET_UTILISATION_RATIO, org="other") == 0.1


def test_exactly_the_org_labelled_series_carry_the_org_label(orgs) -> None:
    orgs(["acme"])
    for recording in RECORDINGS.values():
        recording.record(org="acme")
    m.observe_budget(1, 300, org="acme")
    m.record_refused_message("presence", "envelope.json", "log")
    names = {v for k, v in vars(m).items() if k.isupper() and str(v).startswith("presence_")}

    def label_sets(name: str) -> list[set[str]]:
        return [
            set(s.labels)
            for family in REGISTRY.collect()
            for s in family.samples
            if s.name == name or s.name.startswith(f"{name}_")
        ]

    labelled = {n for n in names if label_sets(n) and all("org" in ls for ls in label_sets(n))}
    unlabelled = {
        n for n in names if label_sets(n) and not any("org" in ls for ls in label_sets(n))
    }
    assert labelled == m.ORG_LABELLED
    assert unlabelled == names - m.ORG_LABELLED == {m.REFUSED_MESSAGES_TOTAL}


def test_a_configured_org_exports_every_outcome_from_the_start(orgs) -> None:
    orgs(["fresh-org"])

    exported = {
        s.labels["outcome"]: s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == m.UPDATES_TOTAL and s.labels["org"] == "fresh-org"
    }
    assert exported == {o.value: 0.0 for o in Outcome}


def test_configuring_orgs_replaces_the_earlier_set_and_keeps_default(orgs) -> None:
    orgs(["acme"])
    orgs(["beta"])

    assert [m.org_label(o) for o in ("acme", "beta", "default")] == ["other", "beta", "default"]


def test_other_is_reserved_for_orgs_not_configured(orgs) -> None:
    with pytest.raises(ValueError, match="reserved"):
        orgs(["acme", "other"])

    assert m.org_label("acme") == "other", "a refused set changes nothing"


@pytest.mark.parametrize(
    ("queue", "exported"),
    [("presence", "presence"), ("presence.acme", "presence.acme"), ("presence.zeta", "other"),
     ("presence.default", "other"), ("celery", "other")],
)  # fmt: skip
def test_refused_messages_count_the_queue_of_each_configured_org(
    orgs, queue: str, exported: str
) -> None:
    orgs(["acme"])
    labels = {"reason": "envelope.json", "recorded": "log"}
    before = sample(m.REFUSED_MESSAGES_TOTAL, queue=exported, **labels)

    m.record_refused_message(queue, "envelope.json", "log")

    assert sample(m.REFUSED_MESSAGES_TOTAL, queue=exported, **labels) == before + 1


def metric_selectors(expr: str) -> list[tuple[str, str]]:
    """Each ``(series name, label selector)`` the query reads (selector ``""`` when none)."""
    return [
        (re.sub(r"_(bucket|count|sum)$", "", name), selector)
        for name, selector in re.findall(r"\b(presence_[a-z_]+)(\{[^}]*\})?", expr)
    ]


def test_the_dashboard_selects_orgs_on_every_org_labelled_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]

    org = variables["org"]
    assert (org["type"], org["multi"], org["includeAll"]) == ("query", True, True)
    found = re.fullmatch(r"label_values\((presence_[a-z_]+), org\)", org["query"]["query"])
    assert found is not None
    assert found[1] in m.ORG_LABELLED
    read = [pair for expr in exprs for pair in metric_selectors(expr)]
    assert {name for name, _ in read} & m.ORG_LABELLED == m.ORG_LABELLED
    for name, selector in read:
        selects = 'org=~"$org"' in selector
        assert selects == (name in m.ORG_LABELLED), (name, selector)


def test_the_exporter_refuses_to_start_without_the_workers_directory(monkeypatch) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.delenv(m.MULTIPROC_ENV, raising=False)

    result = CliRunner().invoke(app, ["metrics", "--port", "9108"])

    assert result.exit_code == 2


def listening_on(port: int) -> set[str]:
    """The IPv4 addresses a socket of this machine listens on at ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.parametrize(
    ("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")], ids=["default", "all"]
)
def test_the_exporter_binds_loopback_unless_metrics_host_says_otherwise(
    tmp_path: Path, host: str | None, expected: str
) -> None:
    port = _free_port()
    env = {**os.environ, m.MULTIPROC_ENV: str(tmp_path)}
    env.pop("METRICS_HOST", None)
    if host is not None:
        env["METRICS_HOST"] = host
    exporter = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "metrics", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: answering(port), 30, "the exporter")
        assert listening_on(port) == {expected}
    finally:
        processes.stop(exporter)
    assert exporter.stderr is not None
    assert f"on http://{expected}:{port}/metrics" in exporter.stderr.read()


def test_the_workers_exporter_binds_loopback_by_default(monkeypatch, tmp_path: Path) -> None:
    from worker.settings import get_settings

    port = _free_port()
    monkeypatch.setenv("METRICS_PORT", str(port))
    monkeypatch.delenv("METRICS_HOST", raising=False)
    monkeypatch.setenv(m.MULTIPROC_ENV, str(tmp_path))
    get_settings.cache_clear()
    try:
        m.on_worker_ready()
    finally:
        get_settings.cache_clear()

    wait_for(lambda: answering(port), 10, "the worker's exporter")
    assert listening_on(port) == {"127.0.0.1"}
