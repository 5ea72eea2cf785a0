"""Through the API, for every model of every provider: bad input is a 422 naming the field,
and nothing is sent to any provider."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from service.worker import Worker
from tests.conftest import assert_error_shape
from tests.test_catalog import SERVED, WRONG_TYPE, minimal_input, out_of_range

pytestmark = pytest.mark.anyio

ALL_PROVIDERS = {"COMETAPI_API_KEY": "c", "APIFRAME_API_KEY": "afk_x", "RUNCOMFY_API_TOKEN": "r",
                 "REPLICATE_API_TOKEN": "r8", "FAL_KEY": "f"}


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)  # any provider call at all would fail the test


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


@pytest.fixture
def make_settings(make_settings):
    return lambda **extra: make_settings(**{**ALL_PROVIDERS, **extra})


def bad_inputs(model: Any) -> list[tuple[str, dict[str, Any], str]]:
    """(case, input, offending field) for each kind of mistake this model allows."""
    base = minimal_input(model)
    cases = [("unknown-field", {**base, "colour_palette": "warm"}, "colour_palette")]
    ranged = next(((n, s) for n, s in model.parameters.items() if out_of_range(s)), None)
    if ranged:
        name, spec = ranged
        cases.append(("out-of-range", {**base, name: out_of_range(spec)[0][0]}, name))
    name, spec = next(iter(model.parameters.items()))
    cases.append(("wrong-type", {**base, name: WRONG_TYPE[spec["type"]]}, name))
    for name in model.required:
        cases.append((f"missing-{name}", {k: v for k, v in base.items() if k != name}, name))
    return cases


CASES = [
    (provider, model, case, value, field)
    for provider, model in SERVED
    for case, value, field in bad_inputs(model)
]


@pytest.mark.parametrize(
    ("provider", "model", "case", "value", "field"), CASES, ids=[f"{c[0]}/{c[1].name}/{c[2]}" for c in CASES]
)
async def test_bad_input_is_422_naming_the_field_and_nothing_reaches_a_provider(
    api, router, provider, model, case, value, field
):
    response = await api.client.post(
        "/v1/jobs", json={"provider": provider, "model": model.native_id, "input": value}
    )
    error = assert_error_shape(response, 422, "validation_failed")
    assert f"input.{field}" in [d["field"] for d in error["details"]]
    await Worker(api.ctx).run_once()
    assert router.calls.call_count == 0
    assert (await api.client.get("/v1/jobs")).json()["data"] == []


def test_every_model_has_all_four_kinds_of_mistake_covered():
    kinds = {}
    for provider, model, case, _, _ in CASES:
        kinds.setdefault(f"{provider}/{model.name}", set()).add(case.split("-")[0])
    assert all(k >= {"unknown", "out", "wrong", "missing"} for k in kinds.values()), kinds


async def test_unknown_provider_or_model_lists_what_is_available(api):
    error = assert_error_shape(
        await api.client.post(
            "/v1/jobs", json={"provider": "midjourney", "model": "flux-pro-1.1", "input": {"prompt": "x"}}
        ),
        422,
    )
    assert error["details"][0]["allowed"] == ["auto", "bfl", "cometapi", "apiframe", "runcomfy", "replicate",
                                              "fal"]
    error = assert_error_shape(
        await api.client.post(
            "/v1/jobs", json={"provider": "apiframe", "model": "flux-9", "input": {"prompt": "x"}}
        ),
        422,
    )
    assert "flux-pro-1.1" in error["details"][0]["allowed"]


async def test_models_endpoint_lists_every_provider_with_schemas_and_capabilities(api):
    body = (await api.client.get("/v1/models")).json()
    providers = {p["name"]: p for p in body["providers"]}
    assert set(providers) == {"bfl", "cometapi", "apiframe", "runcomfy", "replicate", "fal"}
    runcomfy = providers["runcomfy"]["models"][0]
    assert runcomfy["native_id"] == "blackforestlabs/flux-1-kontext/pro/edit"
    assert "image_url" in runcomfy["parameters"]["required"]
    assert runcomfy["capabilities"] == {"webhook": False, "cancel": True, "image_input": True}
    apiframe = {m["name"]: m for m in providers["apiframe"]["models"]}
    assert apiframe["flux-2-dev"]["parameters"]["properties"]["guidance"]["maximum"] == 10
