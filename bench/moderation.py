"""What the image check costs per result, next to work the worker already does for each image.

For 1K and 2K images (synthetic: noise and a flat skin tone), times NudeNet's check as the
worker runs it, and, as the baseline measured in the same run, the PNG encoding every result
already gets; prints both and their ratio.

    python bench/moderation.py --repeat 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import contract_images, median_s
from darkroom.moderation.image import ImageModeration, NudeNetDetector
from darkroom.storage.png import encode_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    check = ImageModeration(NudeNetDetector(), basic_threshold=0.7, strict_threshold=0.4)
    print(f"NudeNet load: {time.perf_counter() - start:.2f} s (once per worker)")
    rng = np.random.default_rng(0)
    print(f"{'image':<22} {'check ms':>9} {'png ms':>8} {'check/png':>10}")
    kinds = {
        "noise": lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "skin": lambda h, w: np.full((h, w, 3), (224, 172, 140), np.uint8),
    }
    for label, image in contract_images(kinds):
        checked = median_s(lambda image=image: check.check(image, strict=True), args.repeat)
        encoded = median_s(lambda image=image: encode_png(image), args.repeat)
        print(f"{label:<22} {checked * 1e3:>9.1f} {encoded * 1e3:>8.1f} {checked / encoded:>10.2f}")


if __name__ == "__main__":
    main()
