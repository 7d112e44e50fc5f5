"""The ``presence`` CLI, run in-process against a real Redis broker and a migrated SQLite
audit database."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import redis
from typer.testing import CliRunner

import migrations
from cli.main import app
from models import AuditRecord, Outcome
from models.db import session_scope
from producer.schema import QUEUE
from worker.settings import get_settings

AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def env(monkeypatch, redis_url, tmp_path):
    database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    broker = redis.Redis.from_url(redis_url)
    yield SimpleNamespace(database_url=database_url, broker=broker)
    broker.close()
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def queued(env, queue: str = QUEUE) -> list[dict]:
    """The payloads waiting on a queue (the default org's unless told), oldest first."""
    messages = [json.loads(raw) for raw in reversed(env.broker.lrange(queue, 0, -1))]
    assert all(m["content-type"] == "application/json" for m in messages)
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def add_rows(env, *rows: AuditRecord) -> None:
    with session_scope(env.database_url) as session:
        session.add_all(rows)


def record(
    n: int, outcome: Outcome, *, user: str = AGENT, ms: float = 100, **fields
) -> AuditRecord:
    requested_at = fields.pop("requested_at", T0)
    return AuditRecord(
        request_id=f"req-{n}",
        user_id=user,
        outcome=outcome.value,
        to_state="Break",
        requested_at=requested_at,
        finished_at=fields.pop("finished_at", requested_at + timedelta(milliseconds=ms)),
        genesys_requests=1,
        **fields,
    )


# -- set ----------------------------------------------------------------------------------------
def test_set_enqueues_one_update(env):
    result = run("set", AGENT, "Break", "--reason", "Coffee", "--key", "k-1")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("queued ")
    [sent] = queued(env)
    assert sent["user_id"] == AGENT
    assert sent["state"] == "Break"
    assert sent["reason"] == "Coffee"
    assert sent["source"] == "cli"
    assert sent["idempotency_key"] == "k-1"
    assert "org" not in sent, "the default org's payload is what it was before orgs"


def test_set_for_another_org_enqueues_on_its_queue(env):
    result = run("set", AGENT, "Break", "--org", "acme")

    assert result.exit_code == 0, result.output
    assert queued(env) == []
    [sent] = queued(env, "presence.acme")
    assert (sent["user_id"], sent["org"]) == (AGENT, "acme")


@pytest.mark.parametrize("command", [("set", AGENT, "Break"), ("audit",), ("stats",)])
def test_a_bad_org_name_is_one_line_and_exit_2(env, command):
    result = run(*command, "--org", "Acme[/]")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --org: 'Acme[/]' is not an org name (lower-case")
    assert env.broker.llen(QUEUE) == 0


def test_set_rejects_a_bad_user_id_with_one_line_and_exit_2(env):
    result = run("set", "agent-7", "Break")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: Invalid payload — user_id: ")
    assert env.broker.llen(QUEUE) == 0


# -- audit, stats -------------------------------------------------------------------------------
def test_audit_rejects_an_unknown_outcome(env):
    result = run("audit", "--outcome", "x")

    assert result.exit_code == 2
    assert "unknown outcome 'x'" in result.stderr
    assert "dead_letter" in result.stderr


def test_audit_echoes_a_bad_outcome_literally(env):
    result = run("audit", "--outcome", "[/]")

    assert result.exit_code == 2
    assert "unknown outcome '[/]'" in result.stderr


def test_audit_shows_rows_newest_first_and_filters(env):
    add_rows(
        env,
        record(1, Outcome.CONFIRMED, error_message=None),
        record(2, Outcome.FAILED, user=OTHER, error_message="user not found"),
    )

    everything = run("audit")
    only_failed = run("audit", "--outcome", "failed")
    only_agent = run("audit", "--user", AGENT)

    assert everything.exit_code == 0, everything.output
    assert everything.stdout.index(OTHER[:8]) < everything.stdout.index(AGENT[:8])
    assert "confirmed" in everything.stdout
    assert "user not found" in only_failed.stdout
    assert AGENT[:8] not in only_failed.stdout
    assert OTHER[:8] not in only_agent.stdout
    assert "confirmed" in only_agent.stdout


def test_stats_summarizes_the_audit_table(env):
    add_rows(
        env,
        record(1, Outcome.CONFIRMED, ms=100),
        record(2, Outcome.CONFIRMED, ms=300),
        record(3, Outcome.FAILED, ms=50),
        record(4, Outcome.DEAD_LETTER, ms=9000),
    )

    result = run("stats", "--hours", "0")  # every row, however old

    assert result.exit_code == 0, result.output
    assert "4 requests" in result.stdout
    assert "success 50.0%" in result.stdout
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")])[0] in set(Outcome)
    }
    assert rows["confirmed"] == ["2", "100", "300", "300"]  # count, p50, p95, p99 (ms)
    assert rows["dead_letter"] == ["1", "9,000", "9,000", "9,000"]


def test_stats_covers_the_last_24_hours_unless_told_otherwise(env):
    recent = datetime.now(UTC) - timedelta(hours=2)
    add_rows(
        env,
        record(1, Outcome.CONFIRMED, requested_at=recent, finished_at=recent),
        record(2, Outcome.FAILED, requested_at=recent - timedelta(days=3)),
        record(3, Outcome.FAILED),  # months old
    )
    for args, expected in (((), "1 requests"), (("--hours", "100"), "2 requests")):
        result = run("stats", *args)
        assert result.exit_code == 0, result.output
        assert expected in result.stdout, args


def header(table: str) -> str:
    """A printed table's header cells (everything above the rule under them)."""
    return table.split("┡")[0]


def test_audit_of_one_org_and_the_org_column_when_rows_span_several(env):
    add_rows(
        env,
        record(1, Outcome.CONFIRMED),
        record(2, Outcome.FAILED, user=OTHER, org="acme", error_message="user not found"),
    )

    everything = run("audit")
    acme = run("audit", "--org", "acme")
    default = run("audit", "--org", "default")

    assert everything.exit_code == 0, everything.output
    assert " org " in header(everything.stdout)
    assert "acme" in everything.stdout
    assert OTHER[:8] in acme.stdout
    assert AGENT[:8] not in acme.stdout
    assert " org " not in header(acme.stdout), "one org: no org column"
    assert AGENT[:8] in default.stdout
    assert OTHER[:8] not in default.stdout


def test_stats_of_one_org_and_per_org_when_there_are_several(env):
    add_rows(
        env,
        record(1, Outcome.CONFIRMED),
        record(2, Outcome.CONFIRMED, org="acme"),
        record(3, Outcome.FAILED, org="acme"),
    )

    every = run("stats", "--hours", "0")
    acme = run("stats", "--hours", "0", "--org", "acme")

    assert every.exit_code == 0, every.output
    assert "3 requests" in every.stdout
    per_org = {
        cells[0]: cells[1:]
        for line in every.stdout.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")])[0] in {"acme", "default"}
    }
    assert per_org == {"acme": ["2", "50.0%"], "default": ["1", "100.0%"]}
    assert acme.exit_code == 0, acme.output
    assert "2 requests · success 50.0%" in acme.stdout
    assert "org acme" in acme.stdout
    assert "by org" not in acme.stdout


def test_stats_of_a_single_org_shows_no_per_org_table(env):
    add_rows(env, record(1, Outcome.CONFIRMED))

    result = run("stats", "--hours", "0")

    assert result.exit_code == 0, result.output
    assert "by org" not in result.stdout


# -- requeue ------------------------------------------------------------------------------------
def test_requeue_enqueues_dead_letters_once_without_their_idempotency_key(env):
    original = {
        "version": 1,
        "user_id": AGENT,
        "state": "Break",
        "reason": "Coffee",
        "source": "wfm",
        "requested_at": "2026-03-02T09:00:00Z",
        "idempotency_key": "shift-42",
    }
    add_rows(
        env,
        record(1, Outcome.DEAD_LETTER, payload=original, idempotency_key="shift-42"),
        record(2, Outcome.CONFIRMED, payload={**original, "idempotency_key": "other"}),
        record(3, Outcome.DEAD_LETTER, payload={"raw": "garbage"}),
    )

    first = run("requeue", "--outcome", "dead_letter")
    second = run("requeue", "--outcome", "dead_letter")

    assert first.exit_code == 0, first.output
    assert "requeued 1 request(s) that ended dead_letter" in first.stdout
    assert "requeued 0 request(s)" in second.stdout
    [sent] = queued(env)
    assert "idempotency_key" not in sent
    assert sent == {
        **{k: v for k, v in original.items() if k != "idempotency_key"},
        "requeue_of": "shift-42",  # the original's place in the agent's ordering
    }
    with session_scope(env.database_url) as session:
        row = session.get(AuditRecord, 1)
        assert row.requeued_as is not None
        [message] = [json.loads(raw) for raw in env.broker.lrange(QUEUE, 0, -1)]
        assert message["headers"]["id"] == row.requeued_as, "requeued_as names the new request"


def test_requeue_sends_each_request_back_to_its_orgs_queue(env):
    original = {
        "user_id": AGENT,
        "state": "Break",
        "requested_at": "2026-03-02T09:00:00Z",
        "org": "acme",
    }
    add_rows(env, record(1, Outcome.DEAD_LETTER, payload=original, org="acme"))

    result = run("requeue")

    assert result.exit_code == 0, result.output
    assert queued(env) == []
    [sent] = queued(env, "presence.acme")
    assert (sent["org"], sent["requeue_of"]) == ("acme", "req-1")


def test_requeue_with_an_org_sends_only_that_orgs_requests(env):
    acme = {"user_id": AGENT, "state": "Break", "requested_at": "2026-03-02T09:00:00Z"}
    add_rows(
        env,
        record(1, Outcome.DEAD_LETTER, payload={**acme, "org": "acme"}, org="acme"),
        record(2, Outcome.DEAD_LETTER, payload={**acme, "state": "Meal"}),
    )

    only_acme = run("requeue", "--org", "acme")
    bad = run("requeue", "--org", "ACME")

    assert only_acme.exit_code == 0, only_acme.output
    assert "requeued 1 request(s) that ended dead_letter in org acme" in only_acme.stdout
    assert [m["state"] for m in queued(env, "presence.acme")] == ["Break"]
    assert queued(env) == [], "the default org's dead letter stays for its own requeue"
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: --org: 'ACME' is not an org name (")


def test_requeue_refuses_outcomes_that_cannot_be_retried(env):
    result = run("requeue", "--outcome", "confirmed")

    assert result.exit_code == 2
    assert "can be requeued" in result.stderr


# -- schema -------------------------------------------------------------------------------------
def test_schema_prints_the_payload_json_schema(env):
    result = run("schema")

    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["title"] == "PresenceUpdate"
    assert {"user_id", "state", "requested_at"} <= set(schema["required"])


def test_version_is_the_installed_package_metadata_version():
    from importlib.metadata import version

    result = run("--version")

    assert result.exit_code == 0, result.output
    assert result.output == f"{version('presence-worker')}\n"


def test_the_installed_presence_command_reports_the_same_version():
    import subprocess
    import sys
    from importlib.metadata import version
    from pathlib import Path

    presence = Path(sys.executable).parent / "presence"  # the console script pip installed
    done = subprocess.run([presence, "--version"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == version("presence-worker")
