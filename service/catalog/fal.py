"""fal.ai's Flux models (`fal-ai/flux*`), from each model's page on fal.ai (its input schema,
fal.ai/models/<id>/llms.txt) as summarised in providers.md §e2 and the notes below.

fal names fields its own way (`image_size`, `num_inference_steps`, `guidance_scale`,
`enhance_prompt`, a string `safety_tolerance`); the adapter translates fluxhook's vocabulary.
fal's `safety_tolerance` runs from "1", not 0. Its `output_format` is jpeg or png. Where fal's
page gives no bound, the model takes BFL's bound for the same model (fluxhook's conservative
assumption, so a job valid here is valid at BFL and `auto` can fail over both ways), and the
comment says so. Left out on purpose: `num_images` (one output per job), `sync_mode` (a data
URI instead of a URL) and `enable_safety_checker` (kept at fal's default, on).
"""

from __future__ import annotations

from typing import Any

from service.catalog import params as p
from service.catalog.model import Model, capabilities

FORMATS = ("jpeg", "png")  # every fal Flux page: "jpeg", "png"; default "jpeg"
# The ultra and Kontext pages' `aspect_ratio` enum.
RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")


def fal_model(name: str, native_id: str, parameters: dict[str, Any],
              required: tuple[str, ...] = ("prompt",)) -> Model:
    caps = capabilities(webhook=True, cancel=True, parameters=parameters)
    return Model(name, native_id, parameters, required, caps)


def safety_tolerance(maximum: int) -> dict[str, Any]:
    """fal's enum "1".."maximum" (default "2"), as an integer the adapter sends as text."""
    return {**p.safety_tolerance(maximum), "minimum": 1,
            "description": f"Moderation tolerance, 1 (strictest) to {maximum} (most permissive)."}


def _size(maximum: int = 1440, minimum: int = 256, multiple_of: int | None = 32) -> dict[str, Any]:
    """`image_size: {width, height}`. fal's ImageSize gives no bound for FLUX.1 models; BFL's
    (256-1440, multiples of 32) are kept, the adapter sending both sides (1024x768 default)."""
    return {"width": p.side("width", minimum=minimum, maximum=maximum, multiple_of=multiple_of),
            "height": p.side("height", minimum=minimum, maximum=maximum, multiple_of=multiple_of)}


def pro_11() -> dict[str, Any]:
    """fal-ai/flux-pro/v1.1: prompt, image_size, seed, safety_tolerance "1"-"6", output_format,
    enhance_prompt (fluxhook's prompt_upsampling)."""
    return {
        "prompt": p.prompt(),
        **_size(),
        "seed": p.seed(),
        "safety_tolerance": safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def ultra() -> dict[str, Any]:
    """fal-ai/flux-pro/v1.1-ultra: an aspect ratio enum (default 16:9), raw, an optional
    reference image (`image_url`, fluxhook's image_prompt) and its strength (0-1, default 0.1)."""
    return {
        "prompt": p.prompt(),
        "image_prompt": p.image_prompt(),
        "image_prompt_strength": p.image_prompt_strength(0.1),
        "aspect_ratio": p.aspect_ratio_enum(RATIOS, "16:9"),
        "seed": p.seed(),
        "safety_tolerance": safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "raw": p.raw(),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def dev() -> dict[str, Any]:
    """fal-ai/flux/dev: num_inference_steps 1-50 (default 28), guidance_scale 1-20 (default
    3.5). No safety_tolerance (fal runs its safety checker instead)."""
    return {
        "prompt": p.prompt(),
        **_size(),
        "steps": p.steps(minimum=1, maximum=50, default=28),
        "guidance": p.guidance(minimum=1, maximum=20, default=3.5),
        "seed": p.seed(),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def schnell() -> dict[str, Any]:
    """fal-ai/flux/schnell: dev's schema with num_inference_steps default 4; the page's upper
    bound is 12 (the model is distilled for 1-4). No guidance: schnell ignores it."""
    return {
        "prompt": p.prompt(),
        **_size(),
        "steps": p.steps(minimum=1, maximum=12, default=4),
        "seed": p.seed(),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def kontext() -> dict[str, Any]:
    """fal-ai/flux-pro/kontext (and /max): image_url required, an aspect ratio enum,
    guidance_scale 1-20 (default 3.5), safety_tolerance "1"-"6", enhance_prompt."""
    return {
        "prompt": p.prompt(),
        "image_url": p.image_url(),
        "aspect_ratio": p.aspect_ratio_enum(RATIOS),
        "guidance": p.guidance(minimum=1, maximum=20, default=3.5),
        "seed": p.seed(),
        "safety_tolerance": safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def flux_2_pro() -> dict[str, Any]:
    """fal-ai/flux-2-pro and fal-ai/flux-2-flex: image_size, seed, safety_tolerance "1"-"5",
    output_format. fal gives the FLUX.2 sizes no bound on these pages; fal-ai/flux-2 says 512-2048,
    which is kept here too (BFL: at least 64, no maximum). Flex's steps and guidance ranges are not
    on its page's summary, so they are left out rather than guessed."""
    return {
        "prompt": p.prompt(),
        **_size(maximum=2048, minimum=512, multiple_of=None),
        "seed": p.seed(),
        "safety_tolerance": safety_tolerance(5),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def flux_2_dev() -> dict[str, Any]:
    """fal-ai/flux-2 (FLUX.2 [dev]): sizes 512-2048, num_inference_steps 4-50 (default 28),
    guidance_scale 0-20 (default 2.5)."""
    return {
        "prompt": p.prompt(),
        **_size(maximum=2048, minimum=512, multiple_of=None),
        "steps": p.steps(minimum=4, maximum=50, default=28),
        "guidance": p.guidance(minimum=0, maximum=20, default=2.5),
        "seed": p.seed(),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def models() -> tuple[Model, ...]:
    return (
        fal_model("flux-pro-1.1", "fal-ai/flux-pro/v1.1", pro_11()),
        fal_model("flux-pro-1.1-ultra", "fal-ai/flux-pro/v1.1-ultra", ultra()),
        fal_model("flux-dev", "fal-ai/flux/dev", dev()),
        fal_model("flux-schnell", "fal-ai/flux/schnell", schnell()),
        fal_model("flux-kontext-pro", "fal-ai/flux-pro/kontext", kontext(), ("prompt", "image_url")),
        fal_model("flux-kontext-max", "fal-ai/flux-pro/kontext/max", kontext(), ("prompt", "image_url")),
        fal_model("flux-2-pro", "fal-ai/flux-2-pro", flux_2_pro()),
        fal_model("flux-2-flex", "fal-ai/flux-2-flex", flux_2_pro()),
        fal_model("flux-2-dev", "fal-ai/flux-2", flux_2_dev()),
    )
