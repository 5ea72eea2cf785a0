"""Every submit body the BFL adapter builds validates against BFL's OpenAPI for its path.

tests/data/bfl-openapi.json is a copy of BFL's OpenAPI (api.bfl.ai/openapi.json, as vendored in
shared/bfl-openapi.json). For every BFL model in the catalog and a spread of inputs (the
defaults, each optional field alone, every bound, everything at once), the real adapter builds
the body and jsonschema checks it against the request schema of `POST /v1/<model>`, with two
rules stricter than BFL's FastAPI: no field the schema does not name (BFL would silently drop
it, so it is an adapter bug), and a field the schema calls base64-only must hold base64 image
bytes, while one that takes "base64 or URL" gets the client's URL unchanged.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.catalog import Catalog, Model, validate_input
from service.catalog.params import VOCABULARY
from service.downloads import sniff_image_type
from service.providers.base import SubmitOrder
from service.providers.bfl import BflAdapter

OPENAPI = json.loads((Path(__file__).parent / "data" / "bfl-openapi.json").read_text(encoding="utf-8"))
_DOCUMENT = "urn:bfl-openapi"
_REGISTRY = Registry().with_resource(_DOCUMENT, Resource.from_contents(OPENAPI, DRAFT202012))

BASE = "https://api.bfl.ai"
ADAPTER = BflAdapter(BASE, "k", ("*.bfl.ai",))
WEBHOOK = "https://hooks.example.com/v1/callbacks/bfl/token"
MODELS = Catalog.default().models("bfl")
IMAGE_FIELDS = ("image", "mask", "image_prompt")  # and input_image, input_image_<n>
every_model = pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


PNG_BASE64 = base64.b64encode(tiny_png()).decode("ascii")


def request_schema(path: str) -> dict[str, Any]:
    """The JSON request body's schema of `POST path`, its $ref resolved against the document."""
    schema = OPENAPI["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {"$ref": _DOCUMENT + schema["$ref"]}


def target(path: str) -> Mapping[str, Any]:
    ref = request_schema(path)["$ref"].removeprefix(_DOCUMENT + "#/components/schemas/")
    return OPENAPI["components"]["schemas"][ref]  # type: ignore[no-any-return]


def validator(path: str) -> Draft202012Validator:
    # unevaluatedProperties sees through the $ref (2020-12), so only the schema's fields pass.
    return Draft202012Validator({**request_schema(path), "unevaluatedProperties": False},
                                registry=_REGISTRY)


def problems(path: str, body: Mapping[str, Any]) -> list[str]:
    """Every way `body` breaks the request schema of `path`, plus the base64/URL rules."""
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
             for e in validator(path).iter_errors(body)]
    for name, prop in target(path).get("properties", {}).items():
        if name in body and base64_only(prop):
            try:
                data = base64.b64decode(body[name], validate=True)
            except (ValueError, TypeError):
                found.append(f"{name}: not base64")
                continue
            if sniff_image_type(data[:16]) is None:
                found.append(f"{name}: base64 but not an image")
    return found


def base64_only(prop: Mapping[str, Any]) -> bool:
    """The schema's own words: "base64" without "URL" (fill's image, FLUX1.1's image_prompt)."""
    words = prop.get("description", "").lower()
    return "base64" in words and "url" not in words


def submit_body(model: Model, value: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """What fluxhook sends for `value`: validated by the catalog, images inlined where the model
    says so (as service/inline_images.py does), then built by the real adapter."""
    validate_input(model, dict(value))
    resolved = {k: PNG_BASE64 if k in model.inline_images else v for k, v in value.items()}
    call = ADAPTER.submit_call(SubmitOrder("job_1", model.native_id, resolved, WEBHOOK, "s" * 32))
    assert call.method == "POST" and call.url.startswith(BASE)
    return call.url.removeprefix(BASE), call.json


def example(name: str, spec: Mapping[str, Any]) -> Any:
    """A valid value for one catalog parameter, from its spec."""
    if "default" in spec:
        return spec["default"]
    if "enum" in spec:
        return spec["enum"][0]
    kind = spec["type"]
    if kind == "string":
        if spec.get("format") == "uri":
            return f"https://images.example.com/{name}.png"
        return "16:9" if "pattern" in spec else "a lighthouse at dusk"
    if kind in ("integer", "number"):
        return lowest(spec)
    return True


def lowest(spec: Mapping[str, Any]) -> Any:
    step = spec.get("multipleOf", 1)
    return math.ceil(spec.get("minimum", 0) / step) * step


def highest(spec: Mapping[str, Any]) -> Any:
    step = spec.get("multipleOf", 1)
    return math.floor(spec["maximum"] / step) * step


def minimal(model: Model) -> dict[str, Any]:
    return {name: example(name, model.parameters[name]) for name in model.required}


def spread(model: Model) -> Iterator[tuple[str, dict[str, Any]]]:
    """The defaults, each optional field alone, each bound and enum value, everything at once."""
    base = minimal(model)
    yield "defaults", base
    for name, spec in model.parameters.items():
        yield f"{name}=example", {**base, name: example(name, spec)}
        if spec.get("type") in ("integer", "number"):
            if "minimum" in spec:
                yield f"{name}=min", {**base, name: lowest(spec)}
            if "maximum" in spec:
                yield f"{name}=max", {**base, name: highest(spec)}
        for choice in spec.get("enum", ()):
            yield f"{name}={choice}", {**base, name: choice}
        if spec.get("pattern"):
            for ratio in ("21:9", "9:21", "1:1"):
                yield f"{name}={ratio}", {**base, name: ratio}
    yield "everything", {name: example(name, spec) for name, spec in model.parameters.items()}


@every_model
def test_every_body_the_adapter_builds_validates_against_bfls_schema(model):
    checked = 0
    for case, value in spread(model):
        path, body = submit_body(model, value)
        assert path == f"/v1/{model.native_id}"
        assert problems(path, body) == [], (case, {k: str(v)[:40] for k, v in body.items()})
        checked += 1
    assert checked > len(model.parameters)  # the spread really covered the fields


@every_model
def test_every_catalog_field_reaches_bfl_under_a_name_its_schema_knows(model):
    value = {name: example(name, spec) for name, spec in model.parameters.items()}
    path, body = submit_body(model, value)
    assert set(body) - {"webhook_url", "webhook_secret"} <= set(target(path)["properties"])
    assert len(body) == len(value) + 2  # no field dropped or merged on the way


@every_model
def test_images_go_as_base64_only_where_the_schema_takes_nothing_else(model):
    value = {name: example(name, spec) for name, spec in model.parameters.items()}
    path, body = submit_body(model, value)
    for name, prop in target(path)["properties"].items():
        if name not in body or (name not in IMAGE_FIELDS and not name.startswith("input_image")):
            continue
        if base64_only(prop):
            assert body[name] == PNG_BASE64, name
        else:  # "Base64 encoded image or URL", "Path to the input image": the URL as given
            assert body[name].startswith("https://images.example.com/"), name


@every_model
def test_catalog_bounds_are_the_schemas_own(model):
    """Not narrower (the bounds themselves pass, above) and not wider: one step past a bound the
    schema states is refused by the schema too. The seed's and prompt's bounds are fluxhook's
    own (the schema gives none), so they are not compared."""
    path = f"/v1/{model.native_id}"
    properties = target(path)["properties"]
    compared = 0
    for name, spec in model.parameters.items():
        if spec.get("type") not in ("integer", "number") or name == "seed":
            continue
        step = spec.get("multipleOf", 1)
        for rule, past in (("minimum", lowest(spec) - step), ("maximum", spec.get("maximum", 0) + step)):
            if rule not in spec:
                continue
            _, body = submit_body(model, minimal(model))  # built valid, then pushed past the bound
            assert name in properties  # numeric fields keep their names
            body[name] = past
            assert problems(path, body), (name, rule, past)
            compared += 1
    numeric = [n for n, s in model.parameters.items() if s.get("type") in ("integer", "number")]
    assert compared >= len(numeric) - 1


def test_the_catalog_serves_every_model_path_of_the_openapi():
    """BFL's whole catalog: every `POST /v1/<model>` but the finetuned ones (they need a
    finetune id from BFL's finetuning API, which fluxhook does not drive)."""
    paths = {path.removeprefix("/v1/") for path, item in OPENAPI["paths"].items()
             if "post" in item and path != "/v1/delete_finetune" and not path.endswith("-finetuned")}
    assert {m.native_id for m in MODELS} == paths


def test_the_new_inputs_are_in_the_vocabulary():
    assert {"mask_url", "top", "bottom", "left", "right", "image_url_8"} <= set(VOCABULARY)


@pytest.mark.parametrize(("path", "body", "complaint"), [
    ("/v1/flux-pro-1.1", {"prompt": "x", "width": 1441}, "width"),
    ("/v1/flux-pro-1.1", {"prompt": "x", "width": 1000}, "width"),  # not a multiple of 32
    ("/v1/flux-pro-1.1", {"prompt": "x", "input_image": "https://x/i.png"}, "input_image"),
    ("/v1/flux-pro-1.1", {"prompt": "x", "image_prompt": "https://x/i.png"}, "image_prompt"),
    ("/v1/flux-pro-1.0-fill", {"prompt": "x"}, "image"),
    ("/v1/flux-pro-1.0-fill", {"image": PNG_BASE64, "mask_url": "https://x/m.png"}, "mask_url"),
    ("/v1/flux-pro-1.0-expand", {"image": PNG_BASE64, "top": 2049}, "top"),
    ("/v1/flux-2-klein-4b", {"prompt": "x", "input_image_5": "https://x/i.png"}, "input_image_5"),
    ("/v1/flux-2-pro-preview", {"prompt": "x", "safety_tolerance": 6}, "safety_tolerance"),
    ("/v1/flux-2-pro", {"prompt": "x", "width": 63}, "width"),
    ("/v1/flux-dev", {"prompt": "x", "output_format": "tiff"}, "output_format"),  # a nested $ref
    ("/v1/flux-pro-1.0-fill", {"image": "aGVsbG8="}, "image"),  # base64, but of no image
])
def test_a_wrong_body_is_refused_by_the_same_check(path, body, complaint):
    found = problems(path, body)
    assert found and any(complaint in p for p in found), found
