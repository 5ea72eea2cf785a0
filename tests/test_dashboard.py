"""The dashboard without a browser: sessions and the login, CSRF on its POSTs, its pages and
fragments, the actions (the API's own), thumbnails made once, the timeline and the health strip.
The browser test is tests/test_dashboard_browser.py."""

from __future__ import annotations

import io
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from service.context import WorkContext
from service.dashboard import health, timeline
from service.dashboard_sessions import SESSION_COOKIE, DashboardSessions
from service.jobs import Progressed, Source
from service.settings import Settings
from service.sign_in_limits import FAILURES_PER_WINDOW
from storage.records import (
    AttemptRecord,
    AttemptResult,
    CallbackRecord,
    DeliveryAttemptRecord,
    DeliveryRecord,
    EventRecord,
    OutputRecord,
    PollRecord,
    SubscriptionRecord,
    TaskRecord,
)
from tests.conftest import FakeClock, assert_error_shape
from tests.test_retention import callback, new_job, succeeded_job

pytestmark = pytest.mark.anyio

API_KEY = "dashboard-test-key-0123456789"


class Dash:
    def __init__(self, client: httpx.AsyncClient, ctx: WorkContext) -> None:
        self.client = client
        self.ctx = ctx

    async def csrf(self, path: str = "/dashboard/") -> str:
        page = await self.client.get(path)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf" value="([^"]+)"', page.text) or re.search(
            r'data-csrf="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)


async def open_dash(
    make_settings: Callable[..., Settings], clock: FakeClock, **env: str
) -> AsyncIterator[Dash]:
    from service.app import create_app

    app = create_app(make_settings(**env), clock=clock, rand=random.Random(7), run_workers=False)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state),
                                     base_url="https://hooks.example.com") as client:
            yield Dash(client, app.state.ctx)


@pytest.fixture
async def dash(make_settings: Callable[..., Settings], clock: FakeClock) -> AsyncIterator[Dash]:
    """The dashboard with no API key: open, as the API is."""
    async for d in open_dash(make_settings, clock):
        yield d


@pytest.fixture
async def keyed(make_settings: Callable[..., Settings], clock: FakeClock) -> AsyncIterator[Dash]:
    """The dashboard behind FLUXHOOK_API_KEY."""
    async for d in open_dash(make_settings, clock, FLUXHOOK_API_KEY=API_KEY):
        yield d


def png(width: int = 600, height: int = 400, color: str = "teal") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


async def add_subscription(
    ctx: WorkContext, url: str = "https://receiver.example.com/hook"
) -> SubscriptionRecord:
    now = ctx.clock()
    return await ctx.store.subscriptions.create_subscription(SubscriptionRecord(
        id=f"sub_{now}", url=url, events=(), description=None, secret="whsec_" + "A" * 32,
        previous_secret=None, previous_secret_until=None, status="enabled", disabled_reason=None,
        failing_since=None, created_at=now, updated_at=now))


async def fail_deliveries(ctx: WorkContext) -> list[str]:
    """Attempt every due delivery once: the receiver answers 503 and nothing is retried."""
    ids = []
    for delivery in await ctx.store.deliveries.claim_due_deliveries(
            now=ctx.clock(), limit=100, lease_ms=60_000, busy={}, per_destination=100):
        result = AttemptResult(False, ctx.clock(), 12, 503, "busy", "HTTP 503", None)
        await ctx.store.deliveries.record_delivery_attempt(delivery, result, now=ctx.clock(),
                                                           disable_after_ms=10**9)
        ids.append(delivery.id)
    return ids


# Sessions, the login and CSRF --------------------------------------------------------------------


async def test_an_open_dashboard_serves_its_page_and_sets_a_strict_http_only_secure_cookie(dash):
    await succeeded_job(dash.ctx, png())
    page = await dash.client.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie  # https public URL
    assert "Path=/dashboard" in cookie
    assert "default-src 'none'" in page.headers["content-security-policy"]


async def test_the_cookie_is_not_secure_when_the_public_url_is_plain_http(make_settings, clock):
    async for d in open_dash(make_settings, clock, FLUXHOOK_PUBLIC_URL="http://127.0.0.1:8000"):
        cookie = (await d.client.get("/dashboard/")).headers["set-cookie"]
        assert "HttpOnly" in cookie and "Secure" not in cookie


async def test_dashboard_without_a_trailing_slash_redirects_to_it(dash):
    response = await dash.client.get("/dashboard")
    assert response.status_code in (307, 308)
    assert response.headers["location"].endswith("/dashboard/")


async def test_with_an_api_key_a_page_sends_the_browser_to_the_login_form(keyed):
    response = await keyed.client.get("/dashboard/subscriptions")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login?next=/dashboard/subscriptions"
    form = await keyed.client.get(response.headers["location"])
    assert form.status_code == 200 and 'type="password" name="key"' in form.text


@pytest.mark.parametrize("path", ["/dashboard/health", "/dashboard/events", "/dashboard/jobs/job_x/live",
                                  "/dashboard/jobs/job_x/row", "/dashboard/jobs/job_x/outputs/0/thumb"])
async def test_with_an_api_key_data_routes_answer_401_without_a_session(keyed, path):
    assert_error_shape(await keyed.client.get(path), 401, "unauthorized")


async def test_a_bearer_api_key_is_not_a_dashboard_session(keyed):
    response = await keyed.client.get("/dashboard/health", headers={"Authorization": f"Bearer {API_KEY}"})
    assert_error_shape(response, 401, "unauthorized")


async def test_a_wrong_key_is_refused_and_signs_nobody_in(keyed):
    response = await keyed.client.post("/dashboard/login", data={"key": "not-the-key", "next": "/dashboard/"})
    assert response.status_code == 401
    assert "That is not the API key." in response.text
    assert "not-the-key" not in response.text
    assert (await keyed.client.get("/dashboard/")).status_code == 303  # still signed out


async def test_ten_wrong_keys_in_a_minute_lock_the_login_out_for_the_rest_of_it(keyed, clock):
    for _ in range(FAILURES_PER_WINDOW):
        wrong = await keyed.client.post("/dashboard/login", data={"key": "guess", "next": "/dashboard/"})
        assert wrong.status_code == 401
    clock.advance(20)
    refused = await keyed.client.post("/dashboard/login", data={"key": API_KEY, "next": "/dashboard/"})
    assert refused.status_code == 429  # the right key too: a guess would not be told it was right
    assert refused.headers["retry-after"] == "40"
    assert "Too many wrong keys: try again in 40 s." in refused.text
    assert (await keyed.client.get("/dashboard/")).status_code == 303  # signed out still

    clock.advance(40)
    signed_in = await keyed.client.post("/dashboard/login", data={"key": API_KEY, "next": "/dashboard/"})
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard/"


async def test_the_right_key_signs_in_with_a_cookie_and_the_key_is_in_no_url_or_cookie(keyed):
    response = await keyed.client.post("/dashboard/login",
                                       data={"key": API_KEY, "next": "/dashboard/subscriptions"})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/subscriptions"
    assert API_KEY not in response.headers["location"] and API_KEY not in response.headers["set-cookie"]
    page = await keyed.client.get("/dashboard/subscriptions")
    assert page.status_code == 200 and "Subscriptions" in page.text
    assert API_KEY not in page.text
    assert (await keyed.client.get("/dashboard/health")).status_code == 200


async def test_login_never_redirects_off_the_dashboard(keyed):
    for target in ("https://evil.example.com/", "//evil.example.com/x", "/v1/jobs", "/dashboard//evil.com",
                   "/dashboard/\r\nSet-Cookie: x=1", "/dashboard/\x00", "/dashboard/é"):
        response = await keyed.client.post("/dashboard/login", data={"key": API_KEY, "next": target})
        assert response.headers["location"] == "/dashboard/", target


async def test_a_cookie_signed_under_another_api_key_is_no_session(keyed):
    settings = keyed.ctx.settings
    _, forged = DashboardSessions(settings.secret_key, "some-other-key").start(signed_in=True)
    keyed.client.cookies.set(SESSION_COOKIE, forged, domain="hooks.example.com", path="/dashboard")
    assert (await keyed.client.get("/dashboard/")).status_code == 303


async def test_signing_out_ends_the_session(keyed):
    await keyed.client.post("/dashboard/login", data={"key": API_KEY, "next": "/dashboard/"})
    token = await keyed.csrf()
    response = await keyed.client.post("/dashboard/logout", data={"csrf": token})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/login"
    assert (await keyed.client.get("/dashboard/")).status_code == 303


async def test_a_post_without_the_sessions_csrf_token_changes_nothing(dash):
    sub = await add_subscription(dash.ctx)
    await dash.csrf()  # a session
    other = DashboardSessions(dash.ctx.settings.secret_key, None)
    foreign = other.csrf_token(other.start(signed_in=True)[0])
    for data in ({}, {"csrf": "garbage"}, {"csrf": foreign}):
        response = await dash.client.post(f"/dashboard/subscriptions/{sub.id}/status",
                                          data={"status": "disabled", **data})
        assert_error_shape(response, 403, "csrf_failed")
    stored = await dash.ctx.store.subscriptions.get_subscription(sub.id)
    assert stored is not None and stored.status == "enabled"


async def test_a_form_larger_than_the_cap_is_refused_before_it_is_read_whole(keyed):
    response = await keyed.client.post("/dashboard/login", data={"key": "x" * 20_000})
    assert_error_shape(response, 413, "payload_too_large")


async def test_a_post_that_is_not_a_form_is_refused(keyed):
    response = await keyed.client.post("/dashboard/login", files={"key": ("k.txt", b"x")})
    assert_error_shape(response, 400)


async def test_a_post_without_any_session_is_refused(dash):
    sub = await add_subscription(dash.ctx)
    response = await dash.client.post(f"/dashboard/subscriptions/{sub.id}/status",
                                      data={"status": "disabled"})
    assert_error_shape(response, 401, "unauthorized")


# The actions ---------------------------------------------------------------------------------------


async def test_disable_and_enable_change_the_subscription(dash):
    sub = await add_subscription(dash.ctx)
    token = await dash.csrf()
    for status in ("disabled", "enabled"):
        response = await dash.client.post(f"/dashboard/subscriptions/{sub.id}/status",
                                          data={"csrf": token, "status": status,
                                                "next": "/dashboard/subscriptions"})
        assert response.status_code == 303 and response.headers["location"] == "/dashboard/subscriptions"
        stored = await dash.ctx.store.subscriptions.get_subscription(sub.id)
        assert stored is not None and stored.status == status


async def test_rotating_a_secret_shows_the_new_one_once_and_keeps_the_old_one_signing(dash):
    sub = await add_subscription(dash.ctx)
    response = await dash.client.post(f"/dashboard/subscriptions/{sub.id}/rotate-secret",
                                      data={"csrf": await dash.csrf()})
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    stored = await dash.ctx.store.subscriptions.get_subscription(sub.id)
    assert stored is not None and stored.secret != sub.secret and stored.previous_secret == sub.secret
    assert stored.secret in response.text
    page = await dash.client.get("/dashboard/subscriptions")
    assert stored.secret not in page.text and sub.secret not in page.text


async def test_redeliver_from_the_job_page_sends_a_failed_delivery_again(dash):
    await add_subscription(dash.ctx)
    job = await succeeded_job(dash.ctx, png())
    [*_, failed_id] = await fail_deliveries(dash.ctx)
    response = await dash.client.post(f"/dashboard/deliveries/{failed_id}/redeliver",
                                      data={"csrf": await dash.csrf(), "next": f"/dashboard/jobs/{job.id}"})
    assert response.status_code == 303 and response.headers["location"] == f"/dashboard/jobs/{job.id}"
    rows = await dash.ctx.store.deliveries.list_deliveries(job_id=job.id)
    assert {d.status for d, _ in rows if d.id == failed_id} == {"pending"}


async def test_recover_resends_what_failed_in_the_window(dash):
    sub = await add_subscription(dash.ctx)
    await succeeded_job(dash.ctx, png())
    failed = await fail_deliveries(dash.ctx)
    assert failed
    response = await dash.client.post(f"/dashboard/subscriptions/{sub.id}/recover",
                                      data={"csrf": await dash.csrf(), "window": "1h"})
    assert response.status_code == 303
    rows = await dash.ctx.store.deliveries.list_deliveries(subscription_id=sub.id)
    assert {d.status for d, _ in rows} == {"pending"}


async def test_an_action_on_a_missing_subscription_is_the_apis_404(dash):
    response = await dash.client.post("/dashboard/subscriptions/sub_nope/status",
                                      data={"csrf": await dash.csrf(), "status": "disabled"})
    assert_error_shape(response, 404, "not_found")


# Pages and fragments ---------------------------------------------------------------------------------


async def test_the_list_is_newest_first_and_filters_by_status_and_provider(dash, clock):
    done = await succeeded_job(dash.ctx, png())
    clock.advance(1)
    queued = await new_job(dash.ctx)
    page = (await dash.client.get("/dashboard/")).text
    assert page.index(f'id="job-{queued.id}"') < page.index(f'id="job-{done.id}"')
    page = (await dash.client.get("/dashboard/", params={"status": "succeeded"})).text
    assert f'id="job-{done.id}"' in page and f'id="job-{queued.id}"' not in page
    page = (await dash.client.get("/dashboard/", params={"provider": "cometapi"})).text
    assert 'class="job-row"' not in page
    page = (await dash.client.get("/dashboard/", params={"provider": "bfl", "status": "queued"})).text
    assert f'id="job-{queued.id}"' in page and f'id="job-{done.id}"' not in page


async def test_a_row_fragment_is_204_when_the_job_is_outside_the_filter(dash):
    job = await new_job(dash.ctx)
    row = await dash.client.get(f"/dashboard/jobs/{job.id}/row")
    assert row.status_code == 200 and row.text.strip().startswith("<tr") and "queued" in row.text
    filtered = await dash.client.get(f"/dashboard/jobs/{job.id}/row", params={"status": "failed"})
    assert filtered.status_code == 204
    assert (await dash.client.get("/dashboard/jobs/job_nope/row")).status_code == 204


async def test_a_job_page_shows_its_input_metadata_thumbnail_and_timeline(dash, clock):
    await add_subscription(dash.ctx)
    job = await succeeded_job(dash.ctx, png(), png(color="orange"))
    await callback(dash.ctx, job, b'{"status": "Ready"}')
    await fail_deliveries(dash.ctx)
    page = await dash.client.get(f"/dashboard/jobs/{job.id}")
    assert page.status_code == 200
    text = page.text
    assert "a red fox" in text  # the input
    assert f"/dashboard/jobs/{job.id}/outputs/1/thumb" in text
    for kind in ("created", "event", "ready", "stored", "callback", "delivery"):
        assert f'data-kind="{kind}"' in text, kind
    assert "Callback from bfl: unsigned" in text
    assert "Delivery attempt 1: HTTP 503" in text and "12 ms" in text
    assert "Redeliver" in text


async def test_a_missing_job_page_is_a_404_page(dash):
    response = await dash.client.get("/dashboard/jobs/job_nope")
    assert response.status_code == 404 and "There is no job job_nope" in response.text


async def test_the_full_image_is_served_to_the_session(dash):
    job = await succeeded_job(dash.ctx, png())
    image = await dash.client.get(f"/dashboard/jobs/{job.id}/outputs/0")
    assert image.status_code == 200 and image.content == png()


# Thumbnails ----------------------------------------------------------------------------------------


async def test_a_thumbnail_is_made_once_kept_in_the_blob_store_and_served_without_the_full_image(dash):
    job = await succeeded_job(dash.ctx, png(1200, 600))
    first = await dash.client.get(f"/dashboard/jobs/{job.id}/outputs/0/thumb")
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(first.content)) as thumb:
        assert thumb.size == (320, 160)
    output = await dash.ctx.store.jobs.get_output(job.id, 0)
    assert output is not None and output.thumb_sha256 is not None and output.thumb_sha256 != output.sha256
    assert await dash.ctx.blobs.exists(output.thumb_sha256)
    # Served from the blob store from now on: the full image is not read (nor resized) again.
    assert await dash.ctx.blobs.remove(output.sha256, settled_s=0)
    again = await dash.client.get(f"/dashboard/jobs/{job.id}/outputs/0/thumb")
    assert again.status_code == 200 and again.content == first.content
    cached = await dash.client.get(f"/dashboard/jobs/{job.id}/outputs/0/thumb",
                                   headers={"If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304


async def test_an_output_that_is_not_an_image_has_no_thumbnail(dash):
    job = await succeeded_job(dash.ctx, b"this is not an image")
    response = await dash.client.get(f"/dashboard/jobs/{job.id}/outputs/0/thumb")
    assert_error_shape(response, 404, "no_thumbnail")


async def test_removed_outputs_have_no_thumbnail_and_their_thumbnails_are_queued_with_them(dash):
    job = await succeeded_job(dash.ctx, png())
    assert (await dash.client.get(f"/dashboard/jobs/{job.id}/outputs/0/thumb")).status_code == 200
    output = await dash.ctx.store.jobs.get_output(job.id, 0)
    assert output is not None and output.thumb_sha256
    await dash.ctx.store.retention.remove_job_outputs(job.id, now=dash.ctx.clock())
    assert_error_shape(await dash.client.get(f"/dashboard/jobs/{job.id}/outputs/0/thumb"), 404)
    names, _ = await dash.ctx.store.retention.unreferenced_blobs(after="", now=dash.ctx.clock(), limit=10)
    assert set(names) == {output.sha256, output.thumb_sha256}


async def test_a_thumbnail_recorded_after_its_outputs_were_removed_is_queued_for_removal(ctx):
    job = await succeeded_job(ctx, png())
    await ctx.store.retention.remove_job_outputs(job.id, now=ctx.clock())
    assert not await ctx.store.jobs.record_thumbnail(job.id, 0, "f" * 64, now=ctx.clock())
    names, _ = await ctx.store.retention.unreferenced_blobs(after="", now=ctx.clock(), limit=10)
    assert "f" * 64 in names


async def test_a_thumbnail_shared_by_a_kept_job_is_not_removed_with_another(ctx):
    image = png()
    kept, gone = await succeeded_job(ctx, image), await succeeded_job(ctx, image)
    for job in (kept, gone):
        assert await ctx.store.jobs.record_thumbnail(job.id, 0, "e" * 64, now=ctx.clock())
    await ctx.store.retention.remove_job_outputs(gone.id, now=ctx.clock())
    names, _ = await ctx.store.retention.unreferenced_blobs(after="", now=ctx.clock(), limit=10)
    assert names == []


# What the store records for the timeline -------------------------------------------------------------


async def test_each_answered_poll_is_recorded_with_the_status_it_left(ctx):
    job = await new_job(ctx)
    from service.jobs import Submitted

    await ctx.store.jobs.record_observation(job.id, Submitted("task-1"), now=ctx.clock())
    await ctx.store.jobs.record_observation(job.id, Progressed(Source.POLL, 0.5), now=ctx.clock() + 5,
                                            counted_poll=True)
    await ctx.store.jobs.record_observation(job.id, Progressed(Source.POLL, 0.5), now=ctx.clock() + 9,
                                            counted_poll=True)
    polls = await ctx.store.jobs.get_polls(job.id)
    assert polls == [PollRecord("bfl", "running", 0.5, ctx.clock() + 5),
                     PollRecord("bfl", "running", 0.5, ctx.clock() + 9)]


async def test_callbacks_are_read_back_with_their_verdicts_and_sizes(ctx):
    job = await new_job(ctx)
    await callback(ctx, job, b'{"id": "x"}')
    [received] = await ctx.store.jobs.get_callbacks(job.id)
    assert (received.provider, received.verdict, received.bytes) == ("bfl", "unsigned", 11)


async def test_the_list_filters_by_provider_in_the_store(ctx):
    job = await new_job(ctx)
    found = await ctx.store.jobs.list_jobs(status=None, provider="bfl", limit=5, before=None)
    assert [j.id for j in found] == [job.id]
    assert await ctx.store.jobs.list_jobs(status=None, provider="runcomfy", limit=5, before=None) == []


# The health strip -------------------------------------------------------------------------------------


async def test_the_health_strip_counts_due_work_failing_deliveries_and_disabled_subscriptions(ctx, clock):
    sub = await add_subscription(ctx)
    await new_job(ctx)  # its submit is due now
    clock.advance(30)
    await succeeded_job(ctx, png())  # made by hand: its submit task is left due too
    await fail_deliveries(ctx)  # every event of the job fails once, not retried: failed
    await ctx.store.subscriptions.update_subscription(sub.id, {"status": "disabled"}, now=ctx.clock())
    found = await health(ctx)
    assert found.due_tasks == {"submit": 2} and found.due_work == 2
    assert found.oldest_due_s == 30
    assert found.failed >= 1 and found.retrying == 0
    assert [s.id for s in found.disabled] == [sub.id]


async def test_the_health_fragment_renders_the_strip(dash):
    response = await dash.client.get("/dashboard/health")
    assert response.status_code == 200
    assert "Due work" in response.text and "Disabled subscriptions" in response.text


# The timeline, pure ---------------------------------------------------------------------------------


def test_the_timeline_puts_everything_in_time_order_and_the_work_still_due_last():
    from storage.records import JobRecord
    from storage.state import JobStatus
    from tests.conftest import START_MS as T

    job = JobRecord(
        id="job_1", provider="bfl", model="flux-pro-1.1", status=JobStatus.SUCCEEDED, input={}, metadata={},
        provider_job_id="t1", polling_url=None, webhook_secret=None, output_urls=("u",), error_code=None,
        error_message=None, completion_source="poll", progress=None, idempotency_key=None, request_hash=None,
        created_at=T, updated_at=T + 90, submitted_at=T + 10, ready_at=T + 50, completed_at=T + 70,
        deadline_at=T + 10**6, poll_count=1, callback_count=1)
    delivery = DeliveryRecord("dlv_1", "evt_1", "job.succeeded", "sub_1", "job_1", "https://r.example/h",
                              "failed", 2, None, 503, "HTTP 503", T + 71, None)
    entries = timeline(
        job,
        outputs=[OutputRecord("job_1", 0, "a" * 64, "image/png", 2048, "u", T + 60)],
        attempts=[AttemptRecord("cometapi", "failed_over", 503, "busy", None, T + 5),
                  AttemptRecord("bfl", "accepted", 200, None, "t1", T + 10)],
        callbacks=[CallbackRecord(1, "bfl", "refuted", "Ready", "t9", 40, T + 20)],
        polls=[PollRecord("bfl", "succeeded", None, T + 50)],
        events=[EventRecord(1, "evt_1", "job_1", 1, "job.succeeded",
                            b'{"data": {"completion_source": "poll"}}', T + 70)],
        deliveries=[(delivery, [DeliveryAttemptRecord(1, T + 72, 31, 503, "busy", None, T + 80),
                                DeliveryAttemptRecord(2, T + 81, 29, None, None, "ConnectError", None)])],
        tasks=[TaskRecord(9, "job_1", "poll", T + 10**5, 2, "timeout")],
    )
    assert [e.kind for e in entries] == ["created", "submit", "submit", "callback", "poll", "ready", "stored",
                                         "event", "delivery", "delivery", "delivery", "scheduled"]
    assert [e.at for e in entries[:-1]] == sorted(e.at for e in entries[:-1])
    assert entries[1].title == "Submit to cometapi: failed_over" and entries[1].tone == "warn"
    assert entries[3].title == "Callback from bfl: refuted" and entries[3].tone == "bad"
    assert entries[7].detail == "#1 · via poll"
    assert entries[9].title == "Delivery attempt 1: HTTP 503" and "31 ms" in entries[9].detail
    assert entries[10].title == "Delivery attempt 2: ConnectError" and entries[10].last_of_delivery
    assert "delivery failed" in entries[10].detail
    assert not any(e.last_of_delivery for e in entries[:10])
    assert entries[-1].title == "Next poll due" and "last error: timeout" in entries[-1].detail


HOSTILE = ["job_\x00x", "%00", "..%2F..%2Fetc", "a" * 5000, "é\u2028<b>", "99999999999999999999999", "-1",
           "0x10"]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
async def test_hostile_values_in_paths_and_queries_never_get_a_5xx(dash, value):
    from urllib.parse import quote

    segment = quote(value, safe="")
    token = await dash.csrf()
    for method, path, params in [
        ("GET", "/dashboard/", {"status": value, "provider": value, "before": value}),
        ("GET", f"/dashboard/jobs/{segment}", {}),
        ("GET", f"/dashboard/jobs/{segment}/row", {"status": value}),
        ("GET", f"/dashboard/jobs/{segment}/live", {}),
        ("GET", f"/dashboard/jobs/{segment}/outputs/{segment}", {}),
        ("GET", f"/dashboard/jobs/{segment}/outputs/{segment}/thumb", {}),
        ("GET", "/dashboard/login", {"next": value}),
        ("POST", f"/dashboard/deliveries/{segment}/redeliver", {}),
        ("POST", f"/dashboard/subscriptions/{segment}/recover", {}),
    ]:
        data = {"csrf": token, "next": value, "window": value} if method == "POST" else None
        response = await dash.client.request(method, path, params=params, data=data)
        assert response.status_code < 500, (method, path, response.text[:300])
