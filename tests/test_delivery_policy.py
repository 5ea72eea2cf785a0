"""Where and how notifications are delivered: the SSRF guard, redirects, 410, 429, slow and
failing receivers. Real receivers on loopback; fluxhook and the simulator under uvicorn."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from service.loopback import serve
from service.simulator import SimulatorConfig
from tests.conftest import assert_error_shape
from tests.e2e import running_stack, submit_jobs, wait_terminal
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

CONFIG = SimulatorConfig(latency_s=(0.1, 0.3), seed=17)
LOOPBACK = {"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback", "FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS": "2"}
JOB = {"model": "flux-pro-1.1", "input": {"prompt": "policy", "width": 256, "height": 256}}
AN_HOUR_AGO = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.05)


async def subscribe(client: httpx.AsyncClient, url: str, events: list[str] | None = None) -> dict[str, Any]:
    response = await client.post("/v1/subscriptions", json={"url": url, "events": events or []})
    assert response.status_code == 201, response.text
    return response.json()


async def deliveries(client: httpx.AsyncClient, sub_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/subscriptions/{sub_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def settled(client: httpx.AsyncClient, sub_id: str, *, at_least: int = 1) -> list[dict[str, Any]]:
    """The subscription's deliveries once none is pending any more."""
    rows: list[dict[str, Any]] = []

    async def done() -> bool:
        nonlocal rows
        rows = await deliveries(client, sub_id)
        return len(rows) >= at_least and all(r["status"] != "pending" for r in rows)

    await wait_until(done)
    return rows


async def recorded_events(client: httpx.AsyncClient, count: int, **params: str) -> list[dict[str, Any]]:
    """The first `count` events of the log (GET /v1/events from the start), as sent."""
    got: list[dict[str, Any]] = []
    async with client.stream("GET", "/v1/events", params={"last_event_id": "0", **params}) as response:
        assert response.status_code == 200
        with anyio.fail_after(10):
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line.removeprefix("data: ")))
                    if len(got) == count:
                        break
    return got


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Scripted:
    """Answers the n-th request for one webhook-id with `script[n]` (the last entry repeats)."""

    script: list[tuple[int, dict[str, str]]]
    webhook_ids: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        await request.body()
        webhook_id = request.headers["webhook-id"]
        n = self.webhook_ids.count(webhook_id)
        self.webhook_ids.append(webhook_id)
        status, headers = self.script[min(n, len(self.script) - 1)]
        return Response(f"answer {n + 1}", status_code=status, headers=headers)


PRIVATE_URLS = {  # label: (URL, why it is refused)
    "loopback": ("http://127.0.0.1:8080/hook", "loopback"),
    "private": ("http://10.0.0.5/hook", "private"),
    "loopback-v6": ("http://[::1]:8080/hook", "loopback"),
    "cloud-metadata": ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
}


async def test_private_loopback_and_metadata_destinations_are_422_naming_the_field(tmp_path):
    async with running_stack(tmp_path, CONFIG) as stack:
        client = stack.client
        for label, (url, reason) in PRIVATE_URLS.items():
            response = await client.post("/v1/subscriptions", json={"url": url})
            error = assert_error_shape(response, 422, "validation_failed")
            assert [(d["field"], d["message"]) for d in error["details"]] == [("url", reason)], label
            response = await client.post("/v1/jobs", json={**JOB, "webhook_url": url})
            error = assert_error_shape(response, 422, "validation_failed")
            assert [(d["field"], d["message"]) for d in error["details"]] == [("webhook_url", reason)], label
        assert (await client.get("/v1/subscriptions")).json()["data"] == []
        assert (await client.get("/v1/jobs")).json()["data"] == []


async def test_allowing_loopback_admits_loopback_but_nothing_else_private(tmp_path):
    receiver = Receiver(fetch_outputs=False)
    env = {"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback"}
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **env) as stack:
        client = stack.client
        port = httpx.URL(url).port
        v4, v6 = f"http://127.0.0.1:{port}/hook", f"http://[::1]:{port}/hook"
        sub = await subscribe(client, v4, ["job.submitted"])
        assert (await subscribe(client, v6, ["job.cancelled"]))["url"] == v6
        job = await client.post(
            "/v1/jobs", json={**JOB, "webhook_url": v4, "webhook_events": ["job.submitted"]}
        )
        assert job.status_code == 202 and job.json()["webhook_url"] == v4
        for label in ("private", "cloud-metadata"):
            response = await client.post("/v1/subscriptions", json={"url": PRIVATE_URLS[label][0]})
            assert assert_error_shape(response, 422)["details"][0]["field"] == "url"
        # Allowed when connecting too, not only when the URL is checked.
        await wait_until(lambda: _received(receiver, 2))
        [row] = await settled(client, sub["id"])

    assert row["status"] == "delivered"
    assert sorted(r.payload["type"] for r in receiver.received) == ["job.submitted", "job.submitted"]


async def test_a_name_resolving_to_loopback_is_accepted_but_refused_on_every_connect(tmp_path):
    receiver = Receiver(fetch_outputs=False)
    env = {"FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,0.2,0.2"}  # loopback is NOT allowed here
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **env) as stack:
        port = httpx.URL(url).port
        sub = await subscribe(stack.client, f"http://localhost:{port}/hook")  # a name, not an IP
        assert sub["status"] == "enabled"
        ids = await submit_jobs(stack.client, 1)
        await wait_terminal(stack.client, ids, timeout=20)
        rows = await settled(stack.client, sub["id"], at_least=2)

    attempts = [a for row in rows for a in row["attempts"]]
    assert {row["status"] for row in rows} == {"failed"}
    assert all(len(row["attempts"]) == 3 for row in rows)  # retried, and refused each time
    for attempt in attempts:
        assert attempt["status_code"] is None
        assert attempt["error"].startswith("destination refused") and "loopback" in attempt["error"]
    assert receiver.received == [] and not receiver.attempts  # not one request reached it


async def test_redirects_are_not_followed_and_count_as_failures(tmp_path):
    target = Receiver(fetch_outputs=False)
    redirected: list[int] = []

    async def redirect(request: Request) -> Response:
        redirected.append(request.path_params["code"])
        return RedirectResponse(f"{target_url}/hook", status_code=int(request.path_params["code"]))

    redirector = Starlette(routes=[Route("/{code:int}", redirect, methods=["POST"])])
    env = {**LOOPBACK, "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,0.2"}
    async with (
        serve(target.app()) as target_url,
        serve(redirector) as redirector_url,
        running_stack(tmp_path, CONFIG, **env) as stack,
    ):
        subs = {
            code: await subscribe(stack.client, f"{redirector_url}/{code}", ["job.submitted"])
            for code in (302, 307)
        }
        ids = await submit_jobs(stack.client, 1)
        await wait_terminal(stack.client, ids, timeout=20)
        logs = {code: await settled(stack.client, sub["id"]) for code, sub in subs.items()}

    assert sorted(redirected) == [302, 302, 307, 307]  # two tries each, both refused
    assert target.received == []  # nobody followed the Location header
    for code, [row] in logs.items():
        assert row["status"] == "failed"
        assert [a["status_code"] for a in row["attempts"]] == [code, code]
        assert all("redirects are not followed" in a["error"] for a in row["attempts"])


async def test_410_disables_the_subscription_cancels_its_pending_deliveries_and_records_an_event(tmp_path):
    gone = Receiver(fail_first=10**9, failure=503, fetch_outputs=False)
    observer = Receiver(fetch_outputs=False)
    env = {**LOOPBACK, "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,60"}  # after one 503, a long wait
    async with (
        serve(gone.app()) as gone_url,
        serve(observer.app()) as observer_url,
        running_stack(tmp_path, CONFIG, **env) as stack,
    ):
        client = stack.client
        sub = await subscribe(client, f"{gone_url}/hook")
        watcher = await subscribe(client, f"{observer_url}/hook", ["subscription.disabled"])
        ids = await submit_jobs(client, 1)
        await wait_terminal(client, ids, timeout=20)

        async def all_waiting_for_a_retry() -> bool:
            rows = await deliveries(client, sub["id"])
            return len(rows) >= 2 and all(r["status"] == "pending" and r["attempt_count"] == 1 for r in rows)

        await wait_until(all_waiting_for_a_retry)
        gone.failure = 410
        first, *others = await deliveries(client, sub["id"])
        assert (await client.post(f"/v1/deliveries/{first['id']}/redeliver")).status_code == 202

        async def disabled() -> bool:
            return (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["status"] == "disabled"

        await wait_until(disabled)
        state = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
        rows = {r["id"]: r for r in await settled(client, sub["id"])}
        [event] = await recorded_events(client, 1, type="subscription.disabled")
        await wait_until(lambda: _received(observer, 1))
        # Later events are not even queued for it.
        more = await submit_jobs(client, 1)
        await wait_terminal(client, more, timeout=20)
        after = await deliveries(client, sub["id"])

    assert "410" in state["disabled_reason"]
    assert rows[first["id"]]["status"] == "failed" and rows[first["id"]]["last_status"] == 410
    for other in others:
        assert rows[other["id"]]["status"] == "cancelled"
        assert rows[other["id"]]["last_error"] == "subscription disabled"
        assert rows[other["id"]]["attempt_count"] == 1  # not tried again
    assert len(gone.received) == len(rows) + 1  # each once, plus the one redelivery that got 410
    assert event["type"] == "subscription.disabled"
    assert event["data"] == {
        "subscription_id": sub["id"],
        "url": sub["url"],
        "reason": state["disabled_reason"],
    }
    [told] = observer.received
    assert told.payload == event and watcher["status"] == "enabled"
    assert {r["id"] for r in after} == set(rows)


async def _received(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) >= n


async def test_429_with_retry_after_is_not_retried_sooner_than_asked(tmp_path):
    receiver = Scripted([(429, {"Retry-After": "2"}), (204, {})])
    env = {**LOOPBACK, "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,0.1,0.1"}  # the schedule alone: 0.1 s
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **env) as stack:
        sub = await subscribe(stack.client, f"{url}/hook", ["job.submitted"])
        ids = await submit_jobs(stack.client, 1)
        await wait_terminal(stack.client, ids, timeout=20)
        [row] = await settled(stack.client, sub["id"])

    assert row["status"] == "delivered"
    throttled, accepted = row["attempts"]
    assert (throttled["status_code"], throttled["response"], accepted["status_code"]) == (
        429,
        "answer 1",
        204,
    )
    first_at = parse_time(throttled["at"])
    assert parse_time(throttled["next_attempt_at"]) - first_at >= timedelta(seconds=2)
    assert parse_time(accepted["at"]) >= parse_time(throttled["next_attempt_at"])


async def test_a_subscription_failing_longer_than_the_limit_is_disabled_with_an_event(tmp_path):
    receiver = Receiver(fail_first=10**9, failure=503, fetch_outputs=False)
    env = {
        **LOOPBACK,
        "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,0.4,0.4,0.4,0.4,0.4,0.4,0.4",
        "FLUXHOOK_WEBHOOK_DISABLE_AFTER_SECONDS": "1",
    }
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **env) as stack:
        client = stack.client
        sub = await subscribe(client, f"{url}/hook")
        ids = await submit_jobs(client, 1)

        async def disabled() -> bool:
            return (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["status"] == "disabled"

        await wait_until(disabled)
        await wait_terminal(client, ids, timeout=20)
        state = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
        rows = await settled(client, sub["id"])
        [event] = await recorded_events(client, 1, type="subscription.disabled")

    assert state["disabled_reason"] == f"failing since {state['failing_since']}"
    failing_since = parse_time(state["failing_since"])
    attempts = sorted(parse_time(a["at"]) for r in rows for a in r["attempts"])
    assert attempts[0] == failing_since  # the clock started at the first failure
    # Not disabled at the first failures, only once they had gone on for the whole second.
    assert len(attempts) > len(rows)
    assert parse_time(state["updated_at"]) - failing_since >= timedelta(seconds=1)
    assert {r["status"] for r in rows} <= {"failed", "cancelled"}
    assert all(a["status_code"] == 503 for r in rows for a in r["attempts"])
    assert event["data"] == {
        "subscription_id": sub["id"],
        "url": sub["url"],
        "reason": state["disabled_reason"],
    }


@dataclass
class Hanging:
    """Takes each request and never answers: it waits until the sender hangs up (or a minute).
    `log` (shared with a fast receiver) says in which order things happened."""

    log: list[tuple[str, str]]
    down: bool = True  # while down, it answers 500 at once

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        await request.body()
        webhook_id = request.headers["webhook-id"]
        if self.down:
            return Response(status_code=500)
        self.log.append(("slow started", webhook_id))
        with anyio.move_on_after(60):
            while (await request.receive())["type"] != "http.disconnect":
                pass
        self.log.append(("slow abandoned", webhook_id))
        return Response(status_code=204)


@dataclass
class Fast:
    log: list[tuple[str, str]]
    down: bool = True

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        await request.body()
        if self.down:
            return Response(status_code=500)
        self.log.append(("fast", request.headers["webhook-id"]))
        return Response(status_code=204)


async def test_a_receiver_hanging_past_the_timeout_does_not_hold_up_a_fast_one(tmp_path):
    log: list[tuple[str, str]] = []
    slow, fast = Hanging(log), Fast(log)
    env = {
        **LOOPBACK,
        "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0",
        "FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS": "3",
        # Fewer sending slots than the default 32 (per destination: the default 4), so a backlog
        # of a few dozen deliveries is enough to show the slow one's cannot crowd out the rest.
        "FLUXHOOK_WEBHOOK_CONCURRENCY": "8",
    }
    async with (
        serve(slow.app()) as slow_url,
        serve(fast.app()) as fast_url,
        running_stack(tmp_path, CONFIG, **env) as stack,
    ):
        client = stack.client
        slow_sub = await subscribe(client, f"{slow_url}/hook")
        fast_sub = await subscribe(client, f"{fast_url}/hook")
        # Both receivers are down while the jobs run, so every delivery fails once; recovering
        # them then makes the whole backlog due at the same moment, the slow one's first.
        ids = await submit_jobs(client, 8)
        await wait_terminal(client, ids, timeout=20)
        backlog = await settled(client, slow_sub["id"], at_least=3 * len(ids))
        await settled(client, fast_sub["id"], at_least=len(backlog))
        event_ids = {row["event_id"] for row in backlog}
        slow.down = fast.down = False
        for sub in (slow_sub, fast_sub):
            recovered = await client.post(
                f"/v1/subscriptions/{sub['id']}/recover", params={"since": AN_HOUR_AGO}
            )
            assert recovered.json() == {"recovered": len(backlog)}

        async def fast_has_everything() -> bool:
            return {i for kind, i in log if kind == "fast"} == event_ids

        await wait_until(fast_has_everything, timeout=15)
        when_fast_finished = list(log)

        async def slow_timed_out() -> bool:
            rows = await deliveries(client, slow_sub["id"])
            return any(len(r["attempts"]) == 2 for r in rows)

        await wait_until(slow_timed_out, timeout=15)
        slow_log = await deliveries(client, slow_sub["id"])

    # The fast receiver got every event while the slow one was still holding requests open,
    # and before the sender gave up on any of them.
    assert any(kind == "slow started" for kind, _ in when_fast_finished)
    assert not any(kind == "slow abandoned" for kind, _ in when_fast_finished)
    assert len([kind for kind, _ in when_fast_finished if kind == "fast"]) == len(event_ids)
    timed_out = [r["attempts"][1] for r in slow_log if len(r["attempts"]) == 2]
    assert timed_out and all(a["error"] == "timed out after 3s" for a in timed_out)
    assert all(a["status_code"] is None for a in timed_out)


@dataclass
class Trickle:
    """Answers 503 at once, then sends its body a byte at a time, each well inside the sender's
    timeout, for far longer than the timeout in all; notes whether the sender hung up on it."""

    log: list[str] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send(
            {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]}
        )
        async with anyio.create_task_group() as group:

            async def notice_hang_up() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.log.append("sender hung up")
                group.cancel_scope.cancel()

            group.start_soon(notice_hang_up)
            for _ in range(60):
                await send({"type": "http.response.body", "body": b".", "more_body": True})
                await anyio.sleep(0.25)
            self.log.append("sent it all")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()


async def test_a_receiver_trickling_its_answer_is_cut_off_at_the_attempt_timeout(tmp_path):
    trickle = Trickle()
    env = {**LOOPBACK, "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0", "FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS": "1"}
    async with (
        serve(Starlette(routes=[Route("/hook", trickle, methods=["POST"])])) as url,
        running_stack(tmp_path, CONFIG, **env) as stack,
    ):
        sub = await subscribe(stack.client, f"{url}/hook", ["job.submitted"])
        await submit_jobs(stack.client, 1)
        [row] = await settled(stack.client, sub["id"])

        async def hung_up() -> bool:
            return bool(trickle.log)

        await wait_until(hung_up)

    # FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS bounds the whole attempt, not each read: the sender gave
    # up while the receiver was still sending, and logged what had come by then.
    assert trickle.log == ["sender hung up"]
    [attempt] = row["attempts"]
    assert row["status"] == "failed" and attempt["status_code"] == 503
    assert 0 < len(attempt["response"]) < 60 and set(attempt["response"]) == {"."}
