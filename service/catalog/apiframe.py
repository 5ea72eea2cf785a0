"""Apiframe v2's Flux models (`fluxParams`), from its model pages (shared/seeds, providers.md §c).

Apiframe's formats are jpg/png/webp; the vocabulary says `jpeg`, which the adapter renames.
"""

from __future__ import annotations

from typing import Any

from service.catalog import bfl
from service.catalog import params as p
from service.catalog.model import Model, capabilities

PROMPT_MAX_LENGTH = 2000  # v2 images/generate: "prompt (1-2000 chars)"
RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")  # both pages: "aspect ratios 1:1, 3:4, 4:3, 9:16, 16:9"


def apiframe_model(name: str, native_id: str, parameters: dict[str, Any]) -> Model:
    caps = capabilities(webhook=True, cancel=False, parameters=parameters)
    return Model(name, native_id, parameters, capabilities=caps)


def _common() -> dict[str, Any]:
    """What both documented pages (flux-1.1-pro, flux-2-dev) accept, with their ranges."""
    return {
        "prompt": p.prompt(PROMPT_MAX_LENGTH),
        "image_prompt": p.image_prompt(),
        "image_prompt_strength": p.image_prompt_strength(0.5, multiple_of=0.05),
        "aspect_ratio": p.aspect_ratio_enum(RATIOS),
        "seed": p.seed(),  # "number, step 1": an integer; the page gives no bounds
        "output_format": p.output_format(bfl.FORMATS, "jpeg"),
        "output_quality": p.output_quality(90),
    }


def pro_11() -> dict[str, Any]:
    """The flux-1.1-pro page. providers.md also lists width, height and prompt_upsampling from
    an older copy of the docs; the page's own table (six fluxParams) does not, so they are out.
    """
    return {**_common(), "raw": p.raw()}


def flux_2_dev() -> dict[str, Any]:
    """The flux-2-dev page: nine fluxParams. BFL's API does not serve this model."""
    return {
        **_common(),
        "steps": p.steps(minimum=1, maximum=50, default=28),
        "guidance": p.guidance(minimum=1.5, maximum=10, default=3, multiple_of=0.1),
        "prompt_upsampling": p.prompt_upsampling(),
        "go_fast": p.go_fast(),
    }


def _bfl_ranges(parameters: dict[str, Any]) -> dict[str, Any]:
    """A model Apiframe has no page for: BFL's schema and ranges for the same model.

    With Apiframe's prompt limit, and without `image_url`: no documented fluxParams field
    takes an image to edit (both pages have only `image_prompt`), so the adapter refuses it.
    """
    return {**{k: v for k, v in parameters.items() if k != "image_url"},
            "prompt": p.prompt(PROMPT_MAX_LENGTH)}


def models() -> tuple[Model, ...]:
    return (
        apiframe_model("flux-pro-1.1", "flux-1.1-pro", pro_11()),
        apiframe_model("flux-pro-1.1-ultra", "flux-1.1-pro-ultra", _bfl_ranges(bfl.ultra())),
        apiframe_model("flux-2-pro", "flux-2-pro", _bfl_ranges(bfl.flux_2())),
        apiframe_model("flux-2-max", "flux-2-max", _bfl_ranges(bfl.flux_2())),
        apiframe_model("flux-2-flex", "flux-2-flex", _bfl_ranges(bfl.flux_2_flex())),
        apiframe_model("flux-2-dev", "flux-2-dev", flux_2_dev()),
    )
