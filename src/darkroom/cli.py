"""The `darkroom` command: run the roles, migrate the database, manage API keys."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from darkroom.settings import Settings

if TYPE_CHECKING:
    from darkroom.accounts.store import AccountStore, KeyInfo

app = typer.Typer(help="darkroom: self-hosted krea-2-turbo image generation.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)

HostOpt = Annotated[str, typer.Option(help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]


def _settings() -> Settings:
    from darkroom.logging import configure_logging

    configure_logging(os.environ.get("DARKROOM_LOG_LEVEL", "INFO"))
    try:
        return Settings()
    except ValueError as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None


def _migrate(settings: Settings) -> None:
    from darkroom.db.database import Database
    from darkroom.db.migrate import upgrade

    async def run() -> None:
        db = Database(settings.resolved_database_url)
        try:
            await upgrade(db)
        finally:
            await db.dispose()

    asyncio.run(run())


@app.command()
def migrate() -> None:
    """Bring the database schema to the newest version."""
    _migrate(_settings())
    err.print("database schema is current")


@app.command()
def serve(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Everything in one: migrate, run the API and one worker child process (restarted if it dies)."""
    import uvicorn

    from darkroom.api.app import create_app
    from darkroom.worker.supervisor import WorkerSupervisor

    settings = _settings()
    _migrate(settings)
    app = create_app(settings, companions=[WorkerSupervisor()])
    uvicorn.run(app, host=host, port=port, log_level="info")


@app.command()
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """The API role alone (run `darkroom migrate` first)."""
    import uvicorn

    from darkroom.api.app import create_app

    uvicorn.run(create_app(_settings()), host=host, port=port, log_level="info")


@app.command()
def worker() -> None:
    """The worker role alone: one engine on one device."""
    from darkroom.worker.main import run_worker

    run_worker(_settings())


T = TypeVar("T")


def _with_accounts(action: Callable[[AccountStore], Awaitable[T]], *, migrate: bool = True) -> T:
    """Run one operator action against the configured database, then close it."""
    from darkroom.accounts.store import AccountStore
    from darkroom.db.database import Database

    settings = _settings()
    if migrate:
        _migrate(settings)

    async def run() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await action(AccountStore(db))
        finally:
            await db.dispose()

    return asyncio.run(run())


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account the key belongs to (created if new).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    group: Annotated[str, typer.Option(help="user_group of a new account.")] = "default",
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use (default: all).")
    ] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help="Requests allowed, e.g. 60/minute (default: the server's).")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="Unfinished tasks allowed at once.")
    ] = None,
) -> None:
    """Create a key; the key itself is printed alone on the last line of standard output."""
    from darkroom.accounts.store import KeyLimits
    from darkroom.api.limits import parse_rate

    if rate_limit is not None:
        try:
            parse_rate(rate_limit)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--rate-limit") from None
    limits = KeyLimits(
        allowed_models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
        rate_limit=rate_limit,
        max_concurrent=max_concurrent,
    )

    async def create(store: AccountStore) -> tuple[KeyInfo, str]:
        await store.ensure_account(account, group)
        return await store.create_key(account, name, limits)

    info, key = _with_accounts(create)
    err.print(f"created key {info.id} ({info.prefix}…) for account {account}")
    print(key)


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
) -> None:
    """List keys (never their secrets)."""
    keys = _with_accounts(lambda store: store.list_keys(account))
    table = Table(
        "id", "account", "name", "prefix", "models", "rate", "max tasks", "created", "revoked"
    )
    for k in keys:
        table.add_row(
            str(k.id),
            k.account_name,
            k.name,
            k.prefix + "…",
            ",".join(k.limits.allowed_models) if k.limits.allowed_models is not None else "all",
            k.limits.rate_limit or "default",
            str(k.limits.max_concurrent or "default"),
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (see `keys list`).")],
) -> None:
    """Revoke a key: it answers 401 from now on."""
    if not _with_accounts(lambda store: store.revoke_key(key_id), migrate=False):
        err.print(f"[red]no live key with id {key_id}[/red]")
        raise typer.Exit(1)
    err.print(f"key {key_id} revoked")


def main() -> None:
    app()
