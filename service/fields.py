"""Checks every request parser starts with: a JSON object, with only the fields it knows; a
query string with only the parameters it knows."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from service.errors import ValidationFailed


def json_object(body: Any) -> dict[str, Any]:
    """`body` itself when it is a JSON object; otherwise a 422 naming the body."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object",
                               details=[{"field": "(body)", "rule": "type", "expected": "object"}])
    return body


def only_fields(body: Collection[str], allowed: Collection[str], *, kind: str = "field") -> None:
    """A 422 naming each field of `body` (its keys) not in `allowed`, with what is allowed."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ValidationFailed(
            f"unknown {kind}(s): {', '.join(unknown)}",
            details=[{"field": name, "rule": "unknown_field", "allowed": list(allowed)} for name in unknown],
        )


def only_params(params: Collection[str], allowed: Collection[str]) -> None:
    """The same 422 as for an unknown body field, for a query parameter a route does not read:
    a misspelt filter (`?stauts=failed`) must not silently list everything."""
    only_fields(params, allowed, kind="query parameter")
