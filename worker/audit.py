"""Audit rows: the one terminal record of every request (keyword-only service functions)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import AuditRecord


def find_existing(
    session: Session, *, request_id: str, idempotency_key: str | None
) -> AuditRecord | None:
    """The terminal row for this request id or idempotency key, if one was written."""
    clause = AuditRecord.request_id == request_id
    if idempotency_key is not None:
        clause = or_(clause, AuditRecord.idempotency_key == idempotency_key)
    return session.scalars(select(AuditRecord).where(clause).limit(1)).first()


def existing_request_ids(
    session: Session, request_ids: list[str], idempotency_keys: list[str] | None = None
) -> set[str]:
    """Which of these request ids and idempotency keys already have a terminal row."""
    found: set[str] = set()
    for start in range(0, len(request_ids), 500):
        chunk = request_ids[start : start + 500]
        found.update(
            session.scalars(select(AuditRecord.request_id).where(AuditRecord.request_id.in_(chunk)))
        )
    keys = idempotency_keys or []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        found.update(
            k
            for k in session.scalars(
                select(AuditRecord.idempotency_key).where(AuditRecord.idempotency_key.in_(chunk))
            )
            if k is not None
        )
    return found


def write(session: Session, fields: dict[str, Any]) -> tuple[AuditRecord, bool]:
    """Insert the terminal row; (row, True) when written, (existing row, False) when a row for the
    same request id or idempotency key already exists (a concurrent duplicate)."""
    record = AuditRecord(**fields)
    session.add(record)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        existing = find_existing(
            session, request_id=fields["request_id"], idempotency_key=fields.get("idempotency_key")
        )
        if existing is None:
            raise
        return existing, False
    return record, True
