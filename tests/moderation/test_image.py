"""The image check: the real NudeNet model on images made here, thresholds through injected
detections (no explicit images in the repository), and the worker failing closed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from darkroom.contract import FailureCode, Quality, Status
from darkroom.db.database import Database
from darkroom.db.schema import accounts
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.moderation.image import (
    CHECK_THREADS,
    CheckerUnavailable,
    Detection,
    ImageModeration,
    NudeNetDetector,
    nudenet_blob,
    nudenet_detections,
)
from darkroom.settings import Settings
from darkroom.storage.local import STAGING, LocalStorage
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.store import TaskStore
from tests.helpers import add_task, make_account, worker_for

LABELS = {
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
}  # fmt: skip


class Fixed:
    """A detector whose answer the test chooses."""

    def __init__(self, *found: tuple[str, float]) -> None:
        self.found = [Detection(label, score) for label, score in found]
        self.calls = 0

    def detect(self, image: Image.Image) -> Sequence[Detection]:
        self.calls += 1
        return self.found


class Broken:
    def detect(self, image: Image.Image) -> Sequence[Detection]:
        raise RuntimeError("onnxruntime: bad input")


def moderation(detector: object) -> ImageModeration:
    return ImageModeration(detector, basic_threshold=0.7, strict_threshold=0.4)  # type: ignore[arg-type]


def synthetic(width: int, height: int, kind: str) -> Image.Image:
    rng = np.random.default_rng(7)
    if kind == "noise":
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif kind == "skin":  # a flat skin tone: the detector's hardest innocent input
        pixels = np.broadcast_to(np.array([224, 172, 140], np.uint8), (height, width, 3))
    else:  # a smooth gradient
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        pixels = np.stack([np.tile(ramp, (height, 1))] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(pixels))


@pytest.fixture(scope="module")
def nudenet() -> NudeNetDetector:
    return NudeNetDetector()  # the ONNX model from inside the nudenet wheel; no download


def test_the_detector_runs_nudenets_own_model_on_two_quiet_threads(
    nudenet: NudeNetDetector,
) -> None:
    from nudenet import NudeDetector

    options = nudenet.session.get_session_options()
    assert options.intra_op_num_threads == CHECK_THREADS == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    theirs = NudeDetector().onnx_session  # NudeNet's default session of the same model
    blob = np.random.default_rng(3).random((1, 3, 320, 320), dtype=np.float32)
    name = nudenet.session.get_inputs()[0].name
    (out,) = nudenet.session.run(None, {name: blob})
    (expected,) = theirs.run(None, {name: blob})
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)
    assert set(nudenet.labels) == LABELS


@pytest.mark.parametrize("size", [(320, 320), (320, 180), (180, 320), (64, 48)])
def test_the_model_input_is_nudenets(size: tuple[int, int]) -> None:
    from nudenet.nudenet import _read_image

    rgb = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), np.uint8)
    expected = _read_image(np.ascontiguousarray(rgb[:, :, ::-1]), 320)[0]  # NudeNet takes BGR
    ours = nudenet_blob(rgb, 320)
    assert ours.shape == expected.shape == (1, 3, 320, 320)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(320, 320), (320, 180), (180, 320)])
def test_the_detections_are_nudenets(nudenet: NudeNetDetector, size: tuple[int, int]) -> None:
    """Many overlapping candidates of many classes, some under the score floor: NudeNet's own
    post-processing and darkroom's keep the same boxes, labels and scores, in the same order."""
    from nudenet.nudenet import _postprocess

    rng = np.random.default_rng(size[1])
    rows = 2100
    output = np.zeros((1, 4 + len(nudenet.labels), rows), np.float32)
    output[0, 0:2] = rng.uniform(0, 320, (2, rows))  # box centres
    output[0, 2:4] = rng.uniform(4, 160, (2, rows))  # box sides
    output[0, 4:] = rng.uniform(0, 0.3, (len(nudenet.labels), rows))
    output[0, 4:, rng.choice(rows, 300, replace=False)] += 0.6  # strong candidates
    width, height = size
    square = max(size)
    # As NudeNet's detect() calls it for an image of this size, padded square.
    theirs = _postprocess(
        [output], square - width, square - height, square / width, square / height,
        width, height, 320, 320,
    )  # fmt: skip
    expected = [(d["class"], d["score"]) for d in theirs]
    ours = [
        (d.label, d.score) for d in nudenet_detections(output, width, height, 320, nudenet.labels)
    ]
    assert len(expected) > 10
    assert ours == expected


def drawn_face() -> Image.Image:
    """A crude drawn head and shoulders, in which NudeNet finds something (a covered area)."""
    from PIL import ImageDraw, ImageFilter

    image = Image.new("RGB", (320, 320), (40, 60, 90))
    draw = ImageDraw.Draw(image)
    skin = (224, 172, 140)
    draw.ellipse((90, 50, 230, 240), fill=skin)
    for left in (120, 175):
        draw.ellipse((left, 110, left + 25, 125), fill=(255, 255, 255))
        draw.ellipse((left + 7, 112, left + 18, 123), fill=(60, 40, 30))
    draw.polygon([(160, 130), (150, 170), (170, 170)], fill=(200, 140, 110))
    draw.arc((130, 170, 190, 210), 20, 160, fill=(150, 60, 60), width=5)
    draw.ellipse((80, 30, 240, 110), fill=(60, 40, 20))
    draw.rectangle((100, 240, 220, 320), fill=skin)
    return image.filter(ImageFilter.GaussianBlur(2))


@pytest.mark.parametrize("side", [320, 1024, 1280, 2048])
def test_a_whole_check_matches_nudenets_detect(nudenet: NudeNetDetector, side: int) -> None:
    from nudenet import NudeDetector

    image = drawn_face()
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    found = NudeDetector().detect(bgr)
    assert found  # the comparison below says something
    expected = [(d["class"], pytest.approx(d["score"], abs=1e-3)) for d in found]
    # Larger, darkroom shrinks the image to the model's side itself (antialiased), so the
    # scores move a little; the same things are found.
    big = image.resize((side, side), Image.Resampling.BICUBIC)
    ours = [(d.label, d.score) for d in nudenet.detect(big)]
    if side == 320:
        assert ours == expected
    else:
        assert [label for label, _ in ours] == [d["class"] for d in found]
        assert all(abs(s - d["score"]) < 0.05 for (_, s), d in zip(ours, found, strict=True))


@pytest.mark.parametrize("size", [(1024, 1024), (2048, 1152), (1152, 2048)])
@pytest.mark.parametrize("kind", ["noise", "skin", "gradient"])
def test_real_detector_passes_innocent_synthetic_images(
    nudenet: NudeNetDetector, size: tuple[int, int], kind: str
) -> None:
    image = synthetic(*size, kind)
    found = nudenet.detect(image)
    assert all(d.label in LABELS and 0 <= d.score <= 1 for d in found)
    check = ImageModeration(nudenet, basic_threshold=0.7, strict_threshold=0.4)
    assert check.check(image, strict=False).allowed
    assert check.check(image, strict=True).allowed


def test_basic_refuses_explicit_nudity_at_its_threshold() -> None:
    image = synthetic(64, 64, "noise")
    assert not moderation(Fixed(("MALE_GENITALIA_EXPOSED", 0.7))).check(image, strict=False).allowed
    assert moderation(Fixed(("MALE_GENITALIA_EXPOSED", 0.69))).check(image, strict=False).allowed
    # Exposed breasts are not explicit: allowed in basic mode, refused in strict mode.
    breast = moderation(Fixed(("FEMALE_BREAST_EXPOSED", 0.95)))
    assert breast.check(image, strict=False).allowed
    verdict = breast.check(image, strict=True)
    assert not verdict.allowed
    assert verdict.reason == "nudity detected (female_breast_exposed, 0.95)"


def test_strict_refuses_any_exposed_intimate_area_at_its_threshold() -> None:
    image = synthetic(64, 64, "noise")
    for label in ("BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "ANUS_EXPOSED"):
        assert not moderation(Fixed((label, 0.4))).check(image, strict=True).allowed
        assert moderation(Fixed((label, 0.39))).check(image, strict=True).allowed
    # Covered areas and faces are never a reason.
    covered = moderation(Fixed(("FEMALE_BREAST_COVERED", 0.99), ("FACE_FEMALE", 0.99)))
    assert covered.check(image, strict=True).allowed


def test_no_checker_cannot_do_strict_and_a_broken_one_checks_nothing() -> None:
    image = synthetic(64, 64, "noise")
    assert moderation(None).check(image, strict=False).allowed
    with pytest.raises(CheckerUnavailable):
        moderation(None).check(image, strict=True)
    broken = ImageModeration(None, basic_threshold=0.7, strict_threshold=0.4, broken="no model")
    with pytest.raises(CheckerUnavailable):
        broken.check(image, strict=False)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Krea2Engine:
    return Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), EngineOptions())


# The worker's handling of verdicts, not SQL: one database is enough.


async def run_one(
    settings: Settings, db: Database, engine: Krea2Engine, check: ImageModeration, **task: object
) -> tuple[str, LocalStorage]:
    ids = await make_account(db)
    made = await add_task(db, ids, **task)  # type: ignore[arg-type]
    storage = LocalStorage(settings.results_dir)
    worker = worker_for(settings, db, engine, storage, worker_id="w", moderation=check)
    assert await worker.run_once()
    await worker.drain()
    return made.id, storage


def nothing_kept(storage: LocalStorage, task_id: str) -> bool:
    """No file under the task's key, and none staged: the result was written while it was being
    checked, so a refused one must also have been discarded."""
    staging = storage.root / STAGING
    return not (storage.root / task_id).exists() and not (
        staging.is_dir() and any(staging.iterdir())
    )


async def account_balance(db: Database) -> int:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(accounts.c.balance_micro))).scalar_one()


async def test_a_refused_image_fails_the_task_refunds_it_and_stores_nothing(
    settings: Settings, db: Database, engine: Krea2Engine
) -> None:
    detector = Fixed(("FEMALE_GENITALIA_EXPOSED", 0.93))
    task_id, storage = await run_one(
        settings, db, engine, moderation(detector), callback_url="https://hooks.example.com/h"
    )
    task = await TaskStore(db).get(task_id)
    assert task is not None and task.status is Status.FAILED
    assert task.error_code is FailureCode.CONTENT_POLICY_VIOLATION
    assert task.error_message == "Image refused: nudity detected (female_genitalia_exposed, 0.93)"
    assert detector.calls == 1
    assert nothing_kept(storage, task_id)
    assert await account_balance(db) == 10**12  # the reservation came back
    assert (await Outbox(db).states([task_id]))[task_id][0] == "pending"  # the callback fires


@pytest.mark.parametrize(
    "check",
    [
        moderation(Broken()),
        ImageModeration(None, basic_threshold=0.7, strict_threshold=0.4, broken="no model"),
    ],
    ids=["errors-on-the-image", "could-not-load"],
)
async def test_a_broken_checker_fails_the_task_and_stores_nothing(
    settings: Settings, db: Database, engine: Krea2Engine, check: ImageModeration
) -> None:
    task_id, storage = await run_one(settings, db, engine, check)
    task = await TaskStore(db).get(task_id)
    assert task is not None and task.status is Status.FAILED
    assert task.error_code is FailureCode.SERVICE_ERROR
    assert nothing_kept(storage, task_id)
    assert await account_balance(db) == 10**12


async def test_strict_task_without_a_checker_fails_closed(
    settings: Settings, db: Database, engine: Krea2Engine
) -> None:
    task_id, storage = await run_one(settings, db, engine, moderation(None), nsfw_check=True)
    task = await TaskStore(db).get(task_id)
    assert task is not None and task.error_code is FailureCode.SERVICE_ERROR
    assert nothing_kept(storage, task_id)


async def test_an_allowed_image_is_stored(
    settings: Settings, db: Database, engine: Krea2Engine, nudenet: NudeNetDetector
) -> None:
    check = ImageModeration(nudenet, basic_threshold=0.7, strict_threshold=0.4)
    task_id, storage = await run_one(
        settings, db, engine, check, nsfw_check=True, quality=Quality.K1
    )
    task = await TaskStore(db).get(task_id)
    assert task is not None and task.status is Status.COMPLETED
    assert (storage.root / task_id / "1.png").is_file()  # attempt 1's key
