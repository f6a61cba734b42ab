"""Logs to standard error (standard output stays for command results), one renderer for all.

`DARKROOM_LOG_FORMAT=json` writes one JSON object per line (what a log shipper wants);
`console` (the default) writes `timestamp [level] event key=value` for people. darkroom's own
structlog lines and the libraries' standard-library lines (uvicorn, alembic, httpx, ...) pass
through the same processors, so both carry the bound context: `request_id` in the API, `task_id`
or `task_ids` where a task is being handled.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]
FORMATS: tuple[LogFormat, ...] = ("console", "json")

# Applied to every line, darkroom's and the libraries', before the renderer.
_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _renderer(fmt: LogFormat) -> structlog.typing.Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=False)


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and the standard library's logging to one stderr handler.

    An unknown format is refused here, at start, rather than silently falling back."""
    if fmt not in FORMATS:
        raise ValueError(f"DARKROOM_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _renderer(fmt),
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        # DARKROOM_LOG_LEVEL filters darkroom's own (structlog) lines as well as the libraries'.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
