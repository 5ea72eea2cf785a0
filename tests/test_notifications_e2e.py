"""Notifications end to end over loopback: failing receivers, retries, signatures, ordering."""

from __future__ import annotations

import socket

import anyio
import pytest
from standardwebhooks import Webhook

from service.loopback import serve
from service.simulator import SimulatorConfig
from tests.e2e import free_port, running_stack, submit_jobs, wait_terminal
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

FAST_RETRIES = {
    "FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback",
    "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,0.3,0.6,1,1,1,1,1",
    # Room for a receiver that fetches the job's image before it answers, on a loaded machine:
    # at 0.5 s its 204 sometimes came after the sender had given up, and was sent again.
    "FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS": "1.5",
}
CONFIG = SimulatorConfig(latency_s=(0.3, 0.8), callback_drop_rate=0.3, seed=31)


async def wait_until(predicate, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.1)


async def test_failing_receivers_get_every_event_once_by_webhook_id_and_all_verify(tmp_path):
    refusing_port = free_port()
    flaky, slow, late = (
        Receiver(fail_first=2, failure=503),
        Receiver(fail_first=1, failure="slow", slow_s=3.0),  # past the sender's timeout
        Receiver(),
    )
    async with (
        serve(flaky.app()) as flaky_url,
        serve(slow.app()) as slow_url,
        running_stack(tmp_path, CONFIG, **FAST_RETRIES) as stack,
    ):
        subs = {}
        for name, url in (
            ("flaky", f"{flaky_url}/hook"),
            ("slow", f"{slow_url}/hook"),
            ("refused", f"http://127.0.0.1:{refusing_port}/hook"),
        ):
            response = await stack.client.post("/v1/subscriptions", json={"url": url, "description": name})
            assert response.status_code == 201, response.text
            subs[name] = response.json()
            assert subs[name]["secret"].startswith("whsec_")
        ids = await submit_jobs(stack.client, 6)
        docs = await wait_terminal(stack.client, ids, timeout=60)
        assert {d["status"] for d in docs.values()} == {"succeeded"}

        # The third receiver only comes up now, after its first attempts were refused.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", refusing_port))
        sock.listen(64)
        async with serve(late.app(), sock):
            events = {}
            for job_id in ids:
                for delivery in (await stack.client.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]:
                    events[delivery["event_id"]] = delivery["event_type"]

            async def all_delivered() -> bool:
                rows = []
                for sub in subs.values():
                    rows += (await stack.client.get(f"/v1/subscriptions/{sub['id']}/deliveries")).json()[
                        "data"
                    ]
                return len(rows) == 3 * len(events) and all(r["status"] == "delivered" for r in rows)

            await wait_until(all_delivered, timeout=60)
            refused_log = (
                await stack.client.get(f"/v1/subscriptions/{subs['refused']['id']}/deliveries")
            ).json()

    assert len(events) >= 6 * 3  # submitted, running, succeeded for every job at least
    for name, receiver in (("flaky", flaky), ("slow", slow), ("refused", late)):
        webhook = Webhook(subs[name]["secret"])
        # Every event arrived, and the receiver can tell repeats apart by webhook-id alone.
        assert set(receiver.accepted_ids()) == set(events), name
        assert len(receiver.accepted_ids()) == len(set(receiver.accepted_ids())), name
        for got in receiver.received:
            headers = {
                "webhook-id": got.webhook_id,
                "webhook-timestamp": got.timestamp,
                "webhook-signature": got.signature,
            }
            payload = webhook.verify(got.body, headers)  # the independent library agrees
            assert payload["type"] == events[got.webhook_id]
        bodies = {}
        for got in receiver.received:  # every retry of one event carries the same bytes
            assert bodies.setdefault(got.webhook_id, got.body) == got.body
    assert all(flaky.attempts[i] == 3 for i in events)
    assert all(slow.attempts[i] == 2 for i in events)
    assert any("ConnectError" in (a["error"] or "") for d in refused_log["data"] for a in d["attempts"])
    # No job.succeeded arrived before its image could be fetched from fluxhook.
    for receiver in (flaky, slow, late):
        assert receiver.output_status and set(receiver.output_status.values()) == {200}


async def test_events_per_job_come_in_order_with_sequence_numbers_and_the_stored_outputs(tmp_path):
    receiver = Receiver(fetch_outputs=False)
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **FAST_RETRIES) as stack:
        secret = (await stack.client.get("/v1/webhook-secret")).json()["secret"]
        job = (
            await stack.client.post(
                "/v1/jobs",
                json={
                    "model": "flux-pro-1.1",
                    "input": {"prompt": "per-job hook", "width": 256, "height": 256},
                    "webhook_url": f"{url}/hook",
                    "webhook_events": ["job.succeeded", "job.failed"],
                },
            )
        ).json()
        assert job["webhook_url"] == f"{url}/hook"
        await wait_terminal(stack.client, [job["id"]], timeout=30)
        await wait_until(lambda: _has(receiver, "job.succeeded"))
        all_events = (await stack.client.get(f"/v1/jobs/{job['id']}/deliveries")).json()["data"]

    [got] = receiver.received  # only the event types the job asked for
    payload = Webhook(secret).verify(
        got.body,
        {
            "webhook-id": got.webhook_id,
            "webhook-timestamp": got.timestamp,
            "webhook-signature": got.signature,
        },
    )
    assert payload["type"] == "job.succeeded" and payload["data"]["status"] == "succeeded"
    output = payload["data"]["outputs"][0]
    assert output["url"].startswith(stack.base) and len(output["sha256"]) == 64
    assert payload["sequence"] >= 2 and payload["id"] == got.webhook_id
    assert [d["event_type"] for d in all_events] == ["job.succeeded"]


async def _has(receiver: Receiver, event_type: str) -> bool:
    return any(r.payload["type"] == event_type for r in receiver.received)


async def test_rotated_secret_signs_beside_the_old_one_and_both_verify(tmp_path):
    receiver = Receiver(fetch_outputs=False)
    async with serve(receiver.app()) as url, running_stack(tmp_path, CONFIG, **FAST_RETRIES) as stack:
        sub = (
            await stack.client.post(
                "/v1/subscriptions", json={"url": f"{url}/hook", "events": ["job.succeeded"]}
            )
        ).json()
        rotated = (await stack.client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")).json()
        assert rotated["secret"] != sub["secret"] and "previous_secret_expires_at" in rotated
        assert "secret" not in (await stack.client.get(f"/v1/subscriptions/{sub['id']}")).json()
        ids = await submit_jobs(stack.client, 2)
        await wait_terminal(stack.client, ids, timeout=30)
        await wait_until(lambda: _count(receiver, 2))

    for got in receiver.received:
        assert len(got.signature.split(" ")) == 2
        headers = {
            "webhook-id": got.webhook_id,
            "webhook-timestamp": got.timestamp,
            "webhook-signature": got.signature,
        }
        for secret in (sub["secret"], rotated["secret"]):
            assert Webhook(secret).verify(got.body, headers)["type"] == "job.succeeded"


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) >= n
