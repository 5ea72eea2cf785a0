"""CometAPI's Flux models (a proxy for BFL), from its submit page (shared/seeds, providers.md §b).

The page lists one parameter set for every model and says the models differ: "refer to the
official documentation". So each model takes BFL's schema for the same model, with the page's
two overrides: `output_format` is jpeg or png only, and width/height are multiples of 32.
"""

from __future__ import annotations

from typing import Any

from service.catalog import bfl
from service.catalog import params as p
from service.catalog.model import Model, capabilities

FORMATS = ("jpeg", "png")  # "Supported values: jpeg, png."


def comet_model(name: str, parameters: dict[str, Any]) -> Model:
    caps = capabilities(webhook=True, cancel=False, parameters=parameters)
    return Model(name, name, parameters, capabilities=caps)


def flux_pro() -> dict[str, Any]:
    """Flux Pro 1.0, which BFL's OpenAPI no longer lists: exactly the page's parameter list.

    Ranges are BFL's retired FluxProInputs (steps 1-50 default 40, guidance 1.5-5 default 2.5,
    interval 1-4 default 2), the same as BFL's flux-dev apart from the defaults.
    """
    return {
        **bfl.pro_11(FORMATS),
        "steps": p.steps(minimum=1, maximum=50, default=40),
        "guidance": p.guidance(minimum=1.5, maximum=5, default=2.5),
        "interval": p.interval(minimum=1, maximum=4, default=2),
    }


def models() -> tuple[Model, ...]:
    return (
        comet_model("flux-pro-1.1", bfl.pro_11(FORMATS)),
        comet_model("flux-pro", flux_pro()),
        comet_model("flux-dev", bfl.dev(FORMATS)),
        comet_model("flux-pro-1.1-ultra", bfl.ultra(FORMATS)),
    )
