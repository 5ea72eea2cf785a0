"""The model catalog and input validation: bad input is refused before any provider is paid.

Parameters are JSON Schema (the subset below), taken from the providers' own documents
(shared/bfl-openapi.json for BFL). `validate_input` is pure and names every offending field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.errors import ValidationFailed

PROMPT = {"type": "string", "minLength": 1, "maxLength": 10000}
SEED = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
SAFETY = {"type": "integer", "minimum": 0, "maximum": 6, "default": 2}
UPSAMPLING = {"type": "boolean", "default": False}
IMAGE_URL = {"type": "string", "format": "uri", "maxLength": 2083}
FORMAT_JPEG = {"type": "string", "enum": ["jpeg", "png"], "default": "jpeg"}
FORMAT_PNG = {"type": "string", "enum": ["jpeg", "png"], "default": "png"}


def _side(default: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 256, "maximum": 1440, "multipleOf": 32, "default": default}


ASPECT_RATIO_KONTEXT = {
    "type": "string",
    "pattern": "^[0-9]+:[0-9]+$",
    "description": "W:H between 21:9 and 9:21",
    "default": "1:1",
}
ASPECT_RATIO_ULTRA = {
    "type": "string",
    "pattern": "^[0-9]+:[0-9]+$",
    "description": "W:H between 21:9 and 9:21",
    "default": "16:9",
}


@dataclass(frozen=True)
class Model:
    """One model as a provider serves it. `name` is fluxhook's unified name."""

    name: str
    native_id: str
    parameters: Mapping[str, Mapping[str, Any]]
    required: tuple[str, ...] = ("prompt",)
    capabilities: Mapping[str, bool] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {k: dict(v) for k, v in self.parameters.items()},
            "required": list(self.required),
            "additionalProperties": False,
        }


def _bfl_models() -> tuple[Model, ...]:
    caps = {"webhook": True, "cancel": False, "image_input": True}
    text = {"prompt": PROMPT, "seed": SEED, "safety_tolerance": SAFETY, "prompt_upsampling": UPSAMPLING}
    return (
        Model(
            "flux-pro-1.1",
            "flux-pro-1.1",
            {**text, "width": _side(1024), "height": _side(768), "image_prompt": IMAGE_URL,
             "output_format": FORMAT_JPEG},
            capabilities=caps,
        ),
        Model(
            "flux-dev",
            "flux-dev",
            {**text, "width": _side(1024), "height": _side(768), "image_prompt": IMAGE_URL,
             "steps": {"type": "integer", "minimum": 1, "maximum": 50, "default": 28},
             "guidance": {"type": "number", "minimum": 1.5, "maximum": 5, "default": 3},
             "output_format": FORMAT_JPEG},
            capabilities=caps,
        ),
        Model(
            "flux-pro-1.1-ultra",
            "flux-pro-1.1-ultra",
            {**text, "aspect_ratio": ASPECT_RATIO_ULTRA, "raw": {"type": "boolean", "default": False},
             "image_prompt": IMAGE_URL,
             "image_prompt_strength": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
             "output_format": FORMAT_JPEG},
            capabilities=caps,
        ),
        Model(
            "flux-kontext-pro",
            "flux-kontext-pro",
            {**text, "aspect_ratio": ASPECT_RATIO_KONTEXT, "image_url": IMAGE_URL,
             "output_format": FORMAT_PNG},
            capabilities=caps,
        ),
        Model(
            "flux-kontext-max",
            "flux-kontext-max",
            {**text, "aspect_ratio": ASPECT_RATIO_KONTEXT, "image_url": IMAGE_URL,
             "output_format": FORMAT_PNG},
            capabilities=caps,
        ),
    )


class Catalog:
    """Which provider serves which model, by unified name or the provider's native id."""

    def __init__(self, models: Mapping[str, tuple[Model, ...]]) -> None:
        self._models = {provider: {m.name: m for m in ms} for provider, ms in models.items()}
        self._native = {
            provider: {m.native_id: m for m in ms} for provider, ms in models.items()
        }

    @classmethod
    def default(cls) -> Catalog:
        return cls({"bfl": _bfl_models()})

    def providers(self) -> list[str]:
        return sorted(self._models)

    def models(self, provider: str) -> list[Model]:
        return list(self._models.get(provider, {}).values())

    def find(self, provider: str, model: str) -> Model | None:
        return self._models.get(provider, {}).get(model) or self._native.get(provider, {}).get(model)


def validate_input(model: Model, value: Any, *, field_prefix: str = "input") -> dict[str, Any]:
    """Check `value` against the model's parameters; return it unchanged or raise 422."""
    if not isinstance(value, dict):
        raise ValidationFailed(
            f"{field_prefix} must be an object",
            details=[{"field": field_prefix, "rule": "type", "expected": "object"}],
        )
    problems: list[dict[str, Any]] = []
    for name in model.required:
        if name not in value or value[name] is None:
            problems.append({"field": f"{field_prefix}.{name}", "rule": "required",
                             "message": f"{name} is required"})
    for name, item in value.items():
        spec = model.parameters.get(name)
        path = f"{field_prefix}.{name}"
        if spec is None:
            problems.append({"field": path, "rule": "unknown_field",
                             "message": f"{name} is not a parameter of {model.name}",
                             "allowed": sorted(model.parameters)})
            continue
        if item is None and name not in model.required:
            continue
        problems.extend(check_value(path, item, spec))
    if problems:
        fields = ", ".join(p["field"] for p in problems)
        raise ValidationFailed(f"invalid input for {model.name}: {fields}", details=problems)
    return value


def check_value(path: str, item: Any, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Problems with one value under one JSON Schema (the subset the catalog uses)."""
    kind = spec.get("type")
    if not _is_type(item, kind):
        return [{"field": path, "rule": "type", "expected": kind,
                 "message": f"must be of type {kind}"}]
    problems: list[dict[str, Any]] = []
    if "enum" in spec and item not in spec["enum"]:
        problems.append({"field": path, "rule": "enum", "allowed": list(spec["enum"]),
                         "message": f"must be one of {', '.join(map(str, spec['enum']))}"})
    if "minimum" in spec and item < spec["minimum"]:
        problems.append({"field": path, "rule": "minimum", "minimum": spec["minimum"],
                         "message": f"must be at least {spec['minimum']}"})
    if "maximum" in spec and item > spec["maximum"]:
        problems.append({"field": path, "rule": "maximum", "maximum": spec["maximum"],
                         "message": f"must be at most {spec['maximum']}"})
    step = spec.get("multipleOf")
    if step and not math.isclose(item / step, round(item / step), abs_tol=1e-9):
        problems.append({"field": path, "rule": "multipleOf", "multipleOf": step,
                         "message": f"must be a multiple of {step}"})
    if kind == "string":
        problems.extend(_string_problems(path, item, spec))
    return problems


def _string_problems(path: str, item: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    import re

    problems: list[dict[str, Any]] = []
    if "minLength" in spec and len(item) < spec["minLength"]:
        problems.append({"field": path, "rule": "minLength", "minLength": spec["minLength"],
                         "message": f"must be at least {spec['minLength']} characters"})
    if "maxLength" in spec and len(item) > spec["maxLength"]:
        problems.append({"field": path, "rule": "maxLength", "maxLength": spec["maxLength"],
                         "message": f"must be at most {spec['maxLength']} characters"})
    if "pattern" in spec and not re.match(spec["pattern"], item):
        problems.append({"field": path, "rule": "pattern", "pattern": spec["pattern"],
                         "message": spec.get("description", f"must match {spec['pattern']}")})
    if spec.get("format") == "uri" and not item.startswith(("https://", "http://")):
        problems.append({"field": path, "rule": "format", "format": "uri",
                         "message": "must be an http(s) URL"})
    return problems


def _is_type(item: Any, kind: str | None) -> bool:
    if kind == "integer":
        return isinstance(item, int) and not isinstance(item, bool)
    if kind == "number":
        return isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item)
    if kind == "string":
        return isinstance(item, str)
    if kind == "boolean":
        return isinstance(item, bool)
    if kind == "object":
        return isinstance(item, dict)
    return True
