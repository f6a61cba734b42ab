"""Tables, as SQLAlchemy Core metadata; Alembic migrations are written against this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
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
        if value is None:
            return None
        if isinstance(value, str):  # SQLite may hand back text for computed expressions
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("user_group", String(100), nullable=False, server_default="default"),
    Column("created_at", UTCDateTime, nullable=False),
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
    # Tasks in one batch must share it: model and pixel size.
    Column("batch_key", String(120), nullable=False),
    Column("status", String(16), nullable=False),
    Column("progress", Integer, nullable=False, server_default="0"),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("worker_id", String(100), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("credits_reserved", Float, nullable=False),
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
)
