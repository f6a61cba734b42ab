"""darkroom's PNG writer against Pillow's, on the same images in the same run.

Images at the contract's 1K and 2K sizes: a smooth photo-like one (gradients plus mild noise,
what generated images are to a compressor) and pure noise (the tiny engine's output, the worst
case). Prints the median time of each encoder, darkroom's time as a share of Pillow's at the
same zlib level, and the file sizes. A second table times the level-1 compressors alone on the
same filtered rows, one thread each: darkroom's (ISA-L), zlib-ng's run-length level 1, and
zlib's.

    python bench/png.py --repeat 5
"""

from __future__ import annotations

import argparse
import io
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from zlib_ng import zlib_ng

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import contract_images, median_s
from darkroom.storage.png import default_threads, deflate, encode_png, filter_up


def zlib_ng_rle(rows: np.ndarray) -> bytes:
    compressor = zlib_ng.compressobj(1, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_RLE)
    return compressor.compress(rows.data) + compressor.flush()


# Level 1 on a whole image's up-filtered rows, one thread.
LEVEL_1: dict[str, Callable[[np.ndarray], bytes]] = {
    "darkroom (isal)": lambda rows: deflate(rows, 1, threads=1),
    "zlib-ng rle": zlib_ng_rle,
    "zlib": lambda rows: zlib.compress(rows.data, 1),
}


def pillow(image: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def photo_like(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [128 + 100 * np.sin(x / (90 + 30 * c)) * np.cos(y / (70 + 20 * c)) for c in range(3)]
    noisy = np.stack(planes, axis=-1) + rng.normal(0, 2.0, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"darkroom threads: {default_threads()}")
    header = f"{'image':<24} {'level':>5} {'pillow ms':>10} {'darkroom ms':>12} {'ratio':>6}"
    print(f"{header} {'pillow MB':>10} {'darkroom MB':>12}")
    kinds = {
        "photo": lambda h, w: photo_like(h, w, rng),
        "noise": lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
    }
    images = list(contract_images(kinds))
    for label, image in images:
        for level in (1, 6):
            base_s = median_s(lambda i=image, lv=level: pillow(i, lv), args.repeat)
            ours_s = median_s(lambda i=image, lv=level: encode_png(i, lv), args.repeat)
            base_n, ours_n = len(pillow(image, level)), len(encode_png(image, level))
            print(
                f"{label:<24} {level:>5} {base_s * 1e3:>10.1f} {ours_s * 1e3:>12.1f}"
                f" {ours_s / base_s:>6.2f} {base_n / 1e6:>10.2f} {ours_n / 1e6:>12.2f}"
            )
    print("\nlevel 1 on the same up-filtered rows, one thread: ms (share of the raw size)")
    print(f"{'image':<24} " + " ".join(f"{name:>20}" for name in LEVEL_1))
    for label, image in images:
        rows = filter_up(np.asarray(image))
        cells = []
        for compress in LEVEL_1.values():
            seconds = median_s(lambda c=compress, r=rows: c(r), args.repeat)
            cells.append(f"{seconds * 1e3:>11.1f} ({len(compress(rows)) / rows.nbytes:.3f})")
        print(f"{label:<24} " + " ".join(f"{cell:>20}" for cell in cells))


if __name__ == "__main__":
    main()
