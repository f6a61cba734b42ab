"""The engine interface the worker drives, and the errors an engine may raise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union

from darkroom.contract import FailureCode

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL.Image import Image

    Pixels = npt.NDArray[np.uint8]
    """An image as (height, width, 3) RGB bytes: what an engine hands back."""
    Output = Union[Pixels, Image, "EngineError"]  # noqa: UP007 (a forward reference)

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, steps in all)."""


@dataclass(frozen=True, slots=True)
class Job:
    task_id: str
    prompt: str
    seed: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Jobs that share one engine call: same model and pixel size."""

    model: str
    width: int
    height: int
    jobs: tuple[Job, ...]


class EngineError(Exception):
    """Generation failed in a way the task's client should hear about."""


class PromptTooLong(EngineError):
    """Prompt is too long"""


class EngineRefused(EngineError):
    """A remote engine refused the request (4xx): the task fails with `code`, not retried."""

    def __init__(self, message: str, code: FailureCode = FailureCode.INVALID_PARAMETERS) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EngineUnavailable(EngineError):
    """A remote engine did not answer (connection errors, timeouts, 5xx) after every retry:
    the tasks are not at fault and go back to the queue."""


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be found or loaded; the worker cannot start."""


class Engine(Protocol):
    models: tuple[str, ...]

    def count_tokens(self, prompt: str) -> int:
        """Tokens the model's own tokenizer makes of `prompt`."""

    def generate(self, batch: Batch, on_step: StepCallback) -> Sequence[Output]:
        """One image per job, in order, exactly `batch.width` x `batch.height`; an engine whose
        jobs succeed or fail one by one (a remote one) gives a failed job's EngineError in its
        place, and raises only what fails them all."""


def to_image(pixels: Pixels | Image) -> Image:
    """An engine's pixels as a PIL image (PIL keeps RGB in 4 bytes a pixel: a copy); a PIL
    image (a remote engine's, decoded) as it is."""
    import PIL.Image

    if isinstance(pixels, PIL.Image.Image):
        return pixels
    return PIL.Image.fromarray(pixels)
