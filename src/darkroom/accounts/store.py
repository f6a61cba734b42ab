"""Accounts and API keys in the database: create, list, revoke, authenticate."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from darkroom.accounts.keys import display_prefix, generate_key, hash_key, hashes_match
from darkroom.billing import ledger
from darkroom.billing.money import to_credits
from darkroom.clock import Clock, SystemClock
from darkroom.db.database import Database
from darkroom.db.schema import accounts, api_keys
from darkroom.db.schema import ledger as ledger_table


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


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
    balance_micro: int = 0
    used_micro: int = 0

    @classmethod
    def from_row(cls, row: Any) -> Account:
        return cls(
            row.id, row.name, row.user_group, row.created_at, row.balance_micro, row.used_micro
        )


@dataclass(frozen=True, slots=True)
class Credits:
    """What `GET /v1/credits` reports, in micro-credits: the key's own and its account's."""

    key_limit_micro: int | None
    key_spent_micro: int
    key_used_micro: int
    account_balance_micro: int
    account_used_micro: int

    @property
    def key_remaining_micro(self) -> int:
        """What this key can still reserve: its own allowance, never more than the account has."""
        if self.key_limit_micro is None:
            return self.account_balance_micro
        return max(0, min(self.key_limit_micro - self.key_spent_micro, self.account_balance_micro))


@dataclass(frozen=True, slots=True)
class UsageLine:
    account: str
    key_id: int | None
    model: str
    quality: str
    tasks: int
    credits_micro: int


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What one key may do; None means the server's default (or no restriction on models)."""

    allowed_models: tuple[str, ...] | None = None
    rate_limit: str | None = None
    max_concurrent: int | None = None
    credit_limit_micro: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> KeyLimits:
        models = row.allowed_models
        return cls(
            tuple(models) if models is not None else None,
            row.rate_limit,
            row.max_concurrent,
            row.credit_limit_micro,
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
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()  # every row's time stamp comes from it

    async def create_account(
        self, name: str, user_group: str = "default", *, credits_micro: int = 0
    ) -> Account:
        if credits_micro < 0:
            raise ValueError("an account cannot start with a negative balance")
        now = self.clock.now()
        stmt = (
            insert(accounts)
            .values(
                name=name,
                user_group=user_group,
                created_at=now,
                webhook_secret=new_webhook_secret(),
            )
            .returning(*accounts.c)
        )

        def run(conn: Connection) -> Row[Any]:
            row = conn.execute(stmt).one()
            ledger.adjust(
                conn, account_id=row.id, delta_micro=credits_micro, note="opening balance", now=now
            )
            return row

        try:
            row = await self.db.write(run)
        except IntegrityError as exc:
            raise AccountExists(f"account {name!r} already exists") from exc
        return Account(row.id, row.name, row.user_group, row.created_at, credits_micro, 0)

    async def get_account(self, name: str) -> Account | None:
        query = select(accounts).where(accounts.c.name == name)
        row = await self.db.read(lambda conn: conn.execute(query).first())
        return Account.from_row(row) if row else None

    async def list_accounts(self) -> list[Account]:
        query = select(accounts).order_by(accounts.c.id)
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return [Account.from_row(r) for r in rows]

    async def change_balance(
        self,
        name: str,
        *,
        add_micro: int | None = None,
        set_micro: int | None = None,
        note: str = "",
    ) -> Account:
        """Top up (or, negative, deduct) or set an account's balance; recorded in the ledger.

        ValueError when the result would be negative: the balance never goes below zero.
        """
        if (add_micro is None) == (set_micro is None):
            raise ValueError("give exactly one of add_micro and set_micro")
        now = self.clock.now()
        query = select(accounts).where(accounts.c.name == name)
        if self.db.dialect == "postgresql":
            query = query.with_for_update()

        def run(conn: Connection) -> Row[Any]:
            row = conn.execute(query).first()
            if row is None:
                raise UnknownAccount(f"no account named {name!r}")
            delta = add_micro if add_micro is not None else (set_micro or 0) - row.balance_micro
            if row.balance_micro + delta < 0:
                raise ValueError(
                    f"the balance would be negative ({to_credits(row.balance_micro + delta)})"
                )
            ledger.adjust(
                conn,
                account_id=row.id,
                delta_micro=delta,
                note=note or ("set balance" if set_micro is not None else "top-up"),
                now=now,
            )
            return conn.execute(select(accounts).where(accounts.c.id == row.id)).one()

        return Account.from_row(await self.db.write(run))

    async def webhook_secret(self, account_id: int) -> str:
        """The account's callback signing secret, made now if it has none (accounts from before
        callbacks were signed)."""
        query = select(accounts.c.webhook_secret).where(accounts.c.id == account_id)
        existing: str | None = await self.db.read(lambda conn: conn.execute(query).scalar_one())
        if existing is not None:  # the usual case: a read, no write lock per callback
            return existing
        fill = (
            update(accounts)
            .where(accounts.c.id == account_id, accounts.c.webhook_secret.is_(None))
            .values(webhook_secret=new_webhook_secret())
        )

        def run(conn: Connection) -> str:
            conn.execute(fill)
            secret: str = conn.execute(query).scalar_one()
            return secret

        return await self.db.write(run)

    async def rotate_webhook_secret(self, name: str) -> str:
        """A new signing secret; callbacks sent from now on use it."""
        secret = new_webhook_secret()
        stmt = update(accounts).where(accounts.c.name == name).values(webhook_secret=secret)
        if await self.db.write(lambda conn: conn.execute(stmt).rowcount) != 1:
            raise UnknownAccount(f"no account named {name!r}")
        return secret

    async def user_group(self, account_id: int) -> str:
        query = select(accounts.c.user_group).where(accounts.c.id == account_id)
        group: str = await self.db.read(lambda conn: conn.execute(query).scalar_one())
        return group

    async def credits(self, key_id: int) -> Credits:
        query = select(
            api_keys.c.credit_limit_micro,
            api_keys.c.spent_micro,
            api_keys.c.used_micro.label("key_used"),
            accounts.c.balance_micro,
            accounts.c.used_micro.label("account_used"),
        ).join(accounts, accounts.c.id == api_keys.c.account_id)
        query = query.where(api_keys.c.id == key_id)
        row = await self.db.read(lambda conn: conn.execute(query).one(), quick=True)
        return Credits(
            row.credit_limit_micro,
            row.spent_micro,
            row.key_used,
            row.balance_micro,
            row.account_used,
        )

    async def usage(
        self, since: datetime, until: datetime, account_name: str | None = None
    ) -> list[UsageLine]:
        """Charged tasks (captures) per account, key, model and quality in [since, until)."""
        query = (
            select(
                accounts.c.name,
                ledger_table.c.api_key_id,
                ledger_table.c.model,
                ledger_table.c.quality,
                func.count().label("tasks"),
                func.sum(ledger_table.c.amount_micro).label("micro"),
            )
            .join(accounts, accounts.c.id == ledger_table.c.account_id)
            .where(
                ledger_table.c.kind == "capture",
                ledger_table.c.created_at >= since,
                ledger_table.c.created_at < until,
            )
            .group_by(
                accounts.c.name,
                ledger_table.c.api_key_id,
                ledger_table.c.model,
                ledger_table.c.quality,
            )
            .order_by(accounts.c.name, ledger_table.c.api_key_id, ledger_table.c.model)
        )
        if account_name is not None:
            query = query.where(accounts.c.name == account_name)
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return [
            UsageLine(r.name, r.api_key_id, r.model or "", r.quality or "", r.tasks, int(r.micro))
            for r in rows
        ]

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
        now = self.clock.now()
        stmt = (
            insert(api_keys)
            .values(
                account_id=account.id,
                name=name,
                prefix=display_prefix(key),
                key_hash=hash_key(key),
                created_at=now,
                allowed_models=(
                    list(limits.allowed_models) if limits.allowed_models is not None else None
                ),
                rate_limit=limits.rate_limit,
                max_concurrent=limits.max_concurrent,
                credit_limit_micro=limits.credit_limit_micro,
            )
            .returning(*api_keys.c)
        )
        row = await self.db.write(lambda conn: conn.execute(stmt).one())
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
        rows = await self.db.read(lambda conn: conn.execute(query).all())
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
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=self.clock.now())
        )
        return await self.db.write(lambda conn: conn.execute(stmt).rowcount == 1)

    async def authenticate(self, key: str) -> Principal | None:
        """The principal for a live key, or None for an unknown or revoked one."""
        digest = hash_key(key)
        query = (
            select(api_keys, accounts.c.name.label("account_name"), accounts.c.user_group)
            .join(accounts, accounts.c.id == api_keys.c.account_id)
            .where(api_keys.c.key_hash == digest)
        )
        row = await self.db.read(lambda conn: conn.execute(query).first(), quick=True)
        if row is None or not hashes_match(row.key_hash, digest) or row.revoked_at is not None:
            return None
        return Principal(
            row.id, row.account_id, row.account_name, row.user_group, KeyLimits.from_row(row)
        )
