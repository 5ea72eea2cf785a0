"""The subscriptions API end to end: CRUD, the delivery log, redelivery and recovery."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.loopback import serve
from service.simulator import SimulatorConfig
from tests.conftest import assert_error_shape
from tests.e2e import running_stack, submit_jobs, wait_terminal
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

CONFIG = SimulatorConfig(latency_s=(0.1, 0.3), seed=11)
LOOPBACK = {"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback", "FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS": "2"}


@dataclass
class Scripted:
    """Answers the n-th request for one webhook-id with `script[n]` (the last entry repeats)."""

    script: list[tuple[int, str]]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        webhook_id = request.headers["webhook-id"]
        n = sum(1 for headers, _ in self.requests if headers["webhook-id"] == webhook_id)
        self.requests.append((dict(request.headers), body))
        status, text = self.script[min(n, len(self.script) - 1)]
        return Response(text, status_code=status, media_type="text/plain")


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.05)


async def deliveries(client: httpx.AsyncClient, sub_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/subscriptions/{sub_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def fields_named(error: dict[str, Any]) -> list[str]:
    return [d["field"] for d in error["details"]]


async def test_subscription_lifecycle_validates_every_field_and_never_shows_the_secret_again(tmp_path):
    async with running_stack(tmp_path, CONFIG, **LOOPBACK) as stack:
        client = stack.client
        created = await client.post(
            "/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/a", "events": ["job.succeeded"], "description": "ops"},
        )
        assert created.status_code == 201, created.text
        sub = created.json()
        assert sub["secret"].startswith("whsec_")
        assert 24 <= len(base64.b64decode(sub["secret"].removeprefix("whsec_"))) <= 64
        assert (sub["url"], sub["events"], sub["description"], sub["status"]) == (
            "http://127.0.0.1:9/a",
            ["job.succeeded"],
            "ops",
            "enabled",
        )
        other = (await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/b"})).json()
        assert other["events"] == [] and other["secret"] != sub["secret"]

        shown = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
        assert "secret" not in shown and shown == {k: v for k, v in sub.items() if k != "secret"}
        listed = (await client.get("/v1/subscriptions")).json()["data"]
        assert [s["id"] for s in listed] == [sub["id"], other["id"]]
        assert not any("secret" in key for s in listed for key in s)

        for body, field_name in (
            ({"events": ["job.succeeded"]}, "url"),
            ({"url": "http://127.0.0.1:9/a", "colour": "red"}, "colour"),
            ({"url": "http://127.0.0.1:9/a", "events": ["job.exploded"]}, "events"),
            ({"url": "http://127.0.0.1:9/a", "events": "job.succeeded"}, "events"),
            ({"url": "ftp://127.0.0.1/a"}, "url"),
            ({"url": "http://user:pw@127.0.0.1/a"}, "url"),
            ({"url": "http://127.0.0.1:9/a", "description": "x" * 501}, "description"),
        ):
            response = await client.post("/v1/subscriptions", json=body)
            assert fields_named(assert_error_shape(response, 422, "validation_failed")) == [field_name]

        async def patch(body: Any) -> httpx.Response:
            return await client.patch(f"/v1/subscriptions/{sub['id']}", json=body)

        changed = await patch({"url": "http://127.0.0.1:9/c"})
        assert changed.status_code == 200 and changed.json()["url"] == "http://127.0.0.1:9/c"
        changed = await patch({"events": ["job.failed", "subscription.disabled"], "description": None})
        assert changed.json()["events"] == ["job.failed", "subscription.disabled"]
        assert changed.json()["description"] is None
        assert (await patch({"description": "on call"})).json()["description"] == "on call"
        assert (await patch({"status": "disabled"})).json()["status"] == "disabled"
        assert (await patch({"status": "enabled"})).json()["status"] == "enabled"
        assert "secret" not in changed.json()

        for body, field_name in (
            ({"colour": "red"}, "colour"),
            ({"events": ["job.exploded"]}, "events"),
            ({"status": "paused"}, "status"),
            ({"url": "gopher://127.0.0.1/"}, "url"),
            ({"url": None}, "url"),
            ({"description": 5}, "description"),
            ({"secret": "whsec_mine"}, "secret"),
        ):
            assert fields_named(assert_error_shape(await patch(body), 422, "validation_failed")) == [
                field_name
            ], body
        assert_error_shape(await patch([1, 2]), 422, "validation_failed")
        after = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
        assert (after["url"], after["events"], after["description"], after["status"]) == (
            "http://127.0.0.1:9/c",
            ["job.failed", "subscription.disabled"],
            "on call",
            "enabled",
        )

        deleted = await client.delete(f"/v1/subscriptions/{sub['id']}")
        assert deleted.status_code == 204 and deleted.content == b""
        gone = f"/v1/subscriptions/{sub['id']}"
        for response in (
            await client.get(gone),
            await client.delete(gone),
            await client.patch(gone, json={"description": "back?"}),
            await client.get(f"{gone}/deliveries"),
            await client.post(f"{gone}/recover", params={"since": "2020-01-01T00:00:00Z"}),
            await client.post(f"{gone}/rotate-secret"),
        ):
            assert fields_named(assert_error_shape(response, 404, "not_found")) == ["subscription_id"]
        missing = await client.post("/v1/deliveries/dlv_nope/redeliver")
        assert fields_named(assert_error_shape(missing, 404, "not_found")) == ["delivery_id"]
        assert [s["id"] for s in (await client.get("/v1/subscriptions")).json()["data"]] == [other["id"]]


async def test_delivery_log_shows_each_attempt_and_a_redelivery_is_one_more_with_the_same_webhook_id(
    tmp_path,
):
    busy = "busy " + "x" * 5000  # longer than the log keeps
    receiver = Scripted([(503, busy), (200, "thanks")])
    env = {**LOOPBACK, "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,0.3"}
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **env) as stack:
        client = stack.client
        sub = (
            await client.post("/v1/subscriptions", json={"url": f"{url}/hook", "events": ["job.succeeded"]})
        ).json()
        [job_id] = await submit_jobs(client, 1)
        await wait_terminal(client, [job_id], timeout=20)

        async def delivered(attempts: int) -> bool:
            rows = await deliveries(client, sub["id"])
            return (
                len(rows) == 1 and rows[0]["status"] == "delivered" and rows[0]["attempt_count"] == attempts
            )

        await wait_until(lambda: delivered(2))
        [first_log] = await deliveries(client, sub["id"])
        assert (await client.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"] == [first_log]

        redelivered = await client.post(f"/v1/deliveries/{first_log['id']}/redeliver")
        assert redelivered.status_code == 202, redelivered.text
        assert redelivered.json()["id"] == first_log["id"] and redelivered.json()["status"] == "pending"
        assert [a["attempt"] for a in redelivered.json()["attempts"]] == [1, 2]  # the log so far
        await wait_until(lambda: delivered(3))
        [log] = await deliveries(client, sub["id"])

    assert first_log["event_type"] == "job.succeeded" and first_log["job_id"] == job_id
    assert first_log["subscription_id"] == sub["id"] and first_log["url"] == f"{url}/hook"
    failed, succeeded = first_log["attempts"]
    assert [failed["attempt"], succeeded["attempt"]] == [1, 2]
    assert (failed["status_code"], failed["error"]) == (503, "HTTP 503")
    assert failed["response"] == busy[:2048]  # the first part of the body, not all of it
    assert parse_time(failed["next_attempt_at"]) >= parse_time(failed["at"])
    assert parse_time(succeeded["at"]) >= parse_time(failed["next_attempt_at"])
    assert (succeeded["status_code"], succeeded["response"], succeeded["error"]) == (200, "thanks", None)
    assert succeeded["next_attempt_at"] is None and first_log["next_attempt_at"] is None
    for attempt in first_log["attempts"]:
        assert isinstance(attempt["duration_ms"], int) and attempt["duration_ms"] >= 0
        assert parse_time(attempt["at"]) >= parse_time(first_log["created_at"])
    assert parse_time(first_log["delivered_at"]) >= parse_time(succeeded["at"])

    # The redelivery is one more attempt on the same delivery, logged like the others.
    assert log["attempts"][:2] == first_log["attempts"] and log["attempt_count"] == 3
    third = log["attempts"][2]
    assert (third["attempt"], third["status_code"], third["response"]) == (3, 200, "thanks")
    assert parse_time(third["at"]) > parse_time(succeeded["at"])
    # All three requests are the one event: one webhook-id, the same bytes, each signed for its time.
    assert len(receiver.requests) == 3
    assert {headers["webhook-id"] for headers, _ in receiver.requests} == {first_log["event_id"]}
    assert len({body for _, body in receiver.requests}) == 1
    for headers, body in receiver.requests:
        assert Webhook(sub["secret"]).verify(body, headers)["type"] == "job.succeeded"


async def test_recover_resends_what_failed_since_the_given_time_and_only_that(tmp_path):
    receiver = Receiver(fail_first=10**9, failure=500, fetch_outputs=False)  # down, for now
    env = {**LOOPBACK, "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0"}  # one try, then the delivery fails
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **env) as stack:
        client = stack.client
        sub = (await client.post("/v1/subscriptions", json={"url": f"{url}/hook"})).json()
        recover = f"/v1/subscriptions/{sub['id']}/recover"

        async def run_job_until_its_deliveries_fail() -> list[dict[str, Any]]:
            [job_id] = await submit_jobs(client, 1)
            await wait_terminal(client, [job_id], timeout=20)

            async def all_failed() -> bool:
                rows = (await client.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]
                return bool(rows) and all(r["status"] == "failed" for r in rows)

            await wait_until(all_failed)
            return (await client.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]

        old = await run_job_until_its_deliveries_fail()
        new = await run_job_until_its_deliveries_fail()
        assert all(len(d["attempts"]) == 1 and d["attempts"][0]["status_code"] == 500 for d in old + new)

        for params, field_name in (
            ({}, "since"),
            ({"since": ""}, "since"),
            ({"since": "yesterday"}, "since"),
            ({"since": "2026-01-01T00:00:00"}, "since"),  # no time zone
        ):
            response = await client.post(recover, params=params)
            assert fields_named(assert_error_shape(response, 422, "validation_failed")) == [field_name]

        receiver.fail_first = 0  # back up
        since = min(d["created_at"] for d in new)
        answer = await client.post(recover, params={"since": since})
        assert answer.status_code == 202 and answer.json() == {"recovered": len(new)}

        async def statuses() -> dict[str, str]:
            return {d["id"]: d["status"] for d in await deliveries(client, sub["id"])}

        await wait_until(lambda: _all(statuses, {d["id"] for d in new}, "delivered"))
        assert {s for i, s in (await statuses()).items() if i in {d["id"] for d in old}} == {"failed"}
        assert set(receiver.accepted_ids()) == {d["event_id"] for d in new}

        an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        answer = await client.post(recover, params={"since": an_hour_ago})
        assert answer.json() == {"recovered": len(old)}
        await wait_until(lambda: _all(statuses, {d["id"] for d in old + new}, "delivered"))
        assert (await client.post(recover, params={"since": an_hour_ago})).json() == {"recovered": 0}
        log = await deliveries(client, sub["id"])

    # Each failed event was resent once, under its own webhook-id, and the log shows both tries.
    assert sorted(receiver.accepted_ids()) == sorted(d["event_id"] for d in old + new)
    assert all(receiver.attempts[d["event_id"]] == 2 for d in old + new)
    assert {d["id"]: [a["status_code"] for a in d["attempts"]] for d in log} == {
        d["id"]: [500, 204] for d in old + new
    }


async def _all(statuses: Callable[[], Awaitable[dict[str, str]]], ids: set[str], status: str) -> bool:
    current = await statuses()
    return all(current.get(i) == status for i in ids)


async def test_after_the_url_changes_retries_and_recovery_go_to_the_new_url(tmp_path):
    old_home = Receiver(fail_first=10**9, failure=500, fetch_outputs=False)  # gone for good
    new_home = Receiver(fetch_outputs=False)
    env = {**LOOPBACK, "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0"}
    async with (
        serve(old_home.app()) as old_url,
        serve(new_home.app()) as new_url,
        running_stack(tmp_path, CONFIG, **env) as stack,
    ):
        client = stack.client
        sub = (await client.post("/v1/subscriptions", json={"url": f"{old_url}/hook"})).json()
        [job_id] = await submit_jobs(client, 1)
        await wait_terminal(client, [job_id], timeout=20)

        async def settled() -> bool:
            rows = await deliveries(client, sub["id"])
            return bool(rows) and all(r["status"] == "failed" for r in rows)

        await wait_until(settled)
        failed = await deliveries(client, sub["id"])
        moved = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"url": f"{new_url}/hook"})
        assert moved.status_code == 200
        recovered = await client.post(
            f"/v1/subscriptions/{sub['id']}/recover", params={"since": failed[-1]["created_at"]}
        )
        assert recovered.json() == {"recovered": len(failed)}

        async def delivered() -> bool:
            return {r["status"] for r in await deliveries(client, sub["id"])} == {"delivered"}

        await wait_until(delivered)
        log = await deliveries(client, sub["id"])

    # The owner moved the endpoint: nothing more goes to the address it left.
    assert sorted(new_home.accepted_ids()) == sorted(d["event_id"] for d in failed)
    assert len(old_home.received) == len(failed)
    assert {d["url"] for d in log} == {f"{new_url}/hook"}
