"""darkroom's PNG writer: exact pixels through two independent decoders, valid chunks and stream."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from darkroom.storage.png import SIGNATURE, encode_png, filter_up


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, body) of every chunk, checking each CRC on the way."""
    assert data.startswith(SIGNATURE)
    out = []
    pos = len(SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body), tag
        out.append((tag, body))
        pos += 12 + length
    return out


def _photo_like(height: int, width: int, channels: int) -> np.ndarray:
    """Smooth gradients plus mild noise: what generated images look like to a compressor."""
    rng = np.random.default_rng(height * 7 + width)
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 255 // max(1, width - 1) + y * 128 // max(1, height - 1)) % 256
    planes = [(base + 40 * c + rng.integers(-3, 4, base.shape)) % 256 for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.uint8)


def _image(pixels: np.ndarray, mode: str) -> Image.Image:
    return Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode=mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize(
    ("height", "width"), [(1, 1), (3, 7), (2, 1), (64, 33), (1024, 1024), (768, 1344)]
)
@pytest.mark.parametrize("threads", [1, 3])
def test_pixels_come_back_exactly(mode: str, height: int, width: int, threads: int) -> None:
    channels = len(mode)
    pixels = _photo_like(height, width, channels)
    image = _image(pixels, mode)
    data = encode_png(image, threads=threads)

    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == mode
        assert back.size == (width, height)
        assert np.array_equal(np.asarray(back), np.asarray(image))
    # libpng (through OpenCV) is stricter than Pillow about streams and checksums.
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if channels == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    elif channels == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    assert np.array_equal(decoded, np.asarray(image))


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_every_level_gives_the_same_pixels(level: int) -> None:
    rng = np.random.default_rng(level)
    pixels = rng.integers(0, 256, (600, 500, 3), dtype=np.uint8)
    data = encode_png(Image.fromarray(pixels), compress_level=level, threads=2)
    with Image.open(io.BytesIO(data)) as back:
        assert np.array_equal(np.asarray(back), pixels)


def test_the_stream_is_one_valid_zlib_stream_of_up_filtered_rows() -> None:
    pixels = _photo_like(1024, 1024, 3)
    data = encode_png(Image.fromarray(pixels), threads=4)
    chunks = _chunks(data)
    assert [tag for tag, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, colour) == (1024, 1024, 8, 2)
    # zlib.decompress checks the Adler-32 of the whole; the segments must join into one stream.
    raw = zlib.decompress(chunks[1][1])
    assert raw == filter_up(pixels).tobytes()
    assert set(raw[:: 1024 * 3 + 1]) == {2}  # every row says "up"


def test_threads_change_only_the_speed() -> None:
    pixels = _photo_like(512, 512, 3)
    one = encode_png(Image.fromarray(pixels), threads=1)
    four = encode_png(Image.fromarray(pixels), threads=4)
    assert one != four  # split into segments...
    with Image.open(io.BytesIO(one)) as a, Image.open(io.BytesIO(four)) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # ...with the same pixels
    assert abs(len(one) - len(four)) < len(one) // 50  # and nearly the same size


def test_compresses_photographic_images_like_pillow() -> None:
    pixels = _photo_like(1024, 1024, 3)
    ours = encode_png(Image.fromarray(pixels))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    assert len(ours) < 1.15 * len(buffer.getvalue())
    assert len(ours) < 0.6 * pixels.nbytes


def test_other_modes_go_through_pillow() -> None:
    image = Image.fromarray(_photo_like(40, 30, 3)).convert("P")
    data = encode_png(image)
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == "P"
        assert np.array_equal(np.asarray(back), np.asarray(image))
