"""Whether the tiny model is built, answered without torch (an API process asks it)."""

from __future__ import annotations

from pathlib import Path

TINY_VERSION = "2"
MARKER = "darkroom-tiny-version"


def tiny_model_ready(folder: Path) -> bool:
    """The folder holds a finished build of this version (written last, after every file)."""
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == TINY_VERSION
