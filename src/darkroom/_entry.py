"""The `darkroom` command's entry point: the CLI where the server is installed, and where only
the client is (`pip install darkroom`), one line naming what to install instead of a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from darkroom.cli import main as run
    except ModuleNotFoundError as exc:
        sys.exit(
            f"darkroom: this command needs the server's packages ({exc.name} is not installed): "
            "pip install 'darkroom[server]' (or [api], or [engine] for a GPU worker). The client "
            "needs none of them: from darkroom.client import Client"
        )
    run()
