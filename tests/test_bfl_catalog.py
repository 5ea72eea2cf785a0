"""BFL's catalog beyond text-to-image: fill, expand, FLUX.2 previews and multi-reference inputs.

Each refusal names its field, the rule and the limit, before any provider is called.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from service.catalog import Catalog, validate_input
from service.errors import ValidationFailed
from tests.conftest import assert_error_shape
from tests.test_bfl_schema import tiny_png

CATALOG = Catalog.default()
IMAGE = "https://images.example.com/photo.png"
MASK = "https://images.example.com/mask.png"


def model(name: str) -> Any:
    found = CATALOG.find("bfl", name)
    assert found is not None, name
    return found


def refused(name: str, value: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as caught:
        validate_input(model(name), value)
    return [{k: v for k, v in d.items() if k != "message"} for d in caught.value.details]


def test_fill_needs_the_image_and_not_a_prompt():
    assert validate_input(model("flux-pro-1.0-fill"), {"image_url": IMAGE, "mask_url": MASK})
    assert refused("flux-pro-1.0-fill", {"prompt": "a red door", "mask_url": MASK}) == [
        {"field": "input.image_url", "rule": "required"}]


def test_fill_mask_must_be_a_url():
    [detail] = refused("flux-pro-1.0-fill", {"image_url": IMAGE, "mask_url": "iVBORw0KGgo="})
    assert (detail["field"], detail["rule"]) == ("input.mask_url", "format")


@pytest.mark.parametrize(("field", "value", "rule", "limit"), [
    ("steps", 14, "minimum", 15),
    ("steps", 51, "maximum", 50),
    ("guidance", 1.4, "minimum", 1.5),
    ("guidance", 100.5, "maximum", 100),
    ("safety_tolerance", 7, "maximum", 6),
])
def test_fill_ranges_are_bfls(field, value, rule, limit):
    assert refused("flux-pro-1.0-fill", {"image_url": IMAGE, field: value}) == [
        {"field": f"input.{field}", "rule": rule, rule: limit}]


@pytest.mark.parametrize("side", ["top", "bottom", "left", "right"])
def test_expand_margins_are_0_to_2048_pixels(side):
    ok = {"image_url": IMAGE, side: 2048}
    assert validate_input(model("flux-pro-1.0-expand"), ok) is ok
    assert refused("flux-pro-1.0-expand", {"image_url": IMAGE, side: 2049}) == [
        {"field": f"input.{side}", "rule": "maximum", "maximum": 2048}]
    assert refused("flux-pro-1.0-expand", {"image_url": IMAGE, side: -1}) == [
        {"field": f"input.{side}", "rule": "minimum", "minimum": 0}]


def test_fill_has_no_margins_and_expand_no_mask():
    [detail] = refused("flux-pro-1.0-fill", {"image_url": IMAGE, "top": 64})
    assert (detail["field"], detail["rule"]) == ("input.top", "unknown_field")
    [detail] = refused("flux-pro-1.0-expand", {"image_url": IMAGE, "mask_url": MASK})
    assert (detail["field"], detail["rule"]) == ("input.mask_url", "unknown_field")


@pytest.mark.parametrize(("name", "references"), [
    ("flux-kontext-pro", 4), ("flux-kontext-max", 4),
    ("flux-2-pro", 8), ("flux-2-pro-preview", 8), ("flux-2-max", 8), ("flux-2-flex", 8),
    ("flux-2-klein-4b", 4), ("flux-2-klein-9b", 4), ("flux-2-klein-9b-preview", 4),
])
def test_reference_images_stop_where_the_schema_does(name, references):
    every = {"prompt": "p", "image_url": IMAGE,
             **{f"image_url_{n}": f"{IMAGE}?{n}" for n in range(2, references + 1)}}
    assert validate_input(model(name), every) is every
    if references < 8:
        past = f"image_url_{references + 1}"
        [detail] = refused(name, {**every, past: IMAGE})
        assert (detail["field"], detail["rule"]) == (f"input.{past}", "unknown_field")


def test_a_reference_image_must_be_a_url():
    [detail] = refused("flux-2-pro", {"prompt": "p", "image_url_3": "not a url"})
    assert (detail["field"], detail["rule"]) == ("input.image_url_3", "format")


@pytest.mark.parametrize("name", ["flux-2-pro-preview", "flux-2-klein-9b-preview"])
def test_flux_2_previews_take_flux_2_sizes_and_safety(name):
    big = {"prompt": "p", "width": 64, "height": 2000}  # no maximum and no step in the schema
    assert validate_input(model(name), big) is big
    assert refused(name, {"prompt": "p", "width": 63}) == [
        {"field": "input.width", "rule": "minimum", "minimum": 64}]
    assert refused(name, {"prompt": "p", "safety_tolerance": 6}) == [
        {"field": "input.safety_tolerance", "rule": "maximum", "maximum": 5}]


def test_only_base64_only_fields_are_inlined():
    assert model("flux-pro-1.1").inline_images == ("image_prompt",)
    assert model("flux-pro-1.1-ultra").inline_images == ("image_prompt",)
    assert model("flux-dev").inline_images == ("image_prompt",)
    assert model("flux-pro-1.0-fill").inline_images == ("image_url", "mask_url")
    assert model("flux-pro-1.0-expand").inline_images == ("image_url",)
    assert model("flux-kontext-pro").inline_images == ()  # "Base64 encoded image or URL"
    assert model("flux-2-pro").inline_images == ()  # "Path to the input image"
    # CometAPI is not BFL: it keeps sending URLs, as it always has.
    assert CATALOG.find("cometapi", "flux-pro-1.1").inline_images == ()


def test_apiframe_serves_flux_2_without_bfls_reference_images():
    apiframe = CATALOG.find("apiframe", "flux-2-pro")
    assert apiframe is not None and "image_url_2" not in apiframe.parameters


# Through the API: the 422 is the one error shape and names the field; no provider is called.

@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


@pytest.mark.anyio
@pytest.mark.parametrize(("model_name", "input_", "field"), [
    ("flux-pro-1.0-fill", {"prompt": "a red door"}, "input.image_url"),
    ("flux-pro-1.0-fill", {"image_url": IMAGE, "mask_url": 7}, "input.mask_url"),
    ("flux-pro-1.0-expand", {"image_url": IMAGE, "left": 4096}, "input.left"),
    ("flux-2-klein-4b", {"prompt": "p", "image_url_5": IMAGE}, "input.image_url_5"),
])
async def test_the_api_refuses_bad_new_fields_by_name(api, router, model_name, input_, field):
    response = await api.client.post("/v1/jobs", json={"provider": "bfl", "model": model_name,
                                                       "input": input_})
    error = assert_error_shape(response, 422, "validation_failed")
    assert [d["field"] for d in error["details"]] == [field]
    assert field in error["message"]
    assert router.calls.call_count == 0


@pytest.mark.anyio
async def test_the_api_takes_a_fill_job_with_an_uploaded_image_and_mask(api):
    urls = []
    for _ in ("image", "mask"):
        uploaded = await api.client.post("/v1/uploads", content=tiny_png(),
                                         headers={"Content-Type": "image/png"})
        assert uploaded.status_code == 201, uploaded.text
        urls.append(uploaded.json()["url"])
    response = await api.client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.0-fill",
        "input": {"prompt": "a red door", "image_url": urls[0], "mask_url": urls[1]}})
    assert response.status_code == 202, response.text
    assert response.json()["input"]["mask_url"] == urls[1]  # the job keeps the URL, not bytes
