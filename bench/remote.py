"""What fronting an engine costs: the same images straight from darkroom B's `/openai/v1` (its
tiny engine) and through darkroom A, whose worker forwards to B (`remote`, flavour `darkroom`).

Both are measured in one run, one request at a time, alternating (B, then A), so the machine's
drift falls on both alike. A request through A is A's `/openai/v1`: A's queue, A's worker, B's
route, then A's image check, PNG and storage; the time it adds over B is split, from A's worker
log, into the wait for A's worker to claim it, the forward itself (B's whole answer, as A's
worker saw it) and what follows the picture (check, PNG, store, completion).

    python bench/remote.py --images 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import cli, create_key, service_env, serving

from darkroom.engine.tiny import ensure_tiny_model


def timed_post(url: str, key: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["data"][0]["b64_json"]
    return elapsed


def worker_phases(log: Path) -> dict[str, list[float]]:
    """Per image, from A's worker log: queued (submit to claim), generate (the forward) and
    the finishing steps after it."""
    phases: dict[str, list[float]] = {"queued": [], "forward": [], "after": []}
    for line in log.read_text().splitlines():
        if "generating" in line and "queued_ms=" in line:
            phases["queued"].append(float(line.split("queued_ms=")[1].split()[0]))
        elif "generated" in line and "generate_ms=" in line:
            phases["forward"].append(float(line.split("generate_ms=")[1].split()[0]))
        elif " completed " in line and "check_ms=" in line:
            fields = {k: float(v) for k, v in (p.split("=") for p in line.split() if "_ms=" in p)}
            phases["after"].append(sum(fields.values()))
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images each way")
    parser.add_argument("--size", default="1024x1024")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="darkroom-remote-") as tmp_name:
        tmp = Path(tmp_name)
        tiny = ensure_tiny_model(tmp / "tiny")
        b_env = service_env(tmp / "b", f"sqlite+aiosqlite:///{tmp}/b.db", tiny)
        b_key = create_key(b_env, "front")
        with serving("serve", b_env, tmp / "b.log") as b:
            remote = {"url": f"{b.base_url}/openai/v1", "flavor": "darkroom", "api_key": b_key}
            a_env = service_env(
                tmp / "a",
                f"sqlite+aiosqlite:///{tmp}/a.db",
                tiny,
                DARKROOM_MODELS=json.dumps({"krea-2-turbo": {"remote": remote}}),
            )
            cli(a_env, "migrate")
            a_key = create_key(a_env, "customer")
            with serving("serve", a_env, tmp / "a.log") as a:
                straight_url = f"{b.base_url}/openai/v1/images/generations"
                through_url = f"{a.base_url}/openai/v1/images/generations"
                warm = {"prompt": "warm-up", "size": args.size, "seed": 1}
                timed_post(straight_url, b_key, warm)
                timed_post(through_url, a_key, warm)  # A's worker probed B already
                straight, through = [], []
                for n in range(args.images):
                    body = {"prompt": f"a lighthouse {n}", "size": args.size, "seed": 100 + n}
                    straight.append(timed_post(straight_url, b_key, body))
                    through.append(timed_post(through_url, a_key, body))
                phases = worker_phases(a.log_path)
    b_ms, a_ms = 1000 * statistics.median(straight), 1000 * statistics.median(through)
    print(f"{args.images} images at {args.size}, one at a time, alternating (medians)")
    print("| path | ms per image |")
    print("|---|---|")
    print(f"| straight to B's /openai/v1 | {b_ms:.0f} |")
    print(f"| through A (queue, forwarding worker, B, check, PNG, store) | {a_ms:.0f} |")
    print(f"| ratio | {a_ms / b_ms:.2f}x |")
    print(f"| added by A | {a_ms - b_ms:.0f} |")
    last = slice(-args.images, None)  # the measured images, not the probe's or the warm-up's
    for name, values in phases.items():
        if values[last]:
            print(f"| A's worker: {name} | {statistics.median(values[last]):.0f} |")


if __name__ == "__main__":
    main()
