"""The API's background duties, run once against a real database and results folder."""

from __future__ import annotations

import os
import time

from darkroom.api.services import Services
from darkroom.db.migrate import upgrade
from darkroom.maintenance import STAGED_FILE_MAX_AGE_S, Maintenance
from darkroom.settings import Settings


async def test_a_pass_removes_staged_files_their_worker_abandoned(settings: Settings) -> None:
    services = Services.from_settings(settings)
    try:
        await upgrade(services.db)
        abandoned = services.storage.stage("task-1/0.png", b"a worker died before publishing")
        live = services.storage.stage("task-2/0.png", b"being checked right now")
        long_ago = time.time() - STAGED_FILE_MAX_AGE_S - 60
        os.utime(abandoned.tmp, (long_ago, long_ago))

        await Maintenance(services).run_once()

        assert not abandoned.tmp.exists()
        assert live.tmp.exists()
    finally:
        await services.db.dispose()
