"""One model as one provider serves it: unified name, native id, parameters and capabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.catalog.params import VOCABULARY

IMAGE_INPUTS = ("image_url", "image_prompt")


def capabilities(*, webhook: bool, cancel: bool, parameters: Mapping[str, Any]) -> dict[str, bool]:
    """What fluxhook can do with a model: webhooks and cancel are per provider."""
    return {"webhook": webhook, "cancel": cancel,
            "image_input": any(name in parameters for name in IMAGE_INPUTS)}


@dataclass(frozen=True)
class Model:
    """One model as a provider serves it. `name` is fluxhook's unified name."""

    name: str
    native_id: str
    parameters: Mapping[str, Mapping[str, Any]]
    required: tuple[str, ...] = ("prompt",)
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    # The provider's own limit on this model's active tasks, below its account-wide one.
    max_active_tasks: int | None = None
    # Image parameters the provider takes only as base64 bytes, never as a URL: the client still
    # gives a URL (or an upload's), and the submitter fetches it and sends the bytes
    # (service/inline_images.py). BFL's FLUX1.1 `image_prompt`, fill's image and mask...
    inline_images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Native parameter names belong in the adapters; the catalog speaks only the vocabulary.
        foreign = [name for name in self.parameters if name not in VOCABULARY]
        missing = [name for name in (*self.required, *self.inline_images)
                   if name not in self.parameters]
        if foreign or missing:
            raise ValueError(f"model {self.name}: parameters outside the vocabulary {foreign}, "
                             f"required or inlined but not parameters {missing}")

    def schema(self) -> dict[str, Any]:
        """The input as one JSON Schema (draft 2020-12) object, parameters in vocabulary order."""
        names = sorted(self.parameters, key=VOCABULARY.index)
        return {
            "type": "object",
            "properties": {name: _copy(self.parameters[name]) for name in names},
            "required": list(self.required),
            "additionalProperties": False,
        }

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "native_id": self.native_id, "parameters": self.schema(),
                "capabilities": dict(self.capabilities)}


def _copy(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list | tuple) else v for k, v in spec.items()}
