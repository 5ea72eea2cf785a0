"""Parse a job submission into something the store can keep. Pure: raises ApiErrors."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from service.catalog import Catalog, Model, validate_input
from service.errors import ValidationFailed
from service.fields import json_object, only_fields
from service.strict_json import dumps

_FIELDS = ("provider", "model", "input", "metadata", "webhook_url", "webhook_events")
MAX_METADATA_BYTES = 16_384


@dataclass(frozen=True)
class JobRequest:
    provider: str
    model: Model
    input: dict[str, Any]
    metadata: dict[str, Any]
    request_hash: str
    candidates: tuple[str, ...] = ()  # failover order, `provider` first


def parse_job_request(
    body: Any, *, catalog: Catalog, configured: Collection[str], order: Sequence[str] = (),
    own_urls: tuple[str, ...] = (),
) -> JobRequest:
    """Validate a `POST /v1/jobs` body against the catalog, before any provider is called."""
    body = json_object(body)
    only_fields(body, _FIELDS)
    model_name = body.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise ValidationFailed("model is required", details=[
            {"field": "model", "rule": "required", "allowed": _all_models(catalog, configured)}])
    requested = body.get("provider")
    auto = requested is None or requested == "auto"
    candidates = _candidates(requested, model_name, catalog, configured, order)
    provider = candidates[0]
    model = catalog.find(provider, model_name)
    if model is None:
        raise ValidationFailed(
            f"model {model_name!r} is not served by {provider}",
            details=[{"field": "model", "rule": "enum",
                      "allowed": [m.name for m in catalog.models(provider)]}],
        )
    payload = validate_input(model, body.get("input"), own_urls=own_urls)
    if auto:
        # Fail over only to providers that accept this very input for the same model.
        candidates = [provider, *(p for p in candidates[1:]
                                  if _accepts(catalog, p, model.name, payload, own_urls))]
    metadata = body.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValidationFailed("metadata must be an object",
                               details=[{"field": "metadata", "rule": "type", "expected": "object"}])
    if len(dumps(metadata, path="metadata", ensure_ascii=True)) > MAX_METADATA_BYTES:
        raise ValidationFailed("metadata is too large", details=[
            {"field": "metadata", "rule": "maxBytes", "maximum": MAX_METADATA_BYTES}])
    # ASCII and sorted, byte for byte as before: a retried submit must hash the same across releases.
    canonical = dumps(body, sort_keys=True, ensure_ascii=True)
    return JobRequest(provider, model, payload, metadata,
                      hashlib.sha256(canonical.encode()).hexdigest(), tuple(candidates))


def _accepts(
    catalog: Catalog, provider: str, model_name: str, payload: dict[str, Any], own_urls: tuple[str, ...]
) -> bool:
    model = catalog.find(provider, model_name)
    if model is None:
        return False
    try:
        validate_input(model, payload, own_urls=own_urls)
    except ValidationFailed:
        return False
    return True


def _candidates(
    value: Any, model_name: str, catalog: Catalog, configured: Collection[str], order: Sequence[str]
) -> list[str]:
    ranked = [p for p in (*order, *catalog.providers()) if p in configured]
    available = list(dict.fromkeys(ranked))
    if value is None or value == "auto":
        serving = [p for p in available if catalog.find(p, model_name) is not None]
        if serving:
            return serving
        raise ValidationFailed(
            f"no configured provider serves model {model_name!r}",
            details=[{"field": "model", "rule": "enum",
                      "allowed": _all_models(catalog, configured)}],
        )
    if not isinstance(value, str) or value not in available:
        raise ValidationFailed(
            f"provider {value!r} is not available",
            details=[{"field": "provider", "rule": "enum", "allowed": ["auto", *available]}],
        )
    return [value]


def _all_models(catalog: Catalog, configured: Collection[str]) -> list[str]:
    names = {m.name for p in catalog.providers() if p in configured for m in catalog.models(p)}
    return sorted(names)
