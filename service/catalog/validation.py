"""Input validation against a model's parameters: pure, and names every offending field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Context, Decimal
from typing import Any

from service.catalog.model import Model
from service.errors import ValidationFailed

# Wide enough that no quotient of two JSON numbers is rounded before it is compared.
_DECIMAL = Context(prec=80)
# A step test is exact on the decimal a client sent; this only forgives binary float noise
# such as 0.1 + 0.2 == 0.30000000000000004.
_STEP_TOLERANCE = Decimal("1e-9")


def validate_input(
    model: Model, value: Any, *, field_prefix: str = "input", own_urls: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check `value` against the model's parameters; return it unchanged or raise 422.

    Every detail names its field (`input.<name>`), the rule broken and what is allowed:
    `allowed` (enum, unknown field), `minimum`/`maximum`, `multipleOf`, `expected` (type).
    `null` is refused unless the parameter's published schema allows it (`"type"` naming
    `"null"`): the schemas `GET /v1/models` publishes, and BFL's own, refuse it. A URL starting
    with one of `own_urls` (fluxhook's own signed upload URLs) passes a URL rule even when it is
    not https, as on a development machine.
    """
    if not isinstance(value, dict):
        raise ValidationFailed(
            f"{field_prefix} must be an object",
            details=[{"field": field_prefix, "rule": "type", "expected": "object",
                      "message": "must be of type object"}],
        )
    problems: list[dict[str, Any]] = []
    for name in model.required:
        if value.get(name) is None:
            problems.append({"field": f"{field_prefix}.{name}", "rule": "required",
                             "message": f"{name} is required"})
    for name, item in value.items():
        spec = model.parameters.get(name)
        path = f"{field_prefix}.{name}"
        if spec is None:
            problems.append({"field": path, "rule": "unknown_field",
                             "message": f"{name} is not a parameter of {model.name}",
                             "allowed": sorted(model.parameters)})
        elif item is None:
            if name not in model.required and not allows_null(spec):
                problems.append({"field": path, "rule": "type", "expected": spec.get("type"),
                                 "message": f"must be of type {spec.get('type')}, not null"})
        else:
            if own_urls and spec.get("format") == "uri" and isinstance(item, str) \
                    and item.startswith(own_urls):
                continue
            problems.extend(check_value(path, item, spec))
    if problems:
        fields = ", ".join(dict.fromkeys(p["field"] for p in problems))
        raise ValidationFailed(f"invalid input for {model.name}: {fields}", details=problems)
    return value


def allows_null(spec: Mapping[str, Any]) -> bool:
    """Whether a parameter's JSON Schema admits `null` (`"type": "null"` or a list naming it)."""
    kind = spec.get("type")
    return kind == "null" or (isinstance(kind, list | tuple) and "null" in kind)


def check_value(path: str, item: Any, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Problems with one value under one JSON Schema (the subset the catalog uses).

    A value of the wrong type gets one `type` problem and no others. Booleans are not numbers.
    """
    kind = spec.get("type")
    if not _is_type(item, kind):
        return [{"field": path, "rule": "type", "expected": kind,
                 "message": f"must be of type {kind}"}]
    problems: list[dict[str, Any]] = []
    if "enum" in spec and item not in spec["enum"]:
        problems.append({"field": path, "rule": "enum", "allowed": list(spec["enum"]),
                         "message": f"must be one of {', '.join(map(str, spec['enum']))}"})
    if kind in ("integer", "number"):
        problems.extend(_number_problems(path, item, spec))
    elif kind == "string":
        problems.extend(_string_problems(path, item, spec))
    return problems


def is_multiple_of(item: float, step: float) -> bool:
    """Whether `item` is a whole number of `step`s; exact for integers, decimal for floats.

    Floats are compared through their shortest repr, the decimal the client wrote, so 0.15 is
    a multiple of 0.05 although 0.15 / 0.05 == 2.9999999999999996 in binary. Never overflows.
    """
    if isinstance(item, int) and isinstance(step, int):
        return item % step == 0
    quotient = _DECIMAL.divide(_decimal(item), _decimal(step))
    return abs(_DECIMAL.subtract(quotient, quotient.to_integral_value())) <= _STEP_TOLERANCE


def _decimal(value: float) -> Decimal:
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def _number_problems(path: str, item: float, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    if "minimum" in spec and item < spec["minimum"]:
        problems.append({"field": path, "rule": "minimum", "minimum": spec["minimum"],
                         "message": f"must be at least {spec['minimum']}"})
    if "maximum" in spec and item > spec["maximum"]:
        problems.append({"field": path, "rule": "maximum", "maximum": spec["maximum"],
                         "message": f"must be at most {spec['maximum']}"})
    step = spec.get("multipleOf")
    if step and not is_multiple_of(item, step):
        problems.append({"field": path, "rule": "multipleOf", "multipleOf": step,
                         "message": f"must be a multiple of {step}"})
    return problems


def _string_problems(path: str, item: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    if "minLength" in spec and len(item) < spec["minLength"]:
        problems.append({"field": path, "rule": "minLength", "minLength": spec["minLength"],
                         "message": f"must be at least {spec['minLength']} characters"})
    if "maxLength" in spec and len(item) > spec["maxLength"]:
        problems.append({"field": path, "rule": "maxLength", "maxLength": spec["maxLength"],
                         "message": f"must be at most {spec['maxLength']} characters"})
    if spec.get("format") == "uri" and not item.startswith(("https://", "http://")):
        problems.append({"field": path, "rule": "format", "format": "uri",
                         "message": "must be an http(s) URL"})
    elif "pattern" in spec and not re.search(spec["pattern"], item):
        problems.append({"field": path, "rule": "pattern", "pattern": spec["pattern"],
                         "message": f"must match {spec['pattern']}"})
    return problems


def _is_type(item: Any, kind: str | None) -> bool:
    if kind == "integer":
        return isinstance(item, int) and not isinstance(item, bool)
    if kind == "number":
        if isinstance(item, float):
            return math.isfinite(item)  # JSON has no NaN or Infinity; Python's parser does
        return isinstance(item, int) and not isinstance(item, bool)
    if kind == "string":
        return isinstance(item, str)
    if kind == "boolean":
        return isinstance(item, bool)
    if kind == "object":
        return isinstance(item, dict)
    return True
