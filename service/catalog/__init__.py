"""The model catalog and input validation: bad input is refused before any provider is paid.

Each provider's models live in their own module, with parameters in fluxhook's unified
vocabulary (`params`) taken from the providers' documents (shared/bfl-openapi.json,
shared/seeds, shared/providers.md). `validate_input` is pure and names every offending field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from service.catalog import apiframe, bfl, cometapi, fal, replicate, runcomfy
from service.catalog.model import Model
from service.catalog.validation import check_value, is_multiple_of, validate_input

__all__ = ["Catalog", "Model", "check_value", "is_multiple_of", "validate_input"]


class Catalog:
    """Which provider serves which model, by unified name or a native id."""

    def __init__(self, models: Mapping[str, Iterable[Model]]) -> None:
        self._models: dict[str, dict[str, Model]] = {}
        self._native: dict[str, dict[str, Model]] = {}
        for provider, served in models.items():
            served = tuple(served)
            self._models[provider] = {m.name: m for m in served}
            self._native[provider] = {m.native_id: m for m in served}
        self._aliases = _aliases(self._models)

    @classmethod
    def default(cls) -> Catalog:
        # In FLUXHOOK_PROVIDER_ORDER's default order, which `providers()` keeps.
        return cls({
            "bfl": bfl.models(),
            "cometapi": cometapi.models(),
            "apiframe": apiframe.models(),
            "runcomfy": runcomfy.models(),
            "replicate": replicate.models(),
            "fal": fal.models(),
        })

    def providers(self) -> list[str]:
        return list(self._models)

    def models(self, provider: str) -> list[Model]:
        return list(self._models.get(provider, {}).values())

    def find(self, provider: str, model: str) -> Model | None:
        """The provider's model by unified name, its own native id, or another provider's id.

        `find("bfl", "flux-1.1-pro")` is BFL's flux-pro-1.1: Apiframe's id names the same model.
        """
        served = self._models.get(provider)
        if served is None:
            return None
        found = served.get(model) or self._native[provider].get(model)
        if found is None and model in self._aliases:
            found = served.get(self._aliases[model])
        return found

    def serving(self, model_name: str) -> list[str]:
        """The providers that serve a model (unified name or any native id), in catalog order."""
        return [provider for provider in self._models if self.find(provider, model_name)]

    def describe(self) -> dict[str, Any]:
        """The body of `GET /v1/models`: every provider's models with their input schemas."""
        return {"providers": [
            {"name": provider, "models": [m.describe() for m in served.values()]}
            for provider, served in self._models.items()
        ]}


def _aliases(models: Mapping[str, Mapping[str, Model]]) -> dict[str, str]:
    """Native id -> unified name, refusing an id that would name two different models."""
    unified = {name for served in models.values() for name in served}
    aliases: dict[str, str] = {}
    for served in models.values():
        for model in served.values():
            native = model.native_id
            taken = aliases.setdefault(native, model.name)
            if taken != model.name or (native in unified and native != model.name):
                raise ValueError(f"native id {native!r} names both {taken!r} and {model.name!r}")
    return aliases
