"""an index on presence_audit.finished_at: reports over a recent window

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("presence_audit", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_presence_audit_finished_at"), ["finished_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("presence_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_presence_audit_finished_at"))
