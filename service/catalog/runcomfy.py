"""RunComfy's Model API: its input schema for each model id (shared/seeds, providers.md §d).

RunComfy can cancel a queued request and documents no webhook for the Model API.
"""

from __future__ import annotations

from typing import Any

from service.catalog import params as p
from service.catalog.model import Model, capabilities

KONTEXT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")


def runcomfy_model(name: str, native_id: str, parameters: dict[str, Any],
                   required: tuple[str, ...]) -> Model:
    caps = capabilities(webhook=False, cancel=True, parameters=parameters)
    return Model(name, native_id, parameters, required, caps)


def kontext_edit() -> dict[str, Any]:
    """The `flux-1-kontext/pro/edit` input schema.

    The schema gives the prompt and the seed no bounds, so they take BFL's (fluxhook's
    assumption in params). RunComfy fetches inputs itself and wants public HTTPS URLs.
    """
    return {
        "prompt": p.prompt(),
        "image_url": p.image_url(https_only=True),
        "aspect_ratio": p.aspect_ratio_enum(KONTEXT_RATIOS, "16:9"),
        "seed": p.seed(),
    }


def models() -> tuple[Model, ...]:
    return (
        runcomfy_model("flux-kontext-pro", "blackforestlabs/flux-1-kontext/pro/edit",
                       kontext_edit(), ("prompt", "image_url")),
    )
