"""Shift-change rows written straight into the table, as an import would store them."""

from __future__ import annotations

from datetime import UTC, datetime

from models import ShiftChange
from models.db import session_scope


def schedule(
    database_url: str,
    changes: list[tuple[str, str, str | None]],
    due_at: datetime,
    *,
    source: str = "e2e-roster",
    org: str = "default",
) -> list[int]:
    """Scheduled rows (agent, state, reason) of ``org`` due at ``due_at``; returns their ids in
    order."""
    with session_scope(database_url) as session:
        rows = [
            ShiftChange(
                org=org,
                user_id=user_id,
                due_at=due_at,
                state=state,
                reason=reason,
                capacity_policy="reject",
                source=source,
                status="scheduled",
                created_at=datetime.now(UTC),
                dispatches=0,
            )
            for user_id, state, reason in changes
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]
