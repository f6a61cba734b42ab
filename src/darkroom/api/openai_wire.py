"""The OpenAI Images API's wire, as `openai-python` sends and parses it: one declaration that
validates the request and describes it, and the response, in the OpenAPI document.

What OpenAI's fields become here (docs/openai.md says the same to users):

- `size` is `WxH`, exactly a pixel size of the contract's table (`1344x768` is 16:9 at 1K,
  `2048x2048` 1:1 at 2K); `auto` or absent is `1024x1024`. Other sizes are refused, listed.
- `quality`: `low`, `medium`, `standard` are 1K; `high`, `hd` are 2K; `auto` or absent follows
  `size` (1K without one); `1K`/`2K` are taken as they are. A `quality` that names the other
  tier than an explicit `size` is refused rather than one of them ignored.
- `n`: 1 to `openai_max_n` images, each its own task, seeds `seed`, `seed + 1`, ...
- `response_format`: `b64_json` (the default, as GPT image models answer) or `url` (darkroom's
  signed link, valid 24 hours). `output_format`: `png` only.
- `seed` (an extension, sent with `extra_body`), `nsfw_check` (an extension), `user`,
  `moderation`, `background` other than `transparent`, `output_compression` are accepted;
  `stream`, `partial_images`, `style`, a negative prompt, steps, guidance, input images are
  refused with 400 naming the field, never ignored. Other unknown fields are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from darkroom.api.schemas import FOREIGN_FIELDS, to_invalid_request
from darkroom.contract import SEED_MAX, SIZES, Quality
from darkroom.errors import InvalidRequest

# `WxH` -> (aspect ratio, quality). 1152x896 is both 4:3 and 5:4 at 1K: the same pixels.
PIXEL_SIZES: dict[str, tuple[str, Quality]] = {}
for _ratio, _by_quality in SIZES.items():
    for _quality, (_w, _h) in _by_quality.items():
        PIXEL_SIZES.setdefault(f"{_w}x{_h}", (_ratio, _quality))

QUALITIES: dict[str, Quality | None] = {
    "auto": None,
    "low": Quality.K1,
    "medium": Quality.K1,
    "standard": Quality.K1,
    "high": Quality.K2,
    "hd": Quality.K2,
    "1K": Quality.K1,
    "2K": Quality.K2,
}
DEFAULT_SIZE = "1024x1024"
# Fields the task route refuses that mean the same on this one: their checks are the models'.
_OWN = {"n", "response_format", "output_format"}
_REFUSED = {
    "stream": "images are answered whole",
    "partial_images": "images are answered whole",
}


class ImageRequest(BaseModel):
    """`POST /openai/v1/images/generations`."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    prompt: str = Field(min_length=1, pattern=r"\S", examples=["a red fox in fresh snow"])
    model: str | None = Field(
        default=None, description="A served model; absent: the first one the server lists"
    )
    n: int | None = Field(default=None, ge=1, description="Images, each its own task and charge")
    size: str | None = Field(
        default=None,
        description="`WxH`, one of the contract's pixel sizes, or `auto` (1024x1024)",
        examples=["1344x768"],
    )
    quality: Literal[tuple(QUALITIES)] | None = Field(  # type: ignore[valid-type]
        default=None, description="low/medium/standard: 1K; high/hd: 2K; auto: as `size` says"
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None, description="b64_json (default) or url, a link valid 24 hours"
    )
    output_format: Literal["png"] | None = None
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="An extension: image i gets seed + i"
    )
    nsfw_check: bool | None = Field(default=None, description="An extension: stricter moderation")
    user: str | None = Field(default=None, description="Accepted, not used")
    background: Literal["auto", "opaque"] | None = None
    moderation: Literal["auto", "low"] | None = Field(
        default=None, description="Accepted; moderation is the server's own"
    )
    output_compression: int | None = Field(default=None, ge=0, le=100)
    stream: Literal[False] | None = Field(default=None, description="Streaming is not offered")
    partial_images: Literal[0] | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and value not in PIXEL_SIZES:
            raise ValueError(f"size must be auto or one of {', '.join(PIXEL_SIZES)}")
        return value

    def shape(self) -> tuple[str, Quality]:
        """The contract's (aspect ratio, quality) this request's size and quality ask for."""
        asked = QUALITIES[self.quality or "auto"]
        if self.size in (None, "auto"):
            ratio, quality = PIXEL_SIZES[DEFAULT_SIZE]
            return ratio, asked or quality
        ratio, quality = PIXEL_SIZES[self.size]
        if asked is not None and asked is not quality:
            other = "x".join(str(p) for p in SIZES[ratio][asked])
            raise InvalidRequest(
                f"size {self.size} is {quality.value}; quality {self.quality} asks for "
                f"{asked.value}: ask for size {other}, or leave quality out",
                param="quality",
            )
        return ratio, quality


def parse_image_request(payload: Any, max_n: int) -> ImageRequest:
    """Validate a decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    for field, why in FOREIGN_FIELDS.items():
        if field not in _OWN and payload.get(field) is not None:
            raise InvalidRequest(f"{field} is not supported: {why}", param=field)
    for field, why in _REFUSED.items():
        if payload.get(field) not in (None, False, 0):
            raise InvalidRequest(f"{field} is not supported: {why}", param=field)
    try:
        request = ImageRequest.model_validate(payload)
    except ValidationError as exc:
        raise to_invalid_request(exc) from None
    n = request.n or 1
    if n > max_n:
        raise InvalidRequest(f"n must be at most {max_n} on this server", param="n")
    if request.seed is not None and request.seed + n - 1 > SEED_MAX:
        raise InvalidRequest(f"seed + n - 1 must be at most {SEED_MAX}", param="seed")
    return request


class Image(BaseModel):
    b64_json: str | None = Field(default=None, description="The PNG file, base64")
    url: str | None = Field(default=None, description="A link to the PNG, valid 24 hours")
    revised_prompt: None = None
    seed: int = Field(description="An extension: the seed this image was made with")
    task_id: str = Field(description="An extension: its task, on GET /v1/tasks/{task_id}")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix seconds")
    data: list[Image]
    output_format: Literal["png"] = "png"


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds; 0: not known")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
