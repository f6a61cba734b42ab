"""The path of one `POST /v1/images/generations` through darkroom's modules, traced.

Runs the API in-process (ASGI, a fresh SQLite file, the tiny model's tokenizer), makes one
create to warm it, then traces a second with `sys.setprofile`: every call from darkroom code
into darkroom code. Prints the modules the create visits in the order it first enters them, and
every call that climbs back up: from a module of a lower layer into code of a higher one
(the layers are tests/test_layers.py's, bottom to top). A call's caller is the nearest darkroom
frame up its stack. A callback handed down and run below (a store's transaction function run by
`db.Database.write`, say) counts as a climb: it is one, however deliberate. SQLAlchemy runs
some of those functions on a greenlet whose stack ends in SQLAlchemy: a call with no darkroom
frame above it counts as no climb, so callbacks run there are undercounted (each is the same
kind: a store's statements handed down to `Database.read` or `Database.write`).

    python bench/create_path.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from types import FrameType

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from darkroom.accounts.store import AccountStore
from darkroom.api.app import create_app
from darkroom.db.database import Database
from darkroom.db.migrate import upgrade
from darkroom.engine.tiny import ensure_tiny_model
from darkroom.settings import Settings

# tests/test_layers.py's layers, bottom (0) to top.
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        ["contract", "errors", "clock", "attention_backends", "wire", "metrics", "tracing",
         "logging"], 0,
    ),
    "settings": 1,
    "db": 2,
    **dict.fromkeys(["storage", "billing", "accounts", "engine", "moderation"], 3),
    "tasks": 4,
    **dict.fromkeys(["service", "callbacks"], 5),
    **dict.fromkeys(["worker", "maintenance"], 6),
    **dict.fromkeys(["api", "cli"], 7),
}  # fmt: skip


def module_of(frame: FrameType) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name.startswith("darkroom.") else None


def layer_of(module: str) -> int:
    return LAYERS[module.split(".")[1]]


class Tracer:
    def __init__(self) -> None:
        self.visited: list[str] = []
        self.climbs: dict[tuple[str, str, str], int] = {}

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        callee = module_of(frame)
        if callee is None:
            return
        if callee not in self.visited:
            self.visited.append(callee)
        caller = self._darkroom_caller(frame.f_back)
        if caller is not None and layer_of(caller) < layer_of(callee):
            key = (caller, callee, frame.f_code.co_name)
            self.climbs[key] = self.climbs.get(key, 0) + 1

    @staticmethod
    def _darkroom_caller(frame: FrameType | None) -> str | None:
        """The nearest darkroom module up the stack (through library frames: SQLAlchemy's
        greenlets, asyncio, starlette)."""
        while frame is not None:
            module = module_of(frame)
            if module is not None:
                return module
            frame = frame.f_back
        return None


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        tiny = ensure_tiny_model(root / "tiny")
        settings = Settings(
            data_dir=root / "data",
            database_url=f"sqlite+aiosqlite:///{root / 'darkroom.db'}",
            engine="tiny",
            tiny_model_path=tiny,
        )  # type: ignore[call-arg]
        db = Database(settings.resolved_database_url)
        await upgrade(db)
        accounts = AccountStore(db)
        await accounts.create_account("bench", credits_micro=10**12)
        _, key = await accounts.create_key("bench")
        await db.dispose()

        app = create_app(settings, maintenance=False)
        transport = httpx.ASGITransport(app=app)
        body = {"model": "krea-2-turbo", "prompt": "a lighthouse at dusk", "size": "16:9"}
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            warm = await client.post("/v1/images/generations", json=body, headers=headers)
            assert warm.status_code == 200, warm.text
            tracer = Tracer()
            sys.setprofile(tracer)
            try:
                made = await client.post("/v1/images/generations", json=body, headers=headers)
            finally:
                sys.setprofile(None)
            assert made.status_code == 200, made.text
        await app.state.services.db.dispose()

    print(f"modules a create passes through: {len(tracer.visited)}")
    for module in tracer.visited:
        print(f"  {layer_of(module)}  {module}")
    print(f"calls that climb back up (lower layer -> higher layer): {len(tracer.climbs)} kinds")
    for (caller, callee, function), count in sorted(tracer.climbs.items()):
        print(f"  {caller} -> {callee}.{function} x{count}")


if __name__ == "__main__":
    asyncio.run(main())
