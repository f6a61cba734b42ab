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


class CheckerUnavailable(RuntimeError):
    """The image checker was configured but cannot run: fail the task, never skip the check."""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str = ""


class NudeNetDetector:
    """NudeNet's detector (the ONNX model inside its wheel) on a PIL image."""

    # The model's input side: NudeNet pads an image square and scales it to this.
    INPUT = 320

    def __init__(self) -> None:
        import nudenet
        import onnxruntime
        from nudenet import NudeDetector

        self._detector = NudeDetector()
        # NudeNet's session takes onnxruntime's defaults: a thread per core that spins between
        # runs. One quiet thread instead: the check runs beside the PNG encoding of the same image
        # and the engine's next batch, whose threads the spinning took cores from (1K check and
        # encode together on 2 cores: 38 -> 28 ms), and one image is too small to share out.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._detector.onnx_session = onnxruntime.InferenceSession(
            os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx"),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

    def detect(self, image: Image) -> Sequence[Detection]:
        import numpy as np
        from PIL.Image import Resampling

        image = image.convert("RGB") if image.mode != "RGB" else image
        scale = self.INPUT / max(image.size)
        if scale < 1:
            # Shrink to the model's input here, antialiased, rather than let NudeNet copy, pad
            # and convert the full image first (20-30 ms of a 2K check) and then resample it
            # without antialiasing. Same geometry: the long side becomes INPUT, then NudeNet pads.
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Resampling.BILINEAR, reducing_gap=2.0)
        # NudeNet expects what cv2.imread gives: BGR, 8 bits, contiguous.
        bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        return [Detection(d["class"], float(d["score"])) for d in self._detector.detect(bgr)]


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
