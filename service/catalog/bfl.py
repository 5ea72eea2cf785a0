"""Black Forest Labs' models, from the request schemas in shared/bfl-openapi.json.

BFL's model ids are fluxhook's unified names, so `name == native_id` throughout: every model
path of the OpenAPI except the two `*-finetuned` ones, which need a `finetune_id` from BFL's
finetuning API (not something fluxhook drives). Ranges are the schema's, exactly.

Where the schema takes an image as base64 only (FLUX1.1's `image_prompt`, fill's `image` and
`mask`, expand's `image`), the model lists it in `inline_images`: clients still give URLs and
the submitter sends the bytes. Where it takes a URL or base64 (Kontext's and FLUX.2's
`input_image*`), the URL is sent as it is.
"""

from __future__ import annotations

from typing import Any

from service.catalog import params as p
from service.catalog.model import Model, capabilities

FORMATS = ("jpeg", "png", "webp")  # OpenAPI `OutputFormat`


# FLUX1.1 [pro], [pro] ultra, [dev]: "Optional base64 encoded image" (FluxPro11Inputs & co).
IMAGE_PROMPT_INLINE = ("image_prompt",)


def bfl_model(name: str, parameters: dict[str, Any], *, max_active_tasks: int | None = None,
              required: tuple[str, ...] = ("prompt",), inline_images: tuple[str, ...] = ()) -> Model:
    caps = capabilities(webhook=True, cancel=False, parameters=parameters)
    return Model(name, name, parameters, required=required, capabilities=caps,
                 max_active_tasks=max_active_tasks, inline_images=inline_images)


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
    """FluxKontextProInputs (pro and max). `image_url` is BFL's `input_image`, `image_url_<n>`
    its `input_image_<n>` (2-4, "Experimental Multiref")."""
    return {
        "prompt": p.prompt(),
        "image_url": p.image_url(),
        **p.reference_images(4),
        "aspect_ratio": p.aspect_ratio_range(),
        "seed": p.seed(),
        "safety_tolerance": p.safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(FORMATS, "png"),
    }


def flux_2() -> dict[str, Any]:
    """Flux2Inputs (pro, max) and Flux2KleinInputs: the same fields, fewer reference images
    (`references`, added by `models()`: Apiframe serves these models without them).

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


def _fill_and_expand() -> dict[str, Any]:
    """What FluxProFillInputs and FluxProExpandInputs share: `image_url` is their base64 `image`."""
    return {
        "prompt": p.prompt(),
        "image_url": p.image_url(),
        "steps": p.steps(minimum=15, maximum=50, default=50),
        "guidance": p.guidance(minimum=1.5, maximum=100, default=60),
        "seed": p.seed(),
        "safety_tolerance": p.safety_tolerance(6),
        "prompt_upsampling": p.prompt_upsampling(),
        "output_format": p.output_format(FORMATS, "jpeg"),
    }


def fill() -> dict[str, Any]:
    """FluxProFillInputs: inpainting. `mask_url` is its base64 `mask` (optional when the image
    has an alpha mask); the prompt is optional."""
    return {**_fill_and_expand(), "mask_url": p.mask_url()}


def expand() -> dict[str, Any]:
    """FluxProExpandInputs: outpainting by 0-2048 pixels on each side."""
    return {
        **_fill_and_expand(),
        **{side: p.margin(side, maximum=2048) for side in ("top", "bottom", "left", "right")},
    }


def references(parameters: dict[str, Any], count: int) -> dict[str, Any]:
    """`parameters` with `image_url_2` ... `image_url_<count>` (BFL's `input_image_<n>`) after
    `image_url`: 8 images on Flux2Inputs and Flux2FlexInputs, "max 4" on Flux2KleinInputs."""
    return {**parameters, **p.reference_images(count)}


def models() -> tuple[Model, ...]:
    return (
        bfl_model("flux-pro-1.1", pro_11(), inline_images=IMAGE_PROMPT_INLINE),
        bfl_model("flux-pro-1.1-ultra", ultra(), inline_images=IMAGE_PROMPT_INLINE),
        bfl_model("flux-dev", dev(), inline_images=IMAGE_PROMPT_INLINE),
        bfl_model("flux-pro-1.0-fill", fill(), required=("image_url",),
                  inline_images=("image_url", "mask_url")),
        bfl_model("flux-pro-1.0-expand", expand(), required=("image_url",),
                  inline_images=("image_url",)),
        bfl_model("flux-kontext-pro", kontext()),
        # "flux-kontext-max … limited to 6 active tasks" (help.bfl.ai, providers.md a.5).
        bfl_model("flux-kontext-max", kontext(), max_active_tasks=6),
        bfl_model("flux-2-pro", references(flux_2(), 8)),
        bfl_model("flux-2-pro-preview", references(flux_2(), 8)),
        bfl_model("flux-2-max", references(flux_2(), 8)),
        bfl_model("flux-2-flex", references(flux_2_flex(), 8)),
        bfl_model("flux-2-klein-4b", references(flux_2(), 4)),
        bfl_model("flux-2-klein-9b", references(flux_2(), 4)),
        bfl_model("flux-2-klein-9b-preview", references(flux_2(), 4)),
    )
