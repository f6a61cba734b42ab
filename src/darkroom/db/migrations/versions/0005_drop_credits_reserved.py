"""tasks.credits_reserved: dropped; price_micro (exact integer micro-credits) is the one price

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("credits_reserved")


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("credits_reserved", sa.Float(), nullable=True))
    op.execute("UPDATE tasks SET credits_reserved = price_micro / 1000000.0")
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("credits_reserved", existing_type=sa.Float(), nullable=False)
