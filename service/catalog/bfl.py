"""Black Forest Labs' models, from the request schemas in shared/bfl-openapi.json.

BFL's model ids are fluxhook's unified names, so `name == native_id` throughout. Left out:
`flux-pro-1.0-fill` and `flux-pro-1.0-expand` (their `image` is base64, and `mask` and the
expand margins are outside the vocabulary) and the `*-preview` endpoints (not stable ids).
"""

from __future__ import annotations

from typing import Any

from service.catalog import params as p
from service.catalog.model import Model, capabilities

FORMATS = ("jpeg", "png", "webp")  # OpenAPI `OutputFormat`


def bfl_model(name: str, parameters: dict[str, Any], *, max_active_tasks: int | None = None) -> Model:
    caps = capabilities(webhook=True, cancel=False, parameters=parameters)
    return Model(name, name, parameters, capabilities=caps, max_active_tasks=max_active_tasks)


def pro_11(formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """FluxPro11Inputs."""
    return {
        "prompt": p.prompt(),
        "image_prompt": p.image_prompt(),
        "width": p.side("width", minimum=256, maximum=1440, multiple_of=32, default=1024),
        "height": p.side("height", minimum=256, maximum=1440, multiple_of=32, default=768),
        "seed": p.seed(),
        "safety_tolerance": p.safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(formats, "jpeg"),
    }


def dev(formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """FluxDevInputs: FluxPro11Inputs plus steps and guidance."""
    return {
        **pro_11(formats),
        "steps": p.steps(minimum=1, maximum=50, default=28),
        "guidance": p.guidance(minimum=1.5, maximum=5, default=3),
    }


def ultra(formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """FluxUltraInput: an aspect ratio instead of a size; raw mode; image prompt strength."""
    return {
        "prompt": p.prompt(),
        "image_prompt": p.image_prompt(),
        "image_prompt_strength": p.image_prompt_strength(0.1),
        "aspect_ratio": p.aspect_ratio_range("16:9"),
        "seed": p.seed(),
        "safety_tolerance": p.safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "raw": p.raw(),
        "output_format": p.output_format(formats, "jpeg"),
    }


def kontext() -> dict[str, Any]:
    """FluxKontextProInputs (pro and max). `image_url` is BFL's `input_image`."""
    return {
        "prompt": p.prompt(),
        "image_url": p.image_url(),
        "aspect_ratio": p.aspect_ratio_range(),
        "seed": p.seed(),
        "safety_tolerance": p.safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(FORMATS, "png"),
    }


def flux_2() -> dict[str, Any]:
    """Flux2Inputs (pro, max) and Flux2KleinInputs: the same fields, fewer reference images.

    Sizes have a minimum of 64 and no maximum or step in the OpenAPI; safety is 0-5, not 0-6.
    """
    return {
        "prompt": p.prompt(),
        "image_url": p.image_url(),
        "width": p.side("width", minimum=64),
        "height": p.side("height", minimum=64),
        "seed": p.seed(),
        "safety_tolerance": p.safety_tolerance(5),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def flux_2_flex() -> dict[str, Any]:
    """Flux2FlexInputs: Flux2Inputs plus steps, guidance and prompt upsampling (on by default)."""
    return {
        **flux_2(),
        "steps": p.steps(minimum=1, maximum=50, default=50),
        "guidance": p.guidance(minimum=1.5, maximum=10, default=5),
        "prompt_upsampling": p.prompt_upsampling(default=True),
    }


def models() -> tuple[Model, ...]:
    return (
        bfl_model("flux-pro-1.1", pro_11()),
        bfl_model("flux-pro-1.1-ultra", ultra()),
        bfl_model("flux-dev", dev()),
        bfl_model("flux-kontext-pro", kontext()),
        # "flux-kontext-max … limited to 6 active tasks" (help.bfl.ai, providers.md a.5).
        bfl_model("flux-kontext-max", kontext(), max_active_tasks=6),
        bfl_model("flux-2-pro", flux_2()),
        bfl_model("flux-2-max", flux_2()),
        bfl_model("flux-2-flex", flux_2_flex()),
        bfl_model("flux-2-klein-4b", flux_2()),
        bfl_model("flux-2-klein-9b", flux_2()),
    )
