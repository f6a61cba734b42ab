"""The image check: NudeNet's detector on every result before it is stored, failing closed.

NudeNet (the `moderation` extra) ships its ONNX model inside its wheel, so nothing is fetched
at run time. It is AGPL-3.0: an operator who installs the extra takes on that licence for the
deployment. Without it the image check is off, the server says so at start, and requests with
`nsfw_check: true` are refused at submit rather than answered with unchecked images.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from darkroom.settings import Settings

log = structlog.get_logger("darkroom.moderation")

# Explicit nudity: refused in every request above the basic threshold.
EXPLICIT = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"})
# Any exposed intimate area: refused above the strict threshold when nsfw_check is true.
INTIMATE = EXPLICIT | {"FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"}


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    score: float


class Detector(Protocol):
    def detect(self, image: Image) -> Sequence[Detection]: ...


# onnxruntime threads for one check (see NudeNetDetector).
CHECK_THREADS = 2


class CheckerUnavailable(RuntimeError):
    """The image checker was configured but cannot run: fail the task, never skip the check."""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str = ""


class NudeNetDetector:
    """NudeNet's detector model (the ONNX file inside its wheel) on a PIL image.

    darkroom runs the model itself: NudeNet's `detect` copies and converts the whole image, and
    its post-processing loops in Python over all 2,100 candidate boxes (~7 ms of a ~24 ms 1K
    check, holding the GIL that the engine's thread needs). `nudenet_blob` and
    `nudenet_detections` compute the same input and the same detections with whole-array numpy;
    tests compare both with NudeNet's own functions.
    """

    # The model's input side: NudeNet pads an image square and scales it to this.
    INPUT = 320

    def __init__(self) -> None:
        import nudenet
        import onnxruntime
        from nudenet import nudenet as nudenet_module

        self.labels: tuple[str, ...] = tuple(vars(nudenet_module)["__labels"])
        # onnxruntime's defaults give a session a thread per core that spins between runs. Two
        # quiet threads instead: the check runs beside the PNG encoding of the same image and the
        # engine's next batch, whose threads the spinning took cores from, and a 320-px image
        # shares out to two threads but hardly more. With ISA-L the encoding takes a third of
        # the check, so two threads end the check sooner beside it (figures: docs/performance.md,
        # "Choices in the code").
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = CHECK_THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx"),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._input = self.session.get_inputs()[0].name

    def detect(self, image: Image) -> Sequence[Detection]:
        import numpy as np
        from PIL.Image import Resampling

        image = image.convert("RGB") if image.mode != "RGB" else image
        scale = self.INPUT / max(image.size)
        if scale < 1:
            # Shrink to the model's input here, antialiased (NudeNet would pad the full image
            # and resample it without antialiasing). Same geometry: the long side becomes INPUT.
            # A reducing gap of 1 averages whole pixel blocks first (1024 -> 341 px, 2048 ->
            # 341 px) and resamples only the rest, under half the time of bilinear over the
            # full image (docs/performance.md, "Choices in the code").
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Resampling.BILINEAR, reducing_gap=1.0)
        blob = nudenet_blob(np.asarray(image), self.INPUT)
        (output,) = self.session.run(None, {self._input: blob})
        return nudenet_detections(output, image.width, image.height, self.INPUT, self.labels)


def nudenet_blob(rgb: np.ndarray, side: int) -> np.ndarray:
    """NudeNet's model input for an RGB image: padded square (black, right and bottom), scaled to
    `side` (bilinear, only if it is not that size already), 1/255, NCHW float32, channels blue,
    green, red: what NudeNet's `detect` gives the model for an image read by OpenCV (its
    RGBA-to-BGR conversion and `blobFromImage`'s red-blue swap cancel out)."""
    import cv2
    import numpy as np

    height, width = rgb.shape[:2]
    square = max(height, width)
    padded = np.zeros((square, square, 3), np.uint8)
    padded[:height, :width] = rgb[:, :, ::-1]
    if square != side:
        padded = cv2.resize(padded, (side, side), interpolation=cv2.INTER_LINEAR)
    blob = padded.astype(np.float32) * np.float32(1 / 255.0)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[np.newaxis])


def nudenet_detections(
    output: np.ndarray, width: int, height: int, side: int, labels: Sequence[str]
) -> list[Detection]:
    """NudeNet's post-processing of the model's output for an image of `width` x `height`:
    candidates whose best class scores at least 0.2, boxes scaled back and clipped to the image,
    then OpenCV's non-maximum suppression (score 0.25, overlap 0.45) across classes."""
    import cv2
    import numpy as np

    rows = np.squeeze(output).T  # one row per candidate: centre x, y, w, h, then class scores
    classes = rows[:, 4:]
    best = classes.max(axis=1)
    keep = best >= 0.2
    if not keep.any():
        return []
    scores = best[keep]
    class_ids = classes[keep].argmax(axis=1)
    x, y, w, h = rows[keep, :4].T
    square = max(width, height)  # the padded side, in the image's pixels
    x = (x - w / 2) * square / side
    y = (y - h / 2) * square / side
    w = w * square / side
    h = h * square / side
    x = np.clip(x, 0, width)
    y = np.clip(y, 0, height)
    w = np.minimum(w, width - x)
    h = np.minimum(h, height - y)
    boxes = np.stack([x, y, w, h], axis=1)
    kept = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.25, 0.45)
    return [Detection(labels[class_ids[i]], float(scores[i])) for i in np.ravel(kept)]


def nudenet_installed() -> bool:
    return importlib.util.find_spec("nudenet") is not None


def image_check_enabled(settings: Settings) -> bool:
    """Whether results are checked: `nudenet` always, `auto` when the extra is installed."""
    mode = settings.moderation_image
    return mode == "nudenet" or (mode == "auto" and nudenet_installed())


class ImageModeration:
    """Basic check always (when a detector is configured), strict one on request."""

    def __init__(
        self,
        detector: Detector | None,
        *,
        basic_threshold: float,
        strict_threshold: float,
        broken: str | None = None,
    ) -> None:
        self.detector = detector
        self.basic_threshold = basic_threshold
        self.strict_threshold = strict_threshold
        self.broken = broken  # why the configured detector could not load

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageModeration:
        basic, strict = settings.moderation_basic_threshold, settings.moderation_strict_threshold
        if not image_check_enabled(settings):
            log.warning(
                "image moderation is OFF: install darkroom[moderation] (NudeNet, AGPL-3.0) to "
                "check results; nsfw_check=true requests are refused",
                setting=settings.moderation_image,
            )
            return cls(None, basic_threshold=basic, strict_threshold=strict)
        try:
            detector = NudeNetDetector()
        except Exception as exc:  # fail closed: every task fails until this is fixed
            log.exception("the image checker could not load; tasks will fail (service_error)")
            return cls(
                None,
                basic_threshold=basic,
                strict_threshold=strict,
                broken=f"{type(exc).__name__}: {exc}",
            )
        log.info("image moderation on (NudeNet)", basic=basic, strict=strict)
        return cls(detector, basic_threshold=basic, strict_threshold=strict)

    def check(self, image: Image, *, strict: bool) -> Verdict:
        """Whether this image may be returned; CheckerUnavailable when it cannot be checked."""
        if self.broken is not None:
            raise CheckerUnavailable(f"the image checker could not load ({self.broken})")
        if self.detector is None:
            if strict:
                raise CheckerUnavailable(
                    "strict checking was asked for and no checker is installed"
                )
            return Verdict(True)
        labels, threshold = (
            (INTIMATE, self.strict_threshold)
            if strict
            else (
                EXPLICIT,
                self.basic_threshold,
            )
        )
        found = [
            d for d in self.detector.detect(image) if d.label in labels and d.score >= threshold
        ]
        if not found:
            return Verdict(True)
        worst = max(found, key=lambda d: d.score)
        return Verdict(False, f"nudity detected ({worst.label.lower()}, {worst.score:.2f})")
