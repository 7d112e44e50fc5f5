"""Text from the database or the platform is printed as text: Rich markup in it is shown as
typed, never interpreted (``[/]`` once crashed ``presence audit`` and ``presence wfm failed``)."""

from __future__ import annotations

from datetime import UTC, datetime

from models import AuditRecord, DeliveryState, WfmDelivery
from models.db import session_scope
from tests.cli.test_cli import env, run  # noqa: F401 - the fixture

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MARKUP = "[/] [bold red]not bold[/bold red] [link=x]"


def test_audit_and_stats_print_markup_literally(env):  # noqa: F811
    with session_scope(env.database_url) as session:
        session.add(
            AuditRecord(
                request_id="req-1",
                user_id="[/]agent",
                outcome="failed",
                to_state="[b]Break",
                requested_at=T0,
                finished_at=T0,
                error_message=MARKUP,
            )
        )

    audit = run("audit")
    stats = run("stats")

    assert audit.exit_code == 0, audit.output
    assert "[/]" in audit.stdout
    assert "[b]Break" in audit.stdout
    assert stats.exit_code == 0, stats.output


def test_wfm_failed_prints_markup_literally(env):  # noqa: F811
    with session_scope(env.database_url) as session:
        record = AuditRecord(request_id="req-1", outcome="confirmed", finished_at=T0)
        session.add(record)
        session.flush()
        session.add(
            WfmDelivery(
                event_id="[/]event",
                audit_id=record.id,
                payload={"agent_id": "[/]"},
                state=DeliveryState.FAILED.value,
                attempts=3,
                created_at=T0,
                last_error=MARKUP,
            )
        )

    result = run("wfm", "failed")

    assert result.exit_code == 0, result.output
    assert "[/]event" in result.stdout


def test_set_echoes_a_bad_value_with_markup_literally(env):  # noqa: F811
    result = run("set", "[/]nobody", "Break")

    assert result.exit_code == 2
    assert "[/]nobody" in result.output
    assert "Traceback" not in result.output
