"""Every spelling of a private address, and every invalid port or host name, is a 422 naming
the field when a subscription or a job's webhook is created or changed, and nothing is stored."""

from __future__ import annotations

import pytest

from tests.conftest import assert_error_shape
from tests.destinations import ALL

pytestmark = pytest.mark.anyio

JOB = {"model": "flux-pro-1.1", "input": {"prompt": "ssrf", "width": 256, "height": 256}}
SPELLINGS = pytest.mark.parametrize(("host", "reason"), list(ALL.values()), ids=list(ALL))


def refused_field(response, field: str) -> str:
    error = assert_error_shape(response, 422, "validation_failed")
    [detail] = error["details"]
    assert (detail["field"], detail["rule"]) == (field, "destination")
    return str(detail["message"])


@SPELLINGS
async def test_creating_a_subscription_to_it_is_a_422_naming_url(api, host, reason):
    response = await api.client.post("/v1/subscriptions", json={"url": f"http://{host}/hook"})
    assert refused_field(response, "url")
    assert (await api.client.get("/v1/subscriptions")).json()["data"] == []


@SPELLINGS
async def test_changing_a_subscription_to_it_is_a_422_naming_url(api, host, reason):
    created = await api.client.post("/v1/subscriptions", json={"url": "https://hooks.example.com/hook"})
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    response = await api.client.patch(f"/v1/subscriptions/{sub_id}", json={"url": f"http://{host}/hook"})
    assert refused_field(response, "url")
    assert (await api.client.get(f"/v1/subscriptions/{sub_id}")).json()["url"] == "https://hooks.example.com/hook"


@SPELLINGS
async def test_a_job_webhook_url_to_it_is_a_422_naming_webhook_url(api, host, reason):
    response = await api.client.post("/v1/jobs", json={**JOB, "webhook_url": f"http://{host}/hook"})
    assert refused_field(response, "webhook_url")
    assert (await api.client.get("/v1/jobs")).json()["data"] == []


@pytest.mark.parametrize("key", ["trailing-dot", "decimal-trailing-dot", "percent-encoded", "mapped-v6-hex"])
async def test_the_refusal_says_which_kind_of_address_it_is(api, key):
    host, reason = ALL[key]
    response = await api.client.post("/v1/subscriptions", json={"url": f"http://{host}/hook"})
    assert refused_field(response, "url").startswith(reason)
