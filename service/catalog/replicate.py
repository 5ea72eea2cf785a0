"""Replicate's black-forest-labs models, from each model's API page on replicate.com
(`/black-forest-labs/<model>/api`, its input schema), summarised per builder below.

Replicate spells some fields its own way; the adapter translates (`image_url` is `input_image`
or `input_images`, `steps` is `num_inference_steps`, `jpeg` is `jpg`, a width and height need
`aspect_ratio: "custom"`). Fields outside the vocabulary (`num_outputs`, `megapixels`,
`resolution`, `disable_safety_checker`, img2img `image`/`prompt_strength` on [dev]) are left
out: Replicate's defaults apply. Where a page gives no range, BFL's own schema for the same
model is used, and a comment says so. Replicate calls back and can cancel every prediction.
"""

from __future__ import annotations

from typing import Any

from service.catalog import params as p
from service.catalog.model import Model, capabilities

FORMATS = ("webp", "jpeg", "png")  # Replicate: webp | jpg | png, default webp
KONTEXT_FORMATS = ("jpeg", "png")  # Kontext: jpg | png, default png

# FLUX1.1 [pro] and FLUX.2 (with "custom" added by the adapter for a width and height).
PRO_RATIOS = ("1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3")
ULTRA_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
DEV_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
KONTEXT_RATIOS = ("match_input_image", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5",
                  "5:4", "21:9", "9:21", "2:1", "1:2")
FLUX_2_RATIOS = ("match_input_image", *PRO_RATIOS)


def replicate_model(name: str, native: str, parameters: dict[str, Any]) -> Model:
    caps = capabilities(webhook=True, cancel=True, parameters=parameters)
    return Model(name, f"black-forest-labs/{native}", parameters, capabilities=caps)


def _safety(minimum: int, maximum: int) -> dict[str, Any]:
    return {**p.safety_tolerance(maximum), "minimum": minimum,
            "description": f"Moderation tolerance, {minimum} (strictest) to {maximum} (most permissive)."}


def pro_11() -> dict[str, Any]:
    """flux-1.1-pro: ratios (or custom 256-1440, multiples of 32), Redux image prompt, safety
    1-6, upsampling, webp|jpg|png with quality 0-100 (default 80)."""
    return {
        "prompt": p.prompt(),
        "image_prompt": p.image_prompt(),
        "aspect_ratio": p.aspect_ratio_enum(PRO_RATIOS, "1:1"),
        "width": p.side("width", minimum=256, maximum=1440, multiple_of=32),
        "height": p.side("height", minimum=256, maximum=1440, multiple_of=32),
        "seed": p.seed(),
        "safety_tolerance": _safety(1, 6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(FORMATS, "webp"),
        "output_quality": p.output_quality(80),
    }


def ultra() -> dict[str, Any]:
    """flux-1.1-pro-ultra: ratios only, raw mode, image prompt strength 0-1 (0.1), safety 1-6,
    jpg|png (default jpg). The page gives no webp and no output_quality."""
    return {
        "prompt": p.prompt(),
        "image_prompt": p.image_prompt(),
        "image_prompt_strength": p.image_prompt_strength(0.1),
        "aspect_ratio": p.aspect_ratio_enum(ULTRA_RATIOS, "1:1"),
        "seed": p.seed(),
        "safety_tolerance": _safety(1, 6),
        "raw": p.raw(),
        "output_format": p.output_format(("jpeg", "png"), "jpeg"),
    }


def dev() -> dict[str, Any]:
    """flux-dev: 1-50 steps (28 recommended), guidance 0-10 (3), go_fast on by default."""
    return {
        "prompt": p.prompt(),
        "aspect_ratio": p.aspect_ratio_enum(DEV_RATIOS, "1:1"),
        "steps": p.steps(minimum=1, maximum=50, default=28),
        "guidance": p.guidance(minimum=0, maximum=10, default=3),
        "seed": p.seed(),
        "go_fast": {**p.go_fast(), "default": True},
        "output_format": p.output_format(FORMATS, "webp"),
        "output_quality": p.output_quality(80),
    }


def schnell() -> dict[str, Any]:
    """flux-schnell: 1-4 steps (4), no guidance; BFL's API does not serve it."""
    return {
        "prompt": p.prompt(),
        "aspect_ratio": p.aspect_ratio_enum(DEV_RATIOS, "1:1"),
        "steps": p.steps(minimum=1, maximum=4, default=4),
        "seed": p.seed(),
        "go_fast": {**p.go_fast(), "default": True},
        "output_format": p.output_format(FORMATS, "webp"),
        "output_quality": p.output_quality(80),
    }


def kontext() -> dict[str, Any]:
    """flux-kontext-pro and -max: an optional image to edit, ratios or match_input_image (the
    default), safety 0-6 (the page: at most 2 with an input image), jpg|png."""
    return {
        "prompt": p.prompt(),
        "image_url": p.image_url(),
        "aspect_ratio": p.aspect_ratio_enum(KONTEXT_RATIOS, "match_input_image"),
        "seed": p.seed(),
        "safety_tolerance": _safety(0, 6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(KONTEXT_FORMATS, "png"),
    }


def flux_2(*, max_side: int, safety_max: int | None) -> dict[str, Any]:
    """flux-2-pro / -flex (2048, safety 1-5) and -dev (1440, no safety field): one reference
    image (Replicate takes a list; fluxhook's vocabulary has one `image_url`), custom sizes in
    multiples of 32. The full ratio list is not on the pages read: the FLUX1.1 [pro] set plus
    match_input_image, which every FLUX.2 page names, is what is offered."""
    parameters: dict[str, Any] = {
        "prompt": p.prompt(),
        "image_url": p.image_url(),
        "aspect_ratio": p.aspect_ratio_enum(FLUX_2_RATIOS, "1:1"),
        "width": p.side("width", minimum=256, maximum=max_side, multiple_of=32),
        "height": p.side("height", minimum=256, maximum=max_side, multiple_of=32),
        "seed": p.seed(),
        "output_format": p.output_format(FORMATS, "webp"),
        "output_quality": p.output_quality(80),
    }
    if safety_max is not None:
        parameters["safety_tolerance"] = _safety(1, safety_max)
    return parameters


def flux_2_dev() -> dict[str, Any]:
    return {**flux_2(max_side=1440, safety_max=None), "go_fast": {**p.go_fast(), "default": True}}


def models() -> tuple[Model, ...]:
    return (
        replicate_model("flux-pro-1.1", "flux-1.1-pro", pro_11()),
        replicate_model("flux-pro-1.1-ultra", "flux-1.1-pro-ultra", ultra()),
        replicate_model("flux-dev", "flux-dev", dev()),
        replicate_model("flux-schnell", "flux-schnell", schnell()),
        replicate_model("flux-kontext-pro", "flux-kontext-pro", kontext()),
        replicate_model("flux-kontext-max", "flux-kontext-max", kontext()),
        # flux-2-flex also takes steps and guidance; their ranges were not found, so they
        # are left to Replicate's defaults.
        replicate_model("flux-2-pro", "flux-2-pro", flux_2(max_side=2048, safety_max=5)),
        replicate_model("flux-2-flex", "flux-2-flex", flux_2(max_side=2048, safety_max=5)),
        replicate_model("flux-2-dev", "flux-2-dev", flux_2_dev()),
    )
