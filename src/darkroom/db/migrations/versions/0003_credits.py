"""credits: balances, key credit limits, the ledger, idempotency keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SETTLED = "kind IN ('capture', 'release')"


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("balance_micro", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("used_micro", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.create_check_constraint(
            op.f("ck_accounts_balance_not_negative"), "balance_micro >= 0"
        )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("credit_limit_micro", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("spent_micro", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("used_micro", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.create_check_constraint(
            op.f("ck_api_keys_within_limit"),
            "credit_limit_micro IS NULL OR spent_micro <= credit_limit_micro",
        )
        batch.create_check_constraint(op.f("ck_api_keys_spent_not_negative"), "spent_micro >= 0")
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("price_micro", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("charged_micro", sa.BigInteger(), nullable=True))
    # Tasks from before credits existed: their price is what they showed as reserved.
    op.execute("UPDATE tasks SET price_micro = CAST(ROUND(credits_reserved * 1000000) AS BIGINT)")
    op.execute("UPDATE tasks SET charged_micro = price_micro WHERE status = 'completed'")

    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("quality", sa.String(length=4), nullable=True),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('reserve', 'capture', 'release', 'credit', 'debit')",
            name=op.f("ck_ledger_kind_enum"),
        ),
        sa.CheckConstraint("amount_micro >= 0", name=op.f("ck_ledger_amount_not_negative")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_ledger_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger")),
        sa.UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),
    )
    op.create_index("ix_ledger_account_id", "ledger", ["account_id"])
    op.create_index("ix_ledger_created", "ledger", ["created_at"])
    op.create_index(
        "ux_ledger_settled_once",
        "ledger",
        ["task_id"],
        unique=True,
        sqlite_where=sa.text(_SETTLED),
        postgresql_where=sa.text(_SETTLED),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_idempotency_keys_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("api_key_id", "key", name="uq_idempotency_keys_api_key_id_key"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("ledger")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("charged_micro")
        batch.drop_column("price_micro")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_spent_not_negative"), type_="check")
        batch.drop_constraint(op.f("ck_api_keys_within_limit"), type_="check")
        batch.drop_column("used_micro")
        batch.drop_column("spent_micro")
        batch.drop_column("credit_limit_micro")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint(op.f("ck_accounts_balance_not_negative"), type_="check")
        batch.drop_column("used_micro")
        batch.drop_column("balance_micro")
