"""Accounts and API keys in the database: create, list, revoke, authenticate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from darkroom.accounts.keys import display_prefix, generate_key, hash_key, hashes_match
from darkroom.db.database import Database
from darkroom.db.schema import accounts, api_keys
from darkroom.tasks.store import utcnow


class AccountExists(ValueError):
    """An account with that name already exists."""


class UnknownAccount(LookupError):
    """No such account."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    user_group: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What one key may do; None means the server's default (or no restriction on models)."""

    allowed_models: tuple[str, ...] | None = None
    rate_limit: str | None = None
    max_concurrent: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> KeyLimits:
        models = row.allowed_models
        return cls(
            tuple(models) if models is not None else None, row.rate_limit, row.max_concurrent
        )

    def allows(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    account_id: int
    account_name: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key and the account it belongs to."""

    key_id: int
    account_id: int
    account_name: str
    user_group: str
    limits: KeyLimits = KeyLimits()


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_account(self, name: str, user_group: str = "default") -> Account:
        now = utcnow()
        try:
            async with self.db.transaction() as conn:
                row = (
                    await conn.execute(
                        insert(accounts)
                        .values(name=name, user_group=user_group, created_at=now)
                        .returning(*accounts.c)
                    )
                ).one()
        except IntegrityError as exc:
            raise AccountExists(f"account {name!r} already exists") from exc
        return Account(row.id, row.name, row.user_group, row.created_at)

    async def get_account(self, name: str) -> Account | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.name == name))).first()
        return Account(row.id, row.name, row.user_group, row.created_at) if row else None

    async def ensure_account(self, name: str, user_group: str = "default") -> Account:
        existing = await self.get_account(name)
        if existing is not None:
            return existing
        try:
            return await self.create_account(name, user_group)
        except AccountExists:
            found = await self.get_account(name)
            assert found is not None
            return found

    async def create_key(
        self, account_name: str, name: str = "", limits: KeyLimits | None = None
    ) -> tuple[KeyInfo, str]:
        """A new key for the account; the plaintext is returned once and never stored."""
        account = await self.get_account(account_name)
        if account is None:
            raise UnknownAccount(f"no account named {account_name!r}")
        limits = limits or KeyLimits()
        key = generate_key()
        now = utcnow()
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    insert(api_keys)
                    .values(
                        account_id=account.id,
                        name=name,
                        prefix=display_prefix(key),
                        key_hash=hash_key(key),
                        created_at=now,
                        allowed_models=(
                            list(limits.allowed_models)
                            if limits.allowed_models is not None
                            else None
                        ),
                        rate_limit=limits.rate_limit,
                        max_concurrent=limits.max_concurrent,
                    )
                    .returning(*api_keys.c)
                )
            ).one()
        info = KeyInfo(row.id, account.id, account.name, row.name, row.prefix, now, None, limits)
        return info, key

    async def list_keys(self, account_name: str | None = None) -> list[KeyInfo]:
        query = (
            select(api_keys, accounts.c.name.label("account_name"))
            .join(accounts, accounts.c.id == api_keys.c.account_id)
            .order_by(api_keys.c.id)
        )
        if account_name is not None:
            query = query.where(accounts.c.name == account_name)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            KeyInfo(
                r.id,
                r.account_id,
                r.account_name,
                r.name,
                r.prefix,
                r.created_at,
                r.revoked_at,
                KeyLimits.from_row(r),
            )
            for r in rows
        ]

    async def revoke_key(self, key_id: int) -> bool:
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return result.rowcount == 1

    async def authenticate(self, key: str) -> Principal | None:
        """The principal for a live key, or None for an unknown or revoked one."""
        digest = hash_key(key)
        query = (
            select(api_keys, accounts.c.name.label("account_name"), accounts.c.user_group)
            .join(accounts, accounts.c.id == api_keys.c.account_id)
            .where(api_keys.c.key_hash == digest)
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or not hashes_match(row.key_hash, digest) or row.revoked_at is not None:
            return None
        return Principal(
            row.id, row.account_id, row.account_name, row.user_group, KeyLimits.from_row(row)
        )
