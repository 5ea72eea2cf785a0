"""Never pay twice: a submit whose answer was lost is not blindly repeated; the task it created
is adopted from its callback (verified, or confirmed by polling it), and a second task, if one
exists all the same, is recorded rather than refused."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from service.worker import Worker
from tests.conftest import assert_error_shape
from tests.test_callbacks import IMAGE_URL, jpeg_bytes, ready_body, signed

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
SUBMIT = f"{BASE}/v1/flux-pro-1.1"
WINDOW_S = 180  # FLUXHOOK_ADOPT_WINDOW_SECONDS' default


@pytest.fixture
def router() -> respx.Router:
    router = respx.Router(assert_all_mocked=True)
    router.get(IMAGE_URL).mock(return_value=httpx.Response(
        200, content=jpeg_bytes(), headers={"content-type": "image/jpeg"}))
    return router


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


def accepted(task: str) -> httpx.Response:
    return httpx.Response(200, json={"id": task, "polling_url": f"{BASE}/v1/get_result?id={task}"})


def pending_body(task: str) -> bytes:
    return json.dumps({"id": task, "status": "Pending"}).encode()


async def job_whose_submit_answer_was_lost(api, router) -> tuple[str, str, str, respx.Route]:
    """A job submitted once; the provider took it (task-1) but its answer never came back."""
    submit = router.post(SUBMIT).mock(side_effect=[httpx.ReadTimeout("answer lost"), accepted("task-2")])
    response = await api.client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox", "width": 512, "height": 512}})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    await Worker(api.ctx).run_once()
    record = await api.ctx.store.jobs.get_job(job_id)
    path = f"/v1/callbacks/bfl/{api.ctx.tokens.issue('bfl', job_id)}"
    return job_id, path, record.webhook_secret, submit


async def attempts(api, job_id: str) -> list[tuple[str, str | None]]:
    rows = (await api.ctx.store.jobs.get_attempts([job_id]))[job_id]
    return [(a.outcome, a.provider_job_id) for a in rows]


async def test_a_submit_whose_answer_was_lost_is_not_repeated_inside_the_window(api, router, clock):
    job_id, _, _, submit = await job_whose_submit_answer_was_lost(api, router)

    assert await attempts(api, job_id) == [("unknown", None)]
    worker = Worker(api.ctx)
    for _ in range(5):
        clock.advance(WINDOW_S / 6)
        await worker.run_once()
    assert submit.call_count == 1
    job = await api.ctx.store.jobs.get_job(job_id)
    assert (job.status, job.provider_job_id) == ("queued", None)
    [task] = await api.ctx.store.tasks.get_tasks(job_id)
    assert task.kind == "submit" and "unknown" in task.last_error


async def test_the_verified_callback_of_the_lost_submit_is_adopted_and_nothing_is_submitted_again(
    api, router, clock
):
    job_id, path, secret, submit = await job_whose_submit_answer_was_lost(api, router)
    body = ready_body("task-1")

    response = await api.callback(path, content=body, headers=signed(body, secret))

    assert response.status_code == 200, response.text
    job = await api.ctx.store.jobs.get_job(job_id)
    assert (job.provider_job_id, job.completion_source) == ("task-1", "callback")
    assert await attempts(api, job_id) == [("adopted", "task-1")]
    assert [t.kind for t in await api.ctx.store.tasks.get_tasks(job_id)] == ["fetch"]
    clock.advance(WINDOW_S * 2)
    await Worker(api.ctx).drain()
    job = await api.ctx.store.jobs.get_job(job_id)
    assert job.status == "succeeded"
    assert submit.call_count == 1
    document = (await api.client.get(f"/v1/jobs/{job_id}")).json()
    assert document["provider_job_id"] == "task-1"
    assert [a["outcome"] for a in document["attempts"]] == ["adopted"]


async def test_after_the_window_the_job_is_submitted_again_and_the_first_result_to_arrive_wins(
    api, router, clock
):
    job_id, path, secret, submit = await job_whose_submit_answer_was_lost(api, router)
    clock.advance(WINDOW_S + 1)
    await Worker(api.ctx).run_once()
    assert submit.call_count == 2
    assert await attempts(api, job_id) == [("unknown", None), ("accepted", "task-2")]

    late = ready_body("task-1")  # the first task turns up after all, and finishes first
    response = await api.callback(path, content=late, headers=signed(late, secret))

    assert response.status_code == 200, response.text
    assert await attempts(api, job_id) == [("adopted", "task-1"), ("accepted", "task-2")]
    job = await api.ctx.store.jobs.get_job(job_id)
    assert job.provider_job_id == "task-2" and job.output_urls == (IMAGE_URL,)
    second = json.dumps({**json.loads(ready_body("task-2")), "result": {"sample": IMAGE_URL + "?2"}}).encode()
    response = await api.callback(path, content=second, headers=signed(second, secret))
    assert response.status_code == 200  # recorded, not refused as forged
    assert (await api.ctx.store.jobs.get_job(job_id)).output_urls == (IMAGE_URL,)  # one result, never two


async def test_a_second_tasks_progress_is_recorded_as_an_orphan_and_changes_nothing(api, router, clock):
    job_id, path, secret, _ = await job_whose_submit_answer_was_lost(api, router)
    clock.advance(WINDOW_S + 1)
    await Worker(api.ctx).run_once()
    before = await api.ctx.store.jobs.get_job(job_id)

    body = pending_body("task-1")
    response = await api.callback(path, content=body, headers=signed(body, secret))

    assert response.status_code == 200
    assert await attempts(api, job_id) == [("orphaned", "task-1"), ("accepted", "task-2")]
    after = await api.ctx.store.jobs.get_job(job_id)
    assert after.state == before.state


async def test_an_unsigned_hint_naming_the_lost_task_is_adopted_once_a_poll_confirms_it(api, router, clock):
    job_id, path, _, submit = await job_whose_submit_answer_was_lost(api, router)
    status = router.get(f"{BASE}/v1/get_result", params={"id": "task-1"}).mock(return_value=httpx.Response(
        200, json={"id": "task-1", "status": "Ready", "result": {"sample": IMAGE_URL}}))

    response = await api.callback(path, content=ready_body("task-1"),
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert (await api.ctx.store.jobs.get_job(job_id)).provider_job_id is None  # a hint proves nothing
    await Worker(api.ctx).drain()

    assert status.call_count == 1
    assert submit.call_count == 1
    job = await api.ctx.store.jobs.get_job(job_id)
    assert (job.status, job.provider_job_id, job.completion_source) == ("succeeded", "task-1", "poll")
    assert await attempts(api, job_id) == [("adopted", "task-1")]


async def test_a_forged_hint_naming_an_unknown_task_is_refuted_and_never_polled_again(api, router, clock):
    job_id, path, _, submit = await job_whose_submit_answer_was_lost(api, router)
    status = router.get(f"{BASE}/v1/get_result", params={"id": "forged"}).mock(
        return_value=httpx.Response(200, json={"id": "forged", "status": "Task not found"}))

    response = await api.callback(path, content=ready_body("forged"),
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    await Worker(api.ctx).drain()
    response = await api.callback(path, content=pending_body("forged"),
                                      headers={"Content-Type": "application/json"})
    await Worker(api.ctx).drain()

    assert status.call_count == 1
    job = await api.ctx.store.jobs.get_job(job_id)
    assert (job.status, job.provider_job_id) == ("queued", None)
    assert await attempts(api, job_id) == [("unknown", None)]
    assert submit.call_count == 1


async def test_a_callback_about_another_task_is_still_refused_when_no_submit_is_unaccounted_for(
    api, router
):
    router.post(SUBMIT).mock(return_value=accepted("task-1"))
    response = await api.client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox", "width": 512, "height": 512}})
    job_id = response.json()["id"]
    await Worker(api.ctx).run_once()
    record = await api.ctx.store.jobs.get_job(job_id)
    path = f"/v1/callbacks/bfl/{api.ctx.tokens.issue('bfl', job_id)}"
    body = ready_body("task-other")

    response = await api.callback(path, content=body, headers=signed(body, record.webhook_secret))

    assert_error_shape(response, 403, "wrong_job")
    assert await attempts(api, job_id) == [("accepted", "task-1")]


async def test_a_2xx_submit_answer_that_names_no_task_counts_as_unknown(api, router):
    submit = router.post(SUBMIT).mock(return_value=httpx.Response(200, text="<html>ok</html>"))
    response = await api.client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox", "width": 512, "height": 512}})
    job_id = response.json()["id"]
    worker = Worker(api.ctx)
    await worker.run_once()
    await worker.run_once()

    assert submit.call_count == 1
    job = await api.ctx.store.jobs.get_job(job_id)
    assert job.status == "queued"
    assert [outcome for outcome, _ in await attempts(api, job_id)] == ["unknown"]


async def test_a_connection_that_never_opened_is_retried_without_waiting(api, router, clock):
    submit = router.post(SUBMIT).mock(side_effect=[httpx.ConnectError("refused"), accepted("task-1")])
    response = await api.client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox", "width": 512, "height": 512}})
    job_id = response.json()["id"]
    worker = Worker(api.ctx)
    await worker.run_once()
    clock.advance(5)
    await worker.run_once()

    assert submit.call_count == 2
    assert await attempts(api, job_id) == [("unavailable", None), ("accepted", "task-1")]


async def test_an_idempotent_provider_is_resent_at_once_over_the_same_attempt(make_settings, clock, router):
    import random

    from service.app import open_context
    from service.ids import new_job_id, new_webhook_secret
    from storage.records import NewJob

    base = "https://api.apiframe.ai"
    generate = router.post(f"{base}/v2/images/generate").mock(side_effect=[
        httpx.ReadTimeout("answer lost"), httpx.Response(202, json={"jobId": "af-1", "status": "QUEUED"})])
    settings = make_settings(APIFRAME_API_KEY="af-key", APIFRAME_BASE_URL=base)
    async with open_context(settings, transport=httpx.MockTransport(router.async_handler), clock=clock,
                            rand=random.Random(3)) as ctx:
        job, _ = await ctx.store.jobs.create_job(NewJob(
            id=new_job_id(clock()), provider="apiframe", model="flux-1.1-pro",
            input={"prompt": "fox", "aspect_ratio": "1:1"}, metadata={},
            webhook_secret=new_webhook_secret(), idempotency_key=None, request_hash=None,
            deadline_at=clock() + 900_000), now=clock())
        worker = Worker(ctx)
        await worker.run_once()
        clock.advance(5)  # past the retry backoff, far inside the adopt window
        await worker.run_once()

        assert generate.call_count == 2
        keys = {call.request.headers["Idempotency-Key"] for call in generate.calls}
        assert keys == {job.id}
        rows = (await ctx.store.jobs.get_attempts([job.id]))[job.id]
        assert [(a.outcome, a.provider_job_id) for a in rows] == [("accepted", "af-1")]
        assert (await ctx.store.jobs.get_job(job.id)).provider_job_id == "af-1"

