"""What the simulated BFL accepts at `POST /v1/{model}`: each model family's fields and ranges.

The ranges are the request schemas of BFL's OpenAPI (tests/data/bfl-openapi.json), the same
ones fluxhook's catalog states (service/catalog/bfl.py), so a body fluxhook accepts is never
refused here (tests/test_bfl_simulator.py holds the two to each other at every bound):

- FLUX1.1 [pro], [dev], [pro] ultra, Kontext (and CometAPI's models): width and height multiples
  of 32 in 256-1440, or an aspect ratio between 21:9 and 9:21; safety 0-6; steps 1-50 and
  guidance 1.5-5 (dev).
- FLUX.2 (`flux-2-*`, previews included): width and height at least 64, no maximum and no step;
  safety 0-5; `input_image` plus up to 7 references (klein: 3); steps 1-50, guidance 1.5-10 (flex).
- fill: a base64 `image` and an optional base64 `mask` of the same size; steps 15-50, guidance
  1.5-100. expand: a base64 `image` and 0-2048 pixels on each side.

Errors are FastAPI's: a list of `{"type", "loc", "msg", "input"}`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from service.simulator.images import aspect_ratio_within, size_for_aspect_ratio
from service.simulator.state import Edit
from service.simulator.wire import is_http_url, is_int

OUTPUT_FORMATS = ("jpeg", "png", "webp")
DEFAULT_SIZE = (1024, 768)  # FluxPro11Inputs defaults
# Real models make a few megapixels at most; FLUX.2's schema sets no maximum, so pictures beyond
# this are drawn smaller, keeping their shape (and the simulator's memory bounded).
RENDER_MAX_PIXELS = 4 * 1024 * 1024
# ... and no side longer than WebP can encode (16,383 pixels; JPEG's 65,535 is wider).
RENDER_MAX_SIDE = 16383
EXPAND_MAX_MARGIN = 2048
MARGINS = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class Family:
    """One request schema's rules, as far as the simulator checks them."""

    name: str
    size: tuple[int, int | None, int | None] | None  # minimum, maximum, multiple of; None: no size
    safety_max: int
    references: int  # input_image and input_image_2 ... (0: none)
    steps: tuple[int, int]
    guidance: tuple[float, float]
    edit: str | None = None  # "fill" or "expand"


CLASSIC = Family("classic", (256, 1440, 32), 6, 4, (1, 50), (1.5, 5))
FLUX_2 = Family("flux-2", (64, None, None), 5, 8, (1, 50), (1.5, 10))
FLUX_2_KLEIN = Family("flux-2-klein", (64, None, None), 5, 4, (1, 50), (1.5, 10))
FILL = Family("fill", None, 6, 0, (15, 50), (1.5, 100), edit="fill")
EXPAND = Family("expand", None, 6, 0, (15, 50), (1.5, 100), edit="expand")


def family_of(model: str) -> Family:
    if model.startswith("flux-pro-1.0-fill"):
        return FILL
    if model.startswith("flux-pro-1.0-expand"):
        return EXPAND
    if model.startswith("flux-2-klein"):
        return FLUX_2_KLEIN
    if model.startswith("flux-2-"):
        return FLUX_2
    return CLASSIC


@dataclass(frozen=True)
class BflInputs:
    """The submit fields the simulator acts on; everything else is accepted and ignored."""

    prompt: str
    width: int
    height: int
    seed: int | None
    output_format: str
    webhook_url: str | None
    webhook_secret: str | None
    edit: Edit | None = None


class _Errors:
    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.items: list[dict[str, Any]] = []

    def fail(self, name: str, kind: str, msg: str) -> None:
        self.items.append({"type": kind, "loc": ["body", name], "msg": msg,
                           "input": _shown(self.body.get(name))})

    def integer(self, name: str, minimum: int, maximum: int | None) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not is_int(value):
            self.fail(name, "int_type", "Input should be a valid integer")
        elif value < minimum:
            self.fail(name, "greater_than_equal", f"Input should be greater than or equal to {minimum}")
        elif maximum is not None and value > maximum:
            self.fail(name, "less_than_equal", f"Input should be less than or equal to {maximum}")
        else:
            return int(value)
        return None

    def number(self, name: str, minimum: float, maximum: float) -> None:
        value = self.body.get(name)
        if value is None:
            return
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(name, "float_type", "Input should be a valid number")
        elif not minimum <= value <= maximum:
            self.fail(name, "less_than_equal", f"Input should be a number from {minimum:g} to {maximum:g}")


def parse_inputs(model: str, body: Mapping[str, Any]) -> tuple[BflInputs | None, list[dict[str, Any]]]:
    """Validate a submit body like BFL's FastAPI does; return (inputs, []) or (None, errors)."""
    family = family_of(model)
    errors = _Errors(body)
    prompt = body.get("prompt")
    if prompt is None and family.edit is None:
        errors.fail("prompt", "missing", "Field required")
    elif prompt is not None and not isinstance(prompt, str):
        errors.fail("prompt", "string_type", "Input should be a valid string")
    size = _size(family, errors)
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        errors.fail("seed", "int_type", "Input should be a valid integer")
    fmt = body.get("output_format") or "jpeg"
    if fmt not in OUTPUT_FORMATS:
        errors.fail("output_format", "enum", "Input should be 'jpeg', 'png' or 'webp'")
    errors.integer("safety_tolerance", 0, family.safety_max)
    errors.integer("steps", *family.steps)
    errors.number("guidance", *family.guidance)
    errors.number("image_prompt_strength", 0, 1)
    errors.integer("interval", 1, 4)  # CometAPI's flux-pro (BFL's retired FluxProInputs)
    if body.get("prompt_upsampling") is not None and not isinstance(body["prompt_upsampling"], bool):
        errors.fail("prompt_upsampling", "bool_type", "Input should be a valid boolean")
    ratio = body.get("aspect_ratio")
    if ratio is not None and not (isinstance(ratio, str) and aspect_ratio_within(ratio)):
        errors.fail("aspect_ratio", "value_error",
                    "Value error, aspect ratio must be 'W:H' between 21:9 and 9:21")
    images = ["input_image", *(f"input_image_{n}" for n in range(2, 9))]
    for name in (*images[: family.references], "image_prompt", "webhook_secret"):
        if body.get(name) is not None and not isinstance(body[name], str):
            errors.fail(name, "string_type", "Input should be a valid string")
    for name in images[family.references:]:
        if body.get(name) is not None:
            errors.fail(name, "extra_forbidden", f"{model} takes at most {family.references} input images")
    url = body.get("webhook_url")
    if url is not None and not (is_http_url(url) and len(url) <= 2083):
        errors.fail("webhook_url", "url_parsing", "Input should be a valid URL")
    edit = _edit(family, errors) if family.edit else None
    if errors.items:
        return None, errors.items
    if edit is not None:
        source = _picture_size(edit.image)
        top, bottom, left, right = edit.margins
        width, height = source[0] + left + right, source[1] + top + bottom
    elif size or not ratio:
        width, height = size.get("width", DEFAULT_SIZE[0]), size.get("height", DEFAULT_SIZE[1])
    else:
        width, height = size_for_aspect_ratio(ratio)  # Kontext, ultra: aspect_ratio instead of size
    width, height = fit_within(width, height, RENDER_MAX_PIXELS, RENDER_MAX_SIDE)
    return BflInputs(
        prompt=prompt if isinstance(prompt, str) else "",
        width=width,
        height=height,
        seed=seed,
        output_format=fmt,
        webhook_url=url,
        webhook_secret=body.get("webhook_secret"),
        edit=edit,
    ), []


def fit_within(width: int, height: int, pixels: int, side: int) -> tuple[int, int]:
    """`width` x `height`, scaled down to at most `pixels` and neither side over `side`, keeping
    the aspect ratio.

    Integer arithmetic, since FLUX.2's sizes have no maximum and need not fit in a float."""
    if width * height > pixels:
        scaled_width = max(1, min(width, pixels, math.isqrt(pixels * width // height)))
        width, height = scaled_width, max(1, min(height, pixels // scaled_width))
    if width > side:
        width, height = side, max(1, height * side // width)
    if height > side:
        width, height = max(1, width * side // height), side
    return width, height


def _size(family: Family, errors: _Errors) -> dict[str, int]:
    size: dict[str, int] = {}
    if family.size is None:
        return size
    minimum, maximum, step = family.size
    for name in ("width", "height"):
        value = errors.body.get(name)
        if value is None:
            continue
        if is_int(value) and step and value % step:
            errors.fail(name, "multiple_of", f"Input should be a multiple of {step}")
            continue
        checked = errors.integer(name, minimum, maximum)
        if checked is not None:
            size[name] = checked
    return size


def _edit(family: Family, errors: _Errors) -> Edit | None:
    image = _base64_picture(errors, "image", required=True)
    margins = (0, 0, 0, 0)
    mask = None
    if family.edit == "fill":
        mask = _base64_picture(errors, "mask", required=False)
        if image is not None and mask is not None and _picture_size(mask) != _picture_size(image):
            errors.fail("mask", "value_error", "Value error, mask dimensions must match the image")
    else:
        found = [errors.integer(side, 0, EXPAND_MAX_MARGIN) for side in MARGINS]
        margins = (found[0] or 0, found[1] or 0, found[2] or 0, found[3] or 0)
    if image is None:
        return None
    return Edit(kind=family.edit or "fill", image=image, mask=mask, margins=margins)


def _base64_picture(errors: _Errors, name: str, *, required: bool) -> bytes | None:
    value = errors.body.get(name)
    if value is None:
        if required:
            errors.fail(name, "missing", "Field required")
        return None
    if not isinstance(value, str):
        errors.fail(name, "string_type", "Input should be a valid string")
        return None
    try:
        data = base64.b64decode(value, validate=True)
        _picture_size(data)
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError):
        errors.fail(name, "value_error", "Value error, expected a base64-encoded image")
        return None
    return data


def _picture_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as picture:
        return picture.size


def _shown(value: Any) -> Any:
    # FastAPI echoes the input; a base64 picture would make every error page megabytes long.
    return value[:64] + "..." if isinstance(value, str) and len(value) > 64 else value
