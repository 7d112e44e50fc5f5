"""an org column on audit rows and shift changes: one fleet, several Genesys orgs

Existing rows belong to the org of the single-org settings, ``default``. Idempotency keys are
unique per org (producers choose them), shift changes per org, agent and due time (user ids are
per org); reports of one org over a recent window are
served by (org, finished_at). A downgrade deletes the shift changes of orgs other than
``default`` (without an org column they would be applied to the default org's agents) and fails
while two orgs' audit rows share an idempotency key.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("presence_audit", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("org", sa.String(length=40), server_default="default", nullable=False)
        )
        batch_op.create_index(
            "ix_presence_audit_org_finished_at", ["org", "finished_at"], unique=False
        )
        batch_op.drop_constraint("uq_presence_audit_idempotency_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_presence_audit_org_idempotency_key", ["org", "idempotency_key"]
        )
    with op.batch_alter_table("shift_change", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("org", sa.String(length=40), server_default="default", nullable=False)
        )
        batch_op.drop_constraint("uq_shift_change_user_due", type_="unique")
        batch_op.create_unique_constraint(
            "uq_shift_change_org_user_due", ["org", "user_id", "due_at"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM shift_change WHERE org <> 'default'")
    with op.batch_alter_table("shift_change", schema=None) as batch_op:
        batch_op.drop_constraint("uq_shift_change_org_user_due", type_="unique")
        batch_op.create_unique_constraint("uq_shift_change_user_due", ["user_id", "due_at"])
        batch_op.drop_column("org")
    with op.batch_alter_table("presence_audit", schema=None) as batch_op:
        batch_op.drop_constraint("uq_presence_audit_org_idempotency_key", type_="unique")
        batch_op.drop_index("ix_presence_audit_org_finished_at")
        batch_op.drop_column("org")
        batch_op.create_unique_constraint("uq_presence_audit_idempotency_key", ["idempotency_key"])
