"""Tables, as SQLAlchemy Core metadata; Alembic migrations are written against this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: str | datetime) -> datetime:
    """A time as a dialect hands it back (naive UTC text or datetime on SQLite, an aware datetime
    on PostgreSQL) as an aware UTC datetime."""
    if isinstance(value, str):  # SQLite hands back text for computed or coerced expressions
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("user_group", String(100), nullable=False, server_default="default"),
    Column("created_at", UTCDateTime, nullable=False),
    # Money is integer micro-credits (1 credit = 1_000_000): sums are exact, never rounded.
    # balance: what the account may still reserve (reservations already taken off).
    Column("balance_micro", BigInteger, nullable=False, server_default="0"),
    # used: what completed tasks were charged, in total.
    Column("used_micro", BigInteger, nullable=False, server_default="0"),
    # Standard Webhooks secret (`whsec_…`) that signs this account's callbacks; made on first use.
    Column("webhook_secret", String(100), nullable=True),
    CheckConstraint("balance_micro >= 0", name="balance_not_negative"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(100), nullable=False, server_default=""),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    # None: every model the server has / the server's default rate / the default cap.
    Column("allowed_models", JSON, nullable=True),
    Column("rate_limit", String(64), nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    # None: the key may spend whatever its account has.
    Column("credit_limit_micro", BigInteger, nullable=True),
    # spent: reserved plus captured against this key; used: captured only.
    Column("spent_micro", BigInteger, nullable=False, server_default="0"),
    Column("used_micro", BigInteger, nullable=False, server_default="0"),
    CheckConstraint(
        "credit_limit_micro IS NULL OR spent_micro <= credit_limit_micro", name="within_limit"
    ),
    CheckConstraint("spent_micro >= 0", name="spent_not_negative"),
)

_TERMINAL = "status IN ('completed', 'failed')"

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("api_key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("model", String(100), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("size", String(8), nullable=False),
    Column("quality", String(4), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("nsfw_check", Boolean, nullable=False),
    Column("callback_url", Text, nullable=True),
    # The W3C traceparent of the request that made the task, when tracing is on: the worker
    # and the callback sender record their spans in that trace (darkroom/tracing.py).
    Column("trace_parent", String(55), nullable=True),
    # The base URL the task was created through: its callback's result links use it.
    Column("link_base", Text, nullable=True),
    # Tasks in one batch must share it: model and pixel size.
    Column("batch_key", String(120), nullable=False),
    Column("status", String(16), nullable=False),
    Column("progress", Integer, nullable=False, server_default="0"),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("worker_id", String(100), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    # The price reserved at create, in micro-credits; charged_micro is set when it is captured.
    Column("price_micro", BigInteger, nullable=False, server_default="0"),
    Column("charged_micro", BigInteger, nullable=True),
    Column("estimated_time", Integer, nullable=False),
    Column("result_keys", JSON, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("results_deleted", Boolean, nullable=False, server_default=false()),
    CheckConstraint(
        "status IN ('pending', 'processing', 'completed', 'failed')", name="status_enum"
    ),
    CheckConstraint("progress >= 0 AND progress <= 100", name="progress_range"),
    CheckConstraint(
        f"({_TERMINAL} AND finished_at IS NOT NULL) OR (NOT {_TERMINAL} AND finished_at IS NULL)",
        name="finished_iff_terminal",
    ),
    CheckConstraint(
        "status <> 'processing' OR (lease_expires_at IS NOT NULL AND worker_id IS NOT NULL)",
        name="processing_has_lease",
    ),
    CheckConstraint(
        "status <> 'completed' OR result_keys IS NOT NULL", name="completed_has_results"
    ),
    CheckConstraint("status <> 'failed' OR error_code IS NOT NULL", name="failed_has_error"),
    Index("ix_tasks_claim", "status", "created_at"),
    Index("ix_tasks_lease", "status", "lease_expires_at"),
    Index("ix_tasks_finished", "finished_at"),
    Index("ix_tasks_key_status", "api_key_id", "status"),
    Index("ix_tasks_key_created", "api_key_id", "created_at"),
    Index("ix_tasks_account_started", "account_id", "started_at"),
    Index("ix_tasks_waiting", "status", "model", "account_id", "created_at"),
)

LEDGER_KINDS = ("reserve", "capture", "release", "credit", "debit")

# Every movement of credits. Task movements are unique per (task, kind), and a task is settled
# (captured or released) at most once: constraints, so a double settle fails its transaction.
# No foreign key to tasks: the ledger outlives task retention, for usage reports.
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("api_key_id", Integer, nullable=True),
    Column("task_id", String(40), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("amount_micro", BigInteger, nullable=False),
    Column("model", String(100), nullable=True),
    Column("quality", String(4), nullable=True),
    Column("note", Text, nullable=False, server_default=""),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint(f"kind IN {LEDGER_KINDS!r}", name="kind_enum"),
    CheckConstraint("amount_micro >= 0", name="amount_not_negative"),
    UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),
    Index(
        "ux_ledger_settled_once",
        "task_id",
        unique=True,
        sqlite_where=text("kind IN ('capture', 'release')"),
        postgresql_where=text("kind IN ('capture', 'release')"),
    ),
    Index("ix_ledger_created", "created_at"),
)

# A create request's Idempotency-Key: a retry with the same key and body gets the same task.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("api_key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("task_id", String(40), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    UniqueConstraint("api_key_id", "key", name="uq_idempotency_keys_api_key_id_key"),
)

CALLBACK_STATES = ("pending", "delivered", "failed")

# The callback outbox: a row is written in the transaction that ends a task with a callback_url,
# and senders in API processes deliver it. One row per task; a lease (locked_until) keeps two
# senders off one row, and next_attempt_at spaces the retries.
callbacks = Table(
    "callbacks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(40), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("locked_by", String(100), nullable=True),
    Column("locked_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    CheckConstraint(f"status IN {CALLBACK_STATES!r}", name="status_enum"),
    Index("ix_callbacks_due", "status", "next_attempt_at"),
)

# Each delivery attempt of a callback, for operators (`darkroom callbacks show`): when, whether
# the receiver took it, and why not. Deleted with its callback row.
callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("callback_id", Integer, ForeignKey("callbacks.id"), nullable=False),
    Column("attempted_at", UTCDateTime, nullable=False),
    Column("delivered", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    Index("ix_callback_attempts_callback", "callback_id"),
)

# Fingerprints of secrets that every process of a deployment must share (today: the one that
# signs result links), so that a process started with another refuses to run. A fingerprint is
# an HMAC made with the secret, which it does not reveal.
fingerprints = Table(
    "fingerprints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
)

WORKER_STATES = ("idle", "busy", "stopped")

# Workers the server knows: each worker process writes its row at start and refreshes it with
# its heartbeat; a row whose last_seen_at is older than a lease is a worker gone (killed, lost).
workers = Table(
    "workers",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("device", String(100), nullable=False),
    Column("model", String(100), nullable=False),
    Column("version", String(40), nullable=False),
    Column("state", String(16), nullable=False),
    Column("current_tasks", JSON, nullable=False),
    Column("images_done", Integer, nullable=False, server_default="0"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    CheckConstraint(f"state IN {WORKER_STATES!r}", name="state_enum"),
    Index("ix_workers_last_seen", "last_seen_at"),
)
