"""A worker's readiness as a file, for container healthchecks and Kubernetes probes: touched
once the model is loaded and at every heartbeat that reached the database, removed at stop.
`darkroom healthcheck --ready-file` reads its age."""

from __future__ import annotations

from pathlib import Path

import structlog


class ReadyFile:
    def __init__(self, path: Path | None, log: structlog.typing.FilteringBoundLogger) -> None:
        self.path = path
        self.log = log

    def mark(self, ready: bool = True) -> None:
        """Touch it (ready) or remove it; a failure is logged, never raised."""
        if self.path is None:
            return
        try:
            if ready:
                self.path.touch()
            else:
                self.path.unlink(missing_ok=True)
        except OSError:
            self.log.warning("cannot write the ready file", path=str(self.path), exc_info=True)
