"""One audit row per request: what was asked, what happened, how long each part took."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from producer.schema import DEFAULT_ORG


class Outcome(StrEnum):
    """Terminal outcomes: part of the public contract (CLI, metrics, dashboards)."""

    CONFIRMED = "confirmed"  # applied and seen on the notification socket
    APPLIED_UNCONFIRMED = "applied_unconfirmed"  # applied; no event in time, read-back agrees
    DRIFTED = "drifted"  # applied, but the read-back shows another state
    SUPERSEDED = "superseded"  # a newer request for the agent won
    INVALID = "invalid"  # bad payload, unknown state or reason; never retried
    REJECTED_TRANSITION = "rejected_transition"  # the transition matrix or expected_state said no
    REJECTED_CAPACITY = "rejected_capacity"  # a queue would be left understaffed
    FAILED = "failed"  # the platform refused (400/403/404), with its code and message
    DEAD_LETTER = "dead_letter"  # retries exhausted; requeueable


class AuditRecord(Base):
    __tablename__ = "presence_audit"
    # Reports of one org over a recent window (``presence stats --org``, ``presence audit --org``).
    __table_args__ = (
        Index("ix_presence_audit_org_finished_at", "org", "finished_at"),
        # Producers pick their keys: two orgs may use the same one for different requests.
        UniqueConstraint("org", "idempotency_key", name="uq_presence_audit_org_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    # The Genesys org of the request (producer.schema.DEFAULT_ORG for a single-org deployment).
    org: Mapped[str] = mapped_column(String(40), default=DEFAULT_ORG, server_default=DEFAULT_ORG)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str | None] = mapped_column(String(100))
    from_state: Mapped[str | None] = mapped_column(String(100))
    from_definition_id: Mapped[str | None] = mapped_column(String(64))
    to_state: Mapped[str | None] = mapped_column(String(100))
    to_definition_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(100))
    requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Indexed: reports cover a window of recent rows (``presence stats``).
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    queue_wait_ms: Mapped[float | None]
    limiter_wait_ms: Mapped[float | None]
    api_ms: Mapped[float | None]
    confirm_ms: Mapped[float | None]
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    genesys_requests: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(32), index=True)
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    requeued_as: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)  # e.g. why the capacity guard was bypassed
