"""What keeping freed memory (`darkroom.engine.memory`) saves a CPU engine, in the same run.

Each side runs in its own fresh process (the malloc setting is process-wide and must come before
the process's threads), generating with the tiny engine on a thread as the worker does. The sides
alternate, round by round, so a slow spell of the machine weighs on both:

    python bench/cpu_memory.py --quality 1K 2K --images 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(keep: bool, quality: str, images: int, model_dir: str) -> None:
    """One side: `images` timed images after one warm-up image; prints JSON."""
    from darkroom.engine.memory import keep_freed_memory

    if keep and not keep_freed_memory():
        raise SystemExit("keeping freed memory needs glibc")
    from darkroom.contract import Quality, pixel_size
    from darkroom.engine.base import Batch, Job
    from darkroom.engine.krea2 import EngineOptions, Krea2Engine

    engine = Krea2Engine.load(model_dir, ("krea-2-turbo",), EngineOptions())
    width, height = pixel_size("1:1", Quality(quality))
    seconds: list[float] = []
    faults: list[int] = []

    def run() -> None:  # on a thread other than the main one, as the worker's engine thread
        for i in range(images + 1):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            job = Job(f"t{i}", f"benchmark prompt number {i}", 1000 + i)
            engine.generate(Batch("krea-2-turbo", width, height, (job,)), lambda _d, _t: None)
            if i:  # the first image warms
                seconds.append(time.perf_counter() - start)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "faults": faults, "peak_mb": peak_mb}))


def side(keep: bool, quality: str, images: int, model_dir: Path) -> dict[str, object]:
    args = [sys.executable, __file__, "--child", "keep" if keep else "default"]
    args += ["--quality", quality, "--images", str(images), "--model", str(model_dir)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", nargs="+", default=["1K", "2K"])
    parser.add_argument("--images", type=int, default=4, help="timed images per process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["keep", "default"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "keep", args.quality[0], args.images, args.model)
        return
    from darkroom.engine.tiny import ensure_tiny_model

    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        model_dir = ensure_tiny_model(Path(tmp) / "tiny")
        for quality in args.quality:
            runs: dict[bool, list[dict[str, object]]] = {False: [], True: []}
            for round_ in range(args.rounds):
                order = (False, True) if round_ % 2 == 0 else (True, False)
                for keep in order:
                    runs[keep].append(side(keep, quality, args.images, model_dir))
            medians = {}
            for keep, results in runs.items():
                seconds = [s for r in results for s in r["seconds"]]  # type: ignore[attr-defined]
                faults = [f for r in results for f in r["faults"]]  # type: ignore[attr-defined]
                peak = max(float(r["peak_mb"]) for r in results)  # type: ignore[arg-type]
                medians[keep] = statistics.median(seconds)
                label = "kept freed memory" if keep else "glibc defaults   "
                print(
                    f"{quality} {label}: {medians[keep]:6.3f} s/image (median of {len(seconds)}),"
                    f" {statistics.median(faults):9.0f} page faults/image, peak {peak:6.0f} MB"
                )
            print(f"{quality} kept / defaults: {medians[True] / medians[False]:.3f}")


if __name__ == "__main__":
    main()
