"""Timing and test images shared by the CPU benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from darkroom.contract import Quality, pixel_size


def median_s(action: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` runs of `action`, after one warm-up run."""
    action()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def contract_images(
    kinds: dict[str, Callable[[int, int], np.ndarray]],
) -> Iterator[tuple[str, Image.Image]]:
    """A label and an image for each 1K and 2K size (square and 16:9) and each kind of pixels,
    made by `kinds[name](height, width)`."""
    for quality in (Quality.K1, Quality.K2):
        for size in ("1:1", "16:9"):
            width, height = pixel_size(size, quality)
            for name, pixels in kinds.items():
                label = f"{quality.value} {width}x{height} {name}"
                yield label, Image.fromarray(pixels(height, width))
