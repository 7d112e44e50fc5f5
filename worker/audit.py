"""Audit rows in SQL: the one terminal record of every request (keyword-only service functions),
and :class:`SqlAuditStore`, the recorder's store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, and_, insert, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import AuditRecord, Outcome, WfmDelivery
from models.db import engine_for, session_scope
from models.storable import fit_values
from producer.schema import DEFAULT_ORG, PresenceUpdate
from worker import wfm
from worker.flow.record import AuditDraft, Written


def find_existing(
    session: Session, *, request_id: str, idempotency_key: str | None, org: str = DEFAULT_ORG
) -> AuditRecord | None:
    """The terminal row for this request id, or this idempotency key in ``org``, if one was
    written."""
    clause = AuditRecord.request_id == request_id
    if idempotency_key is not None:
        same_key = and_(AuditRecord.org == org, AuditRecord.idempotency_key == idempotency_key)
        clause = or_(clause, same_key)
    return session.scalars(select(AuditRecord).where(clause).limit(1)).first()


def existing_request_ids(
    session: Session,
    request_ids: list[str],
    idempotency_keys: list[str] | None = None,
    org: str = DEFAULT_ORG,
) -> set[str]:
    """Which of these request ids, and of these idempotency keys in ``org``, already have a
    terminal row."""
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
                select(AuditRecord.idempotency_key).where(
                    AuditRecord.org == org, AuditRecord.idempotency_key.in_(chunk)
                )
            )
            if k is not None
        )
    return found


REQUEUEABLE = frozenset({Outcome.DEAD_LETTER, Outcome.FAILED, Outcome.DRIFTED})


def requeue(
    session: Session,
    *,
    outcome: Outcome,
    limit: int,
    send: Callable[[PresenceUpdate], str],
    org: str | None = None,
) -> int:
    """Send again, once each, up to ``limit`` requests that ended ``outcome`` (oldest first;
    only ``org``'s when given); each row records the new request id in ``requeued_as``.
    Returns how many were sent.

    Raises ValueError for an outcome that cannot be requeued (see ``REQUEUEABLE``).
    """
    if outcome not in REQUEUEABLE:
        raise ValueError(f"only {', '.join(sorted(REQUEUEABLE))} can be requeued")
    query = select(AuditRecord).where(
        AuditRecord.outcome == outcome.value, AuditRecord.requeued_as.is_(None)
    )
    if org is not None:
        query = query.where(AuditRecord.org == org)
    rows = session.scalars(query.order_by(AuditRecord.id).limit(limit)).all()
    count = 0
    for row in rows:
        if not row.payload or "user_id" not in row.payload:
            continue
        payload = {k: v for k, v in row.payload.items() if k != "idempotency_key"}
        # The copy keeps requested_at and takes the original's place in the agent's ordering:
        # only a genuinely newer request supersedes it.
        payload.setdefault("requeue_of", row.idempotency_key or row.request_id)
        try:
            update = PresenceUpdate.model_validate(payload)
        except ValidationError:
            continue
        row.requeued_as = send(update)
        count += 1
    return count


_OUTCOME_BY_ID = text("SELECT outcome FROM presence_audit WHERE request_id = :id")
_OUTCOME_BY_KEY = text(
    "SELECT outcome FROM presence_audit "
    "WHERE request_id = :id OR (org = :org AND idempotency_key = :key) LIMIT 1"
)


_AUDIT = AuditRecord.__table__
_DELIVERY = WfmDelivery.__table__
_INSERT_AUDIT = insert(AuditRecord).returning(AuditRecord.id, sort_by_parameter_order=True)
_INSERT_DELIVERY = insert(WfmDelivery).returning(WfmDelivery.id, sort_by_parameter_order=True)


def _insert_outbox(
    conn: Connection, rows: list[dict[str, Any]], ids: Sequence[int]
) -> dict[int, int]:
    """Insert the WFM outbox rows of the audit rows that changed state (``ids``: theirs, in
    order); the delivery id of each such row by its index."""
    pending = [
        (index, values)
        for index, (row, audit_id) in enumerate(zip(rows, ids, strict=True))
        if (values := wfm.outbox_values(row, audit_id)) is not None
    ]
    if not pending:
        return {}
    delivery_rows = [fit_values(_DELIVERY, values) for _, values in pending]
    delivery_ids = conn.execute(_INSERT_DELIVERY, delivery_rows).scalars()
    return {
        index: delivery_id for (index, _), delivery_id in zip(pending, delivery_ids, strict=True)
    }


class SqlAuditStore:
    """The recorder's store on SQLAlchemy (SQLite or PostgreSQL): one transaction per write."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def find_outcome(
        self, *, request_id: str, idempotency_key: str | None, org: str = DEFAULT_ORG
    ) -> Outcome | None:
        # Every update asks this before anything else: the outcome column alone, as plain SQL
        # on a pooled connection (no ORM session, no row object, no statement to build).
        query = _OUTCOME_BY_KEY if idempotency_key is not None else _OUTCOME_BY_ID
        with engine_for(self.database_url).connect() as conn:
            params = {"id": request_id, "key": idempotency_key, "org": org}
            outcome = conn.execute(query, params).scalar()
        return Outcome(outcome) if outcome is not None else None

    def audited(
        self, request_ids: list[str], idempotency_keys: list[str], org: str = DEFAULT_ORG
    ) -> set[str]:
        if not request_ids and not idempotency_keys:
            return set()
        with session_scope(self.database_url) as session:
            return existing_request_ids(session, request_ids, idempotency_keys, org)

    def write(self, drafts: list[AuditDraft], *, outbox: bool) -> list[Written]:
        """All drafts in one transaction; when one collides with an existing row (a concurrent
        duplicate), one transaction per draft instead, keeping the row written first."""
        # Core inserts with RETURNING: every update writes here, and the ORM's unit of work
        # cost several times the statement itself.
        rows = [fit_values(_AUDIT, draft.to_row()) for draft in drafts]
        try:
            with engine_for(self.database_url).begin() as conn:
                ids = conn.execute(_INSERT_AUDIT, rows).scalars().all()
                deliveries = _insert_outbox(conn, rows, ids) if outbox else {}
        except IntegrityError:
            if len(drafts) == 1:
                return [self._existing(drafts[0])]
            return [self.write([draft], outbox=outbox)[0] for draft in drafts]
        return [
            Written(Outcome(row["outcome"]), True, deliveries.get(index))
            for index, row in enumerate(rows)
        ]

    def _existing(self, draft: AuditDraft) -> Written:
        outcome = self.find_outcome(
            request_id=draft.request_id, idempotency_key=draft.idempotency_key, org=draft.org
        )
        if outcome is None:  # the collision was not with another terminal row: a real error
            raise RuntimeError(f"audit row of {draft.request_id} could not be written")
        return Written(outcome, False)
