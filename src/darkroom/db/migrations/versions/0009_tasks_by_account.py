"""tasks: indexes for a claim that serves accounts in turn: (account_id, started_at) finds when
each waiting account was last served (the latest start of its tasks) in one entry per account;
(status, model, account_id, created_at) lists the waiting accounts and an account's oldest
waiting task without reading the task rows

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_account_started", "tasks", ["account_id", "started_at"])
    op.create_index("ix_tasks_waiting", "tasks", ["status", "model", "account_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_waiting", table_name="tasks")
    op.drop_index("ix_tasks_account_started", table_name="tasks")
