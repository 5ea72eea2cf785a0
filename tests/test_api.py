"""The HTTP API contract: shapes, errors, idempotency, pagination, auth (outputs: test_outputs.py)."""

from __future__ import annotations

import httpx
import pytest
import respx

from service.ids import new_job_id
from storage.errors import StorageUnavailable
from storage.records import NewJob
from tests.conftest import assert_error_shape

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
JOB = {"provider": "bfl", "model": "flux-pro-1.1",
       "input": {"prompt": "a lighthouse", "width": 1024, "height": 768}, "metadata": {"order": 42}}


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


async def test_submit_returns_202_with_the_whole_job_document(api):
    response = await api.client.post("/v1/jobs", json=JOB)
    assert response.status_code == 202
    job = response.json()
    assert set(job) >= {"id", "provider", "model", "status", "input", "metadata", "provider_job_id",
                        "outputs", "error", "completion_source", "created_at", "updated_at",
                        "completed_at"}
    assert (job["status"], job["provider"], job["model"]) == ("queued", "bfl", "flux-pro-1.1")
    assert job["input"] == JOB["input"] and job["metadata"] == {"order": 42}
    assert job["outputs"] == [] and job["error"] is None and job["completed_at"] is None
    assert job["created_at"].endswith("Z")
    assert "webhook_secret" not in response.text
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    fetched = await api.client.get(f"/v1/jobs/{job['id']}")
    assert fetched.json() == job


async def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(api):
    headers = {"Idempotency-Key": "order-42"}
    first = await api.client.post("/v1/jobs", json=JOB, headers=headers)
    again = await api.client.post("/v1/jobs", json=JOB, headers=headers)
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = {**JOB, "input": {**JOB["input"], "prompt": "another"}}
    conflict = await api.client.post("/v1/jobs", json=other, headers=headers)
    error = assert_error_shape(conflict, 409, "idempotency_key_reused")
    assert error["details"][0]["field"] == "Idempotency-Key"
    assert len((await api.client.get("/v1/jobs")).json()["data"]) == 1


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    (b"{not json", 400, "malformed_json", "(body)"),
    (b"", 400, "malformed_json", "(body)"),
    (b"\xff\xfe", 400, "malformed_json", "(body)"),
    (b"[1, 2]", 422, "validation_failed", "(body)"),
    (b'{"provider": "bfl", "input": {"prompt": "x"}}', 422, "validation_failed", "model"),
    (b'{"provider": "nope", "model": "flux-pro-1.1", "input": {"prompt": "x"}}', 422,
     "validation_failed", "provider"),
    (b'{"provider": "bfl", "model": "flux-9", "input": {"prompt": "x"}}', 422, "validation_failed", "model"),
    (b'{"provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "x", "width": 1000}}', 422,
     "validation_failed", "input.width"),
    (b'{"provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "x", "height": "tall"}}', 422,
     "validation_failed", "input.height"),
    (b'{"provider": "bfl", "model": "flux-pro-1.1", "input": {"width": 512}}', 422,
     "validation_failed", "input.prompt"),
    (b'{"provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "x", "colour": 1}}', 422,
     "validation_failed", "input.colour"),
    (b'{"provider": "bfl", "model": "flux-pro-1.1", "input": "x"}', 422, "validation_failed", "input"),
    (b'{"provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "x"}, "metadata": 3}', 422,
     "validation_failed", "metadata"),
    (b'{"provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "x"}, "extra": 1}', 422,
     "validation_failed", "extra"),
])
async def test_bad_submissions_get_one_error_shape_naming_the_field(api, body, status, code, field):
    response = await api.client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    error = assert_error_shape(response, status, code)
    assert field in [d["field"] for d in error["details"]]
    assert (await api.client.get("/v1/jobs")).json()["data"] == []


async def test_a_body_over_the_limit_is_refused_with_413(api):
    huge = b'{"pad": "' + b"x" * 1_100_000 + b'"}'
    assert_error_shape(await api.client.post("/v1/jobs", content=huge), 413, "payload_too_large")


async def test_out_of_range_value_names_the_rule_and_the_limits(api):
    body = {**JOB, "input": {"prompt": "x", "safety_tolerance": 9}}
    error = assert_error_shape(await api.client.post("/v1/jobs", json=body), 422)
    [detail] = error["details"]
    assert detail == {"field": "input.safety_tolerance", "rule": "maximum", "maximum": 6,
                      "message": "must be at most 6"}


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/v1/jobs/job_missing", 404, "not_found"),
    ("/v1/jobs/job_missing/outputs/0", 404, "not_found"),
    ("/v1/jobs/job_missing/outputs/first", 422, "validation_failed"),
    ("/v1/nothing-here", 404, "not_found"),
    ("/v1/jobs?limit=0", 422, "validation_failed"),
    ("/v1/jobs?status=done", 422, "validation_failed"),
    ("/v1/jobs?provider=midjourney", 422, "validation_failed"),
    ("/v1/jobs?cursor=%%%", 400, "invalid_cursor"),
])
async def test_read_errors_have_the_one_shape(api, path, status, code):
    assert_error_shape(await api.client.get(path), status, code)


async def test_wrong_method_has_the_one_shape(api):
    assert_error_shape(await api.client.delete("/v1/jobs"), 405, "method_not_allowed")


async def test_listing_is_newest_first_and_cursor_paginated(api, clock):
    ids = []
    for n in range(5):
        clock.advance(1)
        body = {**JOB, "input": {"prompt": f"p{n}"}}
        ids.append((await api.client.post("/v1/jobs", json=body)).json()["id"])
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.client.get(f"/v1/jobs{query}")).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    queued = (await api.client.get("/v1/jobs?status=queued")).json()["data"]
    assert len(queued) == 5
    assert (await api.client.get("/v1/jobs?status=failed")).json()["data"] == []


async def test_jobs_can_be_listed_by_provider_alone_or_with_a_status(api):
    at: dict[str, list[str]] = {}
    for n, provider in enumerate(("bfl", "cometapi", "bfl")):  # cometapi's job made before it was unset
        now = api.ctx.clock() + n
        job, _ = await api.ctx.store.jobs.create_job(NewJob(
            id=new_job_id(now), provider=provider, model="flux-pro-1.1", input={"prompt": "a fox"},
            metadata={}, webhook_secret=None, idempotency_key=None, request_hash=None,
            deadline_at=now + 900_000), now=now)
        at.setdefault(provider, []).append(job.id)
    bfl = (await api.client.get("/v1/jobs?provider=bfl&limit=1")).json()
    assert [job["id"] for job in bfl["data"]] == at["bfl"][-1:]
    rest = (await api.client.get(f"/v1/jobs?provider=bfl&cursor={bfl['next_cursor']}")).json()
    assert [job["id"] for job in rest["data"]] == at["bfl"][:1] and rest["next_cursor"] is None
    both = (await api.client.get("/v1/jobs?provider=cometapi&status=queued")).json()["data"]
    assert [job["id"] for job in both] == at["cometapi"]
    assert (await api.client.get("/v1/jobs?provider=cometapi&status=failed")).json()["data"] == []


async def test_healthz_answers_when_the_database_does(api):
    response = await api.client.get("/healthz")
    assert response.json() == {"status": "ok"}


@pytest.fixture
def make_settings(make_settings, request):
    env = getattr(request, "param", {})
    return lambda **extra: make_settings(**{**env, **extra})


@pytest.mark.parametrize("make_settings", [{"FLUXHOOK_API_KEY": "sekrit"}], indirect=True)
async def test_api_key_guards_every_v1_route_but_callbacks(api):
    assert_error_shape(await api.client.get("/v1/jobs"), 401, "unauthorized")
    wrong = await api.client.post("/v1/jobs", json=JOB, headers={"Authorization": "Bearer nope"})
    assert_error_shape(wrong, 401, "unauthorized")
    ok = await api.client.get("/v1/jobs", headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200
    # Callbacks authenticate by their token, not the API key.
    callback = await api.client.post("/v1/callbacks/bfl/garbage", content=b"{}")
    assert_error_shape(callback, 403, "invalid_token")
    assert (await api.client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("raw", ["²", "٣", "1" * 40, "-1", "1.5"])
async def test_numbers_that_only_look_like_numbers_are_422s_not_500s(api, raw):
    assert_error_shape(await api.client.get(f"/v1/jobs?limit={raw}"), 422, "validation_failed")
    assert_error_shape(await api.client.get(f"/v1/jobs/job_x/outputs/{raw}"), 422, "validation_failed")


async def test_input_and_metadata_come_back_in_the_order_they_were_sent(api):
    body = {"model": "flux-pro-1.1", "input": {"width": 512, "prompt": "z first", "height": 256},
            "metadata": {"zeta": 1, "alpha": 2}}
    job = (await api.client.post("/v1/jobs", json=body)).json()
    stored = (await api.client.get(f"/v1/jobs/{job['id']}")).json()
    assert list(stored["input"]) == ["width", "prompt", "height"]
    assert list(stored["metadata"]) == ["zeta", "alpha"]


async def test_a_database_that_fails_a_read_is_a_503_in_the_one_error_shape(api, monkeypatch):
    # The store raises a storage error; handlers/errors.py makes it the API's 503.
    async def failing(job_id: str) -> None:
        raise StorageUnavailable("database read failed: disk I/O error")

    monkeypatch.setattr(api.ctx.store.jobs, "get_job", failing)

    response = await api.client.get("/v1/jobs/job_anything")

    assert_error_shape(response, 503, "store_unavailable")
