"""tasks: (api_key_id, created_at) lists a key's tasks newest first, a page at a time, without
sorting them (GET /v1/tasks)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_key_created", "tasks", ["api_key_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_key_created", table_name="tasks")
