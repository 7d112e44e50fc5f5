"""Scheduled shift changes: one row per agent and due time, dispatched in waves."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from producer.schema import DEFAULT_ORG


class ShiftStatus(StrEnum):
    SCHEDULED = "scheduled"  # waiting for its due time
    DISPATCHED = "dispatched"  # claimed and sent to the workers; the audit row tells the outcome
    SKIPPED = "skipped"  # found later than SHIFT_STALE_AFTER_S past its due time; not applied
    CANCELLED = "cancelled"  # cancelled before dispatch


class ShiftChange(Base):
    """Set ``user_id`` of ``org`` to ``state`` (``reason``) at ``due_at`` (stored in UTC).

    The request it becomes is ``shift-<id>``: its audit row carries that request id, so a row
    dispatched twice (a beat restart) is still applied once.
    """

    __tablename__ = "shift_change"
    __table_args__ = (
        # User ids are per org: two orgs may schedule the same id at the same time.
        UniqueConstraint("org", "user_id", "due_at", name="uq_shift_change_org_user_due"),
        Index("ix_shift_change_status_due", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org: Mapped[str] = mapped_column(String(40), default=DEFAULT_ORG, server_default=DEFAULT_ORG)
    user_id: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(String(100))
    capacity_policy: Mapped[str] = mapped_column(String(8), default="reject")
    source: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=ShiftStatus.SCHEDULED.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lateness_ms: Mapped[float | None] = mapped_column(Float)  # dispatch time minus due time
    dispatches: Mapped[int] = mapped_column(Integer, default=0)  # > 1 after a re-dispatch
    note: Mapped[str | None] = mapped_column(Text)

    @property
    def request_id(self) -> str:
        return f"shift-{self.id}"
