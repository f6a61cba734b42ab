"""Shared fixtures: real SQLite files and real PostgreSQL databases, settings, apps, keys."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import pytest
import structlog

from darkroom.accounts.store import AccountStore
from darkroom.api.app import create_app
from darkroom.db.database import Database
from darkroom.db.migrate import upgrade
from darkroom.engine.memory import keep_freed_memory
from darkroom.settings import Settings

# As CPU workers do (darkroom/worker/main.py), before this process's threads exist: the engine
# tests' images reuse the memory of the ones before instead of faulting it in again.
keep_freed_memory()

# In-process tests log through structlog's defaults (darkroom's processes configure their own in
# darkroom/logging.py, which formats tracebacks as plain text first). The defaults draw an
# exception's traceback with rich, every frame's locals included: four seconds for the one 500
# of tests/api/test_create_errors.py. The same lines, with a plain traceback:
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.dev.set_exc_info,
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)

PG_ADMIN_DSN = os.environ.get("DARKROOM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgres"]


# Enough credits that tests about something else never meet a 402.
PLENTY = 10**6 * 1_000_000


def _pg_is_up() -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        except (OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def _start_postgres() -> None:
    versions = os.listdir("/etc/postgresql")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"], check=False
    )
    for _ in range(60):
        if _pg_is_up():
            return
        time.sleep(0.5)
    raise RuntimeError("PostgreSQL did not come up on 127.0.0.1:5432")


@pytest.fixture(autouse=True)
def _no_darkroom_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from darkroom's defaults: no DARKROOM_* variable of the shell running
    the suite leaks into its settings (the suite's own DARKROOM_TEST_* knobs stay)."""
    for name in list(os.environ):
        if name.startswith("DARKROOM_") and not name.startswith("DARKROOM_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres() -> str:
    """The admin DSN of a running PostgreSQL server, started if it was down."""
    if not _pg_is_up():
        _start_postgres()
    return PG_ADMIN_DSN


async def _create_pg_database(admin_dsn: str, template: str | None = None) -> str:
    name = f"darkroom_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()
    return name


def _migrated(url: str) -> None:
    async def run() -> None:
        database = Database(url)
        try:
            await upgrade(database)
        finally:
            await database.dispose()

    asyncio.run(run())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; a test's `db` starts from a copy of it
    (migrating each test's database took about 0.3 s, a few minutes over the suite)."""
    path = tmp_path_factory.mktemp("template") / "darkroom.db"
    _migrated(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template(postgres: str) -> Iterator[str]:
    """A PostgreSQL database migrated once per session: `CREATE DATABASE ... TEMPLATE` copies
    it for each test's `db` in a tenth of a second, where migrating took three."""
    name = asyncio.run(_create_pg_database(postgres))
    base = postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    _migrated(f"{base}/{name}")
    yield name
    asyncio.run(_drop_pg_database(postgres, name))


async def _drop_pg_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class RecycledPostgres:
    """Migrated PostgreSQL databases for in-process tests, emptied after each test and handed
    to the next: copying the template costs 0.4 s and dropping the copy 0.1 s, emptying one
    a few milliseconds. A database whose schema a test changed (its revision or its tables
    differ from the template's), or that cannot be emptied within two seconds (a connection
    left holding a lock), is dropped instead. Tests that start processes get fresh copies:
    a process outliving its test must not write into the next one's tables."""

    def __init__(self, admin_dsn: str, template: str) -> None:
        self.admin_dsn = admin_dsn
        self.template = template
        self.free: list[str] = []
        self.shape: tuple[str, list[str]] | None = None  # the template's revision and tables

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        return asyncio.run(_create_pg_database(self.admin_dsn, self.template))

    def give_back(self, name: str) -> None:
        if asyncio.run(self._emptied(name)):
            self.free.append(name)
        else:
            asyncio.run(_drop_pg_database(self.admin_dsn, name))

    def close(self) -> None:
        for name in self.free:
            asyncio.run(_drop_pg_database(self.admin_dsn, name))

    def _dsn(self, name: str) -> str:
        return f"{self.admin_dsn.rsplit('/', 1)[0]}/{name}"

    @staticmethod
    async def _read_shape(conn: asyncpg.Connection) -> tuple[str, list[str]]:
        revision = await conn.fetchval("SELECT version_num FROM alembic_version")
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        return revision, [row["tablename"] for row in tables]

    async def _emptied(self, name: str) -> bool:
        if self.shape is None:
            template = await asyncpg.connect(self._dsn(self.template))
            try:
                self.shape = await self._read_shape(template)
            finally:
                await template.close()
        conn = await asyncpg.connect(self._dsn(name))
        try:
            if await self._read_shape(conn) != self.shape:
                return False
            sequences = await conn.fetch(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
            )
            statements = [
                "SET lock_timeout = '2s'",
                "SET session_replication_role = replica",  # no foreign-key order to follow
                *(f'DELETE FROM "{t}"' for t in self.shape[1] if t != "alembic_version"),
                *(f'ALTER SEQUENCE "{row["sequencename"]}" RESTART' for row in sequences),
            ]
            await conn.execute(";".join(statements))
        except asyncpg.PostgresError:
            return False
        finally:
            await conn.close()
        return True


@pytest.fixture(scope="session")
def recycled_postgres(postgres: str, pg_template: str) -> Iterator[RecycledPostgres]:
    pool = RecycledPostgres(postgres, pg_template)
    yield pool
    pool.close()


# Folders whose every test starts processes (darkroom's services, its CLI, a browser).
PROCESS_FOLDERS = ("e2e", "client")
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.parent == TESTS and item.path.parent.name in PROCESS_FOLDERS:
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def _no_process_in_unit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make unit` (DARKROOM_TEST_UNIT=1) runs only tests that start no process: one that does
    without the `process` mark fails, saying so."""
    if os.environ.get("DARKROOM_TEST_UNIT") and request.node.get_closest_marker("process") is None:

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"{request.node.nodeid} starts a process: mark it `process`")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test on a database runs on SQLite, the embedded default; marked `each_database` (the
    table layer, the claim, races: code whose SQL or locking differs by backend), on both.
    A test's own `parametrize("database_url", ...)` wins."""
    if "database_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "database_url" in (names.split(",") if isinstance(names, str) else names):
            return
    each = metafunc.definition.get_closest_marker("each_database") is not None
    metafunc.parametrize("database_url", BACKENDS if each else ["sqlite"], indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a new PostgreSQL database. Empty, unless the
    test takes `db` or `env` (which want it migrated): then a copy of the session's migrated
    one (on PostgreSQL, for a test that starts no process, an emptied recycled copy)."""
    # `db` wants its tables; so do end-to-end tests (`env`): the services they start would
    # migrate it themselves, a second or more each (first starts are tested on their own).
    migrated = "db" in request.fixturenames or "env" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "darkroom.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    admin = request.getfixturevalue("postgres")
    base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    if migrated and request.node.get_closest_marker("process") is None:
        recycled: RecycledPostgres = request.getfixturevalue("recycled_postgres")
        name = recycled.take()
        yield f"{base}/{name}"
        recycled.give_back(name)
        return
    template = request.getfixturevalue("pg_template") if migrated else None
    name = asyncio.run(_create_pg_database(admin, template))
    yield f"{base}/{name}"
    asyncio.run(_drop_pg_database(admin, name))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Krea 2 pipeline, built once per session through the product's own builder."""
    from darkroom.engine.tiny import ensure_tiny_model

    cache = os.environ.get("DARKROOM_TEST_TINY_DIR")
    folder = Path(cache) if cache else tmp_path_factory.mktemp("tiny") / "tiny-krea2"
    return ensure_tiny_model(folder)


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "engine": "tiny",
        "lease_s": 5.0,
        "heartbeat_s": 1.0,
        "maintenance_interval_s": 0.5,
        "worker_poll_interval_s": 0.1,
        "progress_flush_s": 0.1,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database_url: str, tiny_model_dir: Path) -> Settings:
    return make_settings(tmp_path / "data", database_url, tiny_model_path=tiny_model_dir)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The test's database, migrated (`database_url` made it a copy of a migrated one)."""
    database = Database(settings.resolved_database_url)
    await upgrade(database)  # at head already: a read of its revision
    yield database
    await database.dispose()


@pytest.fixture
async def client(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process over ASGI (no background duties): for contract and validation tests."""
    app = create_app(settings, maintenance=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
    await app.state.services.db.dispose()


@pytest.fixture
async def api_key(db: Database) -> str:
    store = AccountStore(db)
    await store.create_account("alice", credits_micro=PLENTY)
    _, key = await store.create_key("alice")
    return key


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


T = TypeVar("T")


def on_database(url: str, action: Callable[[Database], Awaitable[T]]) -> T:
    """Run one async action against a database from synchronous (process-driving) tests."""

    async def run() -> T:
        db = Database(url)
        try:
            return await action(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def darkroom_cmd() -> list[str]:
    """The `darkroom` command of this interpreter's install."""
    return [sys.executable, "-m", "darkroom"]


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_server() -> str:
    """A running Redis on 127.0.0.1:6379, started if it was down."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
             "--save", "", "--appendonly", "no", "--dir", "/tmp"],
            check=True,
        )  # fmt: skip
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
    return REDIS_URL


# Credentials for the loopback S3 server; darkroom's processes find them as boto3 does anywhere.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "darkroom-test",
    "AWS_SECRET_ACCESS_KEY": "darkroom-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 server (moto's) on a loopback port for the whole session."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on that server, with its credentials in this process's environment."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"results-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket
