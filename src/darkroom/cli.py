"""The `darkroom` command: run the roles, migrate the database, manage API keys.

Over 400 lines on purpose: one short function per command, each importing what it needs when it
runs (so `darkroom keys list` never loads uvicorn or torch); the length is the number of
commands, and splitting them across modules would only scatter typer's registration.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from darkroom.client_command import generate
from darkroom.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from darkroom.accounts.store import Account, AccountStore, KeyInfo
    from darkroom.db.database import Database
    from darkroom.tasks.outbox import Attempt, CallbackRow

app = typer.Typer(help="darkroom: self-hosted krea-2-turbo image generation.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
tasks_app = typer.Typer(help="Operator actions on tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
callbacks_app = typer.Typer(
    help="Inspect callback deliveries and send them again.", no_args_is_help=True
)
app.add_typer(callbacks_app, name="callbacks")
accounts_app = typer.Typer(
    help="Accounts and their credits: create, list, top up, set, usage.", no_args_is_help=True
)
app.add_typer(accounts_app, name="accounts")
err = Console(stderr=True)


def _stdout() -> Console:
    """Tables on standard output: a terminal's width, or, piped or captured (where rich would
    assume 80 columns and cut ids and dates), wide enough for every column."""
    return Console(width=None if sys.stdout.isatty() else 240)


def _no_type_after_flags() -> None:
    """Typer's help prints `<bool>` after plain flags (`--json <bool>`), as if they took a
    value (`--no-wait true` fails): flags show no type."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign,assignment]


_no_type_after_flags()
# The client's command: a picture from a server, with a progress bar (darkroom/client_command.py).
app.command("generate")(generate)

HostOpt = Annotated[str, typer.Option(help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]


def _settings() -> Settings:
    from darkroom.logging import configure_logging

    try:
        settings = Settings()
    except ValueError as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


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
    from darkroom.api.app import create_app
    from darkroom.api.server import serve as run_server
    from darkroom.worker.supervisor import WorkerSupervisor

    settings = _settings()
    _migrate(settings)
    _build_tiny_model_first(settings)
    app = _app(lambda: create_app(settings, children=[WorkerSupervisor()]))
    run_server(
        app,
        host,
        port,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
    )


def _build_tiny_model_first(settings: Settings) -> None:
    """The tiny model, built before the API starts so that its tokenizer counts prompts from
    the first request; in a child process, since this one (the API's) never imports torch."""
    from darkroom.engine.tiny_marker import tiny_model_ready

    tiny = settings.engine == "tiny" and settings.models[settings.served_model].weights is None
    if tiny and not tiny_model_ready(settings.tiny_model_dir):
        import subprocess

        err.print("building the tiny offline model (its images are noise) ...")
        subprocess.run([sys.executable, "-m", "darkroom", "tiny-model"], check=True)


@app.command("tiny-model")
def tiny_model() -> None:
    """Build the tiny offline model (random weights, real classes) where DARKROOM_ENGINE=tiny
    looks for it; `serve` and workers build it when it is missing."""
    from darkroom.engine.tiny import ensure_tiny_model

    folder = ensure_tiny_model(_settings().tiny_model_dir)
    err.print(f"tiny model ready in {folder}")


@app.command()
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """The API role alone (run `darkroom migrate` first)."""
    from darkroom.api.app import create_app
    from darkroom.api.server import serve as run_server

    settings = _settings()
    app = _app(lambda: create_app(settings))
    run_server(
        app,
        host,
        port,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
    )


def _app(build: Callable[[], FastAPI]) -> FastAPI:
    """The app, or a clear exit when this process's signing secret cannot be used or it cannot
    count prompt tokens."""
    from darkroom.engine.tokens import TokenizerMissing
    from darkroom.settings import SecretRefused

    try:
        return build()
    except (SecretRefused, TokenizerMissing) as exc:
        err.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("signing-secret")
def signing_secret(
    adopt: Annotated[
        bool,
        typer.Option(
            help="Make this process's secret the deployment's (after changing it on purpose; "
            "links signed with the previous one stop working)."
        ),
    ] = False,
) -> None:
    """Whether this process's link-signing secret is the one the deployment recorded."""
    from darkroom.db.fingerprints import adopt_secret, agree_on_secret, fingerprint
    from darkroom.settings import SecretRefused
    from darkroom.storage.signing import load_or_create_secret

    settings = _settings()
    secret = settings.signing_secret or load_or_create_secret(settings.data_dir)

    async def check(db: Database) -> str:
        if adopt:
            await adopt_secret(db, secret)
            return "adopted"
        try:
            await agree_on_secret(db, secret)
        except SecretRefused as exc:
            return f"refused: {exc}"
        return "agrees"

    verdict = _with_db(check)
    err.print(f"fingerprint {fingerprint(secret)[:16]}: {verdict}")
    if verdict.startswith("refused"):
        raise typer.Exit(1)


@app.command()
def worker() -> None:
    """The worker role alone: one engine on one device."""
    from darkroom.worker.main import run_worker

    run_worker(_settings())


T = TypeVar("T")


def _with_db(action: Callable[[Database], Awaitable[T]], *, migrate: bool = True) -> T:
    """Run one operator action against the configured database, then close it."""
    from darkroom.db.database import Database

    settings = _settings()
    if migrate:  # quietly: an operator's command prints its own result, not Alembic's steps
        logging.getLogger("alembic").setLevel(logging.WARNING)
        _migrate(settings)

    async def run() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await action(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def _with_accounts(action: Callable[[AccountStore], Awaitable[T]], *, migrate: bool = True) -> T:
    from darkroom.accounts.store import AccountStore

    return _with_db(lambda db: action(AccountStore(db)), migrate=migrate)


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account the key belongs to.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    create_account: Annotated[
        bool,
        typer.Option(help="Create the account (no credits) if it does not exist, not an error."),
    ] = False,
    group: Annotated[str, typer.Option(help="user_group of an account made here.")] = "default",
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use (default: all).")
    ] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help="Requests allowed, e.g. 60/minute (default: the server's).")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="Unfinished tasks allowed at once.")
    ] = None,
    credit_limit: Annotated[
        float | None,
        typer.Option(min=0, help="Credits this key may spend in all (default: unlimited)."),
    ] = None,
) -> None:
    """Create a key; the key itself is printed alone on the last line of standard output."""
    from darkroom.accounts.store import KeyLimits
    from darkroom.api.limits import parse_rate
    from darkroom.billing.money import to_micro

    if rate_limit is not None:
        try:
            parse_rate(rate_limit)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--rate-limit") from None
    limits = KeyLimits(
        allowed_models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
        rate_limit=rate_limit,
        max_concurrent=max_concurrent,
        credit_limit_micro=to_micro(credit_limit) if credit_limit is not None else None,
    )

    async def create(store: AccountStore) -> tuple[KeyInfo, str] | None:
        if create_account:
            await store.ensure_account(account, group)
        elif await store.get_account(account) is None:
            return None  # a mistyped name must not become an empty account
        return await store.create_key(account, name, limits)

    made = _with_accounts(create)
    if made is None:
        err.print(
            f"[red]no account named {account!r}[/red]: create it with `darkroom accounts create "
            f"{account} --credits N`, or pass --create-account"
        )
        raise typer.Exit(1)
    info, key = made
    err.print(f"created key {info.id} ({info.prefix}…) for account {account}")
    print(key)


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
) -> None:
    """List keys (never their secrets)."""
    keys = _with_accounts(lambda store: store.list_keys(account))
    from darkroom.billing.money import to_credits

    table = Table(
        "id",
        "account",
        "name",
        "prefix",
        "models",
        "rate",
        "max tasks",
        "credit limit",
        "created",
        "revoked",
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
            (
                f"{to_credits(k.limits.credit_limit_micro):g}"
                if k.limits.credit_limit_micro is not None
                else "unlimited"
            ),
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
        )
    _stdout().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (see `keys list`).")],
) -> None:
    """Revoke a key: it answers 401 from now on."""
    if not _with_accounts(lambda store: store.revoke_key(key_id), migrate=False):
        err.print(f"[red]no live key with id {key_id}[/red]")
        raise typer.Exit(1)
    err.print(f"key {key_id} revoked")


CreditsArg = Annotated[float, typer.Argument(help="Credits (decimals allowed, e.g. 12.5).")]


def _print_accounts(accounts: list[Account]) -> None:
    from darkroom.billing.money import to_credits

    table = Table("id", "name", "group", "balance", "used", "created")
    for a in accounts:
        table.add_row(
            str(a.id),
            a.name,
            a.user_group,
            f"{to_credits(a.balance_micro):g}",
            f"{to_credits(a.used_micro):g}",
            a.created_at.isoformat(timespec="seconds"),
        )
    _stdout().print(table)


def _change_balance(name: str, *, add: float | None, set_to: float | None, note: str) -> None:
    from darkroom.accounts.store import UnknownAccount
    from darkroom.billing.money import to_micro

    async def change(store: AccountStore) -> Account:
        return await store.change_balance(
            name,
            add_micro=to_micro(add) if add is not None else None,
            set_micro=to_micro(set_to) if set_to is not None else None,
            note=note,
        )

    try:
        account = _with_accounts(change)
    except (UnknownAccount, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print_accounts([account])


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    group: Annotated[str, typer.Option(help="Its user_group, reported on every task.")] = "default",
    credits: Annotated[float, typer.Option(min=0, help="Opening balance in credits.")] = 0.0,
) -> None:
    """Create an account (then give it keys with `keys create --account NAME`)."""
    from darkroom.accounts.store import AccountExists
    from darkroom.billing.money import to_micro

    async def create(store: AccountStore) -> Account:
        return await store.create_account(name, group, credits_micro=to_micro(credits))

    try:
        account = _with_accounts(create)
    except AccountExists as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print_accounts([account])


@accounts_app.command("list")
def accounts_list() -> None:
    """Accounts with their balance (what they may still spend) and credits used."""
    _print_accounts(_with_accounts(lambda store: store.list_accounts()))


@accounts_app.command("top-up")
def accounts_top_up(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    amount: CreditsArg,
    note: Annotated[str, typer.Option(help="Recorded in the ledger.")] = "",
) -> None:
    """Add credits to a balance; a negative amount (after `--`) deducts, never below zero."""
    _change_balance(name, add=amount, set_to=None, note=note)


@accounts_app.command("set-balance")
def accounts_set_balance(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    amount: Annotated[float, typer.Argument(min=0, help="The new balance in credits.")],
    note: Annotated[str, typer.Option(help="Recorded in the ledger.")] = "",
) -> None:
    """Set a balance; the difference is recorded in the ledger."""
    _change_balance(name, add=None, set_to=amount, note=note)


@accounts_app.command("webhook-secret")
def accounts_webhook_secret(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    rotate: Annotated[bool, typer.Option(help="Replace it with a new one first.")] = False,
) -> None:
    """Print the secret that signs the account's callbacks (Standard Webhooks `whsec_…`)."""
    from darkroom.accounts.store import UnknownAccount

    async def secret(store: AccountStore) -> str:
        if rotate:
            return await store.rotate_webhook_secret(name)
        account = await store.get_account(name)
        if account is None:
            raise UnknownAccount(f"no account named {name!r}")
        return await store.webhook_secret(account.id)

    try:
        value = _with_accounts(secret)
    except UnknownAccount as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if rotate:
        err.print("rotated: callbacks sent from now on are signed with this secret")
    print(value)


@accounts_app.command("usage")
def accounts_usage(
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Start (UTC), default 30 days ago.")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="End (UTC), default now.")] = None,
) -> None:
    """Credits charged per account, key, model and quality over a period."""
    from darkroom.billing.money import to_credits

    end = until.replace(tzinfo=UTC) if until else datetime.now(UTC)
    start = since.replace(tzinfo=UTC) if since else end - timedelta(days=30)
    lines = _with_accounts(lambda store: store.usage(start, end, account))
    table = Table(
        "account", "key", "model", "quality", "tasks", "credits", title=f"{start} to {end}"
    )
    total = 0
    for line in lines:
        total += line.credits_micro
        table.add_row(
            line.account,
            str(line.key_id),
            line.model,
            line.quality,
            str(line.tasks),
            f"{to_credits(line.credits_micro):g}",
        )
    table.add_row("total", "", "", "", str(sum(x.tasks for x in lines)), f"{to_credits(total):g}")
    _stdout().print(table)


@app.command("healthcheck")
def healthcheck(
    url: Annotated[
        str | None, typer.Option(help="Ask this API's /readyz, e.g. http://127.0.0.1:8000.")
    ] = None,
    ready_file: Annotated[
        str | None, typer.Option(help="A worker's DARKROOM_WORKER_READY_FILE: must be fresh.")
    ] = None,
    max_age: Annotated[float, typer.Option(help="Seconds the ready file may be old.")] = 60.0,
) -> None:
    """For container healthchecks and probes: exit 0 when ready, 1 (with the reason) if not."""
    import time
    from pathlib import Path

    import httpx

    if url is not None:
        try:
            answer = httpx.get(f"{url.rstrip('/')}/readyz", timeout=5)
        except httpx.HTTPError as exc:
            err.print(f"not ready: {exc!r}")
            raise typer.Exit(1) from None
        if answer.status_code != 200:
            err.print(f"not ready: {answer.status_code} {answer.text[:300]}")
            raise typer.Exit(1)
    if ready_file is not None:
        try:
            age = time.time() - Path(ready_file).stat().st_mtime
        except OSError:
            err.print(f"not ready: no {ready_file} (the model is not loaded yet, or it stopped)")
            raise typer.Exit(1) from None
        if age > max_age:
            err.print(f"not ready: {ready_file} is {age:.0f} s old (no heartbeat)")
            raise typer.Exit(1)
    if url is None and ready_file is None:
        err.print("give --url (an API) or --ready-file (a worker)")
        raise typer.Exit(2)


@app.command("workers")
def workers_list(
    show_all: Annotated[
        bool, typer.Option("--all", help="Also workers stopped or not seen within a lease.")
    ] = False,
) -> None:
    """The workers the server knows: live ones (seen within a lease), or --all."""
    from darkroom.clock import utcnow
    from darkroom.tasks.workers import WorkerRegistry

    settings = _settings()
    known = _with_db(lambda db: WorkerRegistry(db).all())
    now = utcnow()
    table = Table("worker", "host", "device", "model", "version", "state", "tasks", "images",
                  "started", "last seen")  # fmt: skip
    for w in known:
        live = w.live(now, settings.lease_s)
        if not (live or show_all):
            continue
        seen = f"{(now - w.last_seen_at).total_seconds():.0f} s ago"
        state = w.state if live or w.state == "stopped" else f"{w.state} (gone)"
        table.add_row(w.id, w.host, w.device, w.model, w.version, state,
                      ", ".join(w.current_tasks) or "-", str(w.images_done),
                      w.started_at.isoformat(timespec="seconds"), seen)  # fmt: skip
    # Wide enough for host:pid:hex ids when piped (rich would wrap them at 80 columns).
    _stdout().print(table)


@tasks_app.command("cancel")
def tasks_cancel(
    task_id: Annotated[str, typer.Argument(help="The task's id (task-unified-…).")],
    reason: Annotated[str, typer.Option(help="The message the task's error carries.")] = (
        "Cancelled by the operator"
    ),
) -> None:
    """Cancel a pending or running task: it fails `request_cancelled`, is refunded, and its
    callback fires; a worker still generating it has its result discarded."""
    from darkroom.storage.factory import storage_from_settings
    from darkroom.tasks.results import remove_leftovers
    from darkroom.tasks.store import TaskStore

    storage = storage_from_settings(_settings())

    async def cancel(db: Database) -> bool:
        task = await TaskStore(db).cancel(task_id, reason)
        if task is None:
            return False
        # An attempt that published before its worker died; a running one discards its own.
        await remove_leftovers(storage, task.id, task.attempt)
        return True

    if not _with_db(cancel):
        err.print(f"[red]{task_id} is unknown or already finished[/red]")
        raise typer.Exit(1)
    err.print(f"{task_id} cancelled")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")


@callbacks_app.command("list")
def callbacks_list(
    status: Annotated[
        str | None, typer.Option(help="Only pending, delivered or failed ones.")
    ] = None,
    account: Annotated[str | None, typer.Option(help="Only this account's.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
) -> None:
    """Callbacks newest first: where each goes, its state, attempts and last error."""
    from darkroom.db.schema import CALLBACK_STATES
    from darkroom.tasks.outbox import Outbox

    if status is not None and status not in CALLBACK_STATES:
        err.print(f"[red]--status must be one of {', '.join(CALLBACK_STATES)}[/red]")
        raise typer.Exit(2)
    rows = _with_db(lambda db: Outbox(db).listing(status=status, account=account, limit=limit))
    table = Table("task", "account", "url", "status", "attempts", "last error", "next / ended")
    for row in rows:
        ended = row.finished_at if row.status != "pending" else row.next_attempt_at
        table.add_row(row.task_id, row.account, row.url, row.status, str(row.attempts),
                      row.last_error or "-", _when(ended))  # fmt: skip
    _stdout().print(table)


@callbacks_app.command("show")
def callbacks_show(
    task_id: Annotated[str, typer.Argument(help="The task whose callback to show.")],
) -> None:
    """One task's callback and every attempt made: when, delivered or the error."""
    from darkroom.tasks.outbox import Outbox

    async def read(db: Database) -> tuple[list[CallbackRow], list[Attempt]]:
        outbox = Outbox(db)
        return await outbox.listing(task_ids=[task_id]), await outbox.attempts_of(task_id)

    rows, attempts = _with_db(read)
    if not rows:
        err.print(f"[red]{task_id} has no callback[/red]")
        raise typer.Exit(1)
    row = rows[0]
    out = _stdout()
    out.print(f"{row.task_id} → {row.url}: {row.status} ({row.account})")
    table = Table("#", "attempted", "outcome")
    for number, attempt in enumerate(attempts, 1):
        outcome = "delivered" if attempt.delivered else attempt.error or "failed"
        table.add_row(str(number), _when(attempt.attempted_at), outcome)
    out.print(table)


@callbacks_app.command("retry")
def callbacks_retry(
    task_ids: Annotated[
        list[str] | None, typer.Argument(help="Tasks whose ended callback to send again.")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every callback that gave up.")
    ] = False,
) -> None:
    """Send ended callbacks again (a full round of attempts from now, the same webhook-id):
    after a receiver's outage, or for a receiver that lost what it was sent."""
    from darkroom.clock import utcnow
    from darkroom.tasks.outbox import Outbox

    if not task_ids and not all_failed:
        err.print("[red]name task ids, or --all-failed[/red]")
        raise typer.Exit(2)

    async def retry(db: Database) -> list[str]:
        outbox = Outbox(db)
        wanted = list(task_ids or [])
        if all_failed:
            failed = await outbox.listing(status="failed", limit=1_000_000)
            wanted += [row.task_id for row in failed]
        return await outbox.retry(wanted, utcnow())

    queued = _with_db(retry)
    for task_id in queued:
        _stdout().print(task_id)
    missed = sorted(set(task_ids or []) - set(queued))
    if missed:
        err.print(f"[yellow]not retried (no callback, or one still pending):[/yellow] "
                  f"{', '.join(missed)}")  # fmt: skip
    err.print(f"{len(queued)} callback(s) queued again")
    if missed:
        raise typer.Exit(1)


def main() -> None:
    app()
