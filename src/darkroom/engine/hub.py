"""Telling a local folder from a Hugging Face repo id, and reaching the hub only for an id.

A path is a path: an existing folder, or anything written as a path (absolute, `./`, `../`, `~`,
more than one `/`), never goes to the hub. An id is looked up in the local cache first, and the
hub is asked only when the cache lacks it and offline mode (`HF_HUB_OFFLINE=1`) is not set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# `name` or `namespace/name`, as the hub spells repo ids.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def is_hub_id(weights: str) -> bool:
    """Whether `weights` names a hub repo rather than a folder on this machine."""
    if Path(weights).expanduser().exists() or weights.startswith((".", "/", "~", os.sep)):
        return False
    return bool(_REPO_ID.fullmatch(weights)) and ".." not in weights


def hub_offline() -> bool:
    """Whether the hub must not be contacted (`HF_HUB_OFFLINE`, read as huggingface_hub does)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
