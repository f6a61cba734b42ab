"""tasks: an index on (api_key_id, status), so a create's concurrency check reads the key's
own unfinished tasks instead of the whole queue

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_key_status", "tasks", ["api_key_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_tasks_key_status", table_name="tasks")
