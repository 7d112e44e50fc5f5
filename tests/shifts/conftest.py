"""The shift-wave tests use the capacity suite's end-to-end harness (with ``celery beat``) and its
400-agent emulator; :func:`schedule` writes shift-change rows the way an import does."""

from __future__ import annotations

from datetime import UTC, datetime

from models import ShiftChange
from models.db import session_scope
from tests.capacity.conftest import Harness, emulator_args, harness

__all__ = ["emulator_args", "harness", "schedule"]


def schedule(
    h: Harness, changes: list[tuple[str, str, str | None]], due_at: datetime, **fields: object
) -> list[int]:
    """Rows (agent, state, reason) due at ``due_at``; returns their ids in order."""
    with session_scope(h.database_url) as session:
        rows = [
            ShiftChange(
                user_id=user_id,
                due_at=due_at,
                state=state,
                reason=reason,
                capacity_policy="reject",
                source="e2e-roster",
                status="scheduled",
                created_at=datetime.now(UTC),
                dispatches=0,
                **fields,
            )
            for user_id, state, reason in changes
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]
