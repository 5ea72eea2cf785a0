"""List routes refuse a query parameter they do not read, with the 422 an unknown body field gets:
a misspelt filter (`?stauts=failed`) must not silently list everything."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from tests.conftest import assert_error_shape

pytestmark = pytest.mark.anyio

# Every list route and the parameters it reads.
LIST_ROUTES = {
    "/v1/jobs": ("status", "provider", "limit", "cursor"),
    "/v1/jobs/{job_id}/deliveries": (),
    "/v1/subscriptions": (),
    "/v1/subscriptions/{subscription_id}/deliveries": (),
    "/v1/models": (),
    "/v1/events": ("type", "job_id", "last_event_id"),
}
NOT_LISTS = {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/outputs/{index}", "/v1/subscriptions/{subscription_id}",
             "/v1/webhook-secret", "/v1/tick"}


@pytest.fixture
async def ids(api) -> dict[str, str]:
    job = await api.client.post("/v1/jobs", json={"model": "flux-pro-1.1", "input": {"prompt": "a fox"}})
    sub = await api.client.post("/v1/subscriptions", json={"url": "https://receiver.example.com/hook"})
    assert job.status_code == 202 and sub.status_code == 201, (job.text, sub.text)
    return {"job_id": job.json()["id"], "subscription_id": sub.json()["id"]}


@pytest.mark.parametrize("route", sorted(LIST_ROUTES))
async def test_an_unknown_query_parameter_is_the_422_an_unknown_body_field_gets(api, ids, route):
    body_error = assert_error_shape(
        await api.client.post("/v1/jobs", json={"model": "flux-pro-1.1", "input": {"prompt": "x"},
                                                "stauts": "failed"}),
        422, "validation_failed")
    error = assert_error_shape(
        await api.client.get(route.format(**ids), params={"stauts": "failed"}), 422, "validation_failed")
    assert error["message"] == "unknown query parameter(s): stauts"
    allowed = list(LIST_ROUTES[route])
    assert error["details"] == [{"field": "stauts", "rule": "unknown_field", "allowed": allowed}]
    assert {k for d in error["details"] for k in d} == {k for d in body_error["details"] for k in d}


@pytest.mark.parametrize(("route", "params"), [
    ("/v1/jobs", {"status": "queued", "limit": "5"}),
    ("/v1/jobs/{job_id}/deliveries", {}),
    ("/v1/subscriptions", {}),
    ("/v1/subscriptions/{subscription_id}/deliveries", {}),
    ("/v1/models", {}),
])
async def test_the_parameters_a_list_route_reads_are_still_accepted(api, ids, route, params):
    response = await api.client.get(route.format(**ids), params=params)
    assert response.status_code == 200, response.text


def test_every_get_route_is_either_a_listed_list_route_or_known_not_to_be_one(make_settings):
    from service.app import create_app

    app = create_app(make_settings(), run_workers=False)
    gets = {r.path for r in app.routes if isinstance(r, Route) and "GET" in (r.methods or ())
            and r.path.startswith("/v1/")}
    assert gets == set(LIST_ROUTES) | NOT_LISTS
