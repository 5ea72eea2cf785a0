"""Bursts within the provider's limits: 100 jobs at once against an account that allows 4 active
tasks and answers 429 past that, over real loopback HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.simulator import SimulatorConfig
from tests.e2e import running_stack, submit_jobs, wait_terminal

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

JOBS = 100
LIMIT = 4
# A limit of 4 active tasks at the simulated BFL account, and short, varied latencies.
ACCOUNT = SimulatorConfig(latency_s=(0.05, 0.25), max_active_tasks=LIMIT, seed=31)


async def provider_stats(provider_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{provider_url}/_sim/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()["bfl"]
    return stats


async def test_a_burst_waits_in_fluxhook_instead_of_hammering_the_provider(tmp_path):
    async with running_stack(tmp_path, ACCOUNT, BFL_MAX_ACTIVE_TASKS=str(LIMIT)) as stack:
        ids = await submit_jobs(stack.client, JOBS)
        docs = await wait_terminal(stack.client, ids, timeout=120)
        stats = await provider_stats(stack.provider_url)

    failed = {job_id: doc["error"] for job_id, doc in docs.items() if doc["status"] != "succeeded"}
    assert failed == {}
    assert stats["submitted"] == JOBS
    assert stats["peak_active"] == LIMIT  # the burst kept the account busy, and never past it
    assert stats["answered_429"] <= 5
    # Every job was submitted once: none needed a retry.
    assert all(len(doc["attempts"]) == 1 for doc in docs.values())


async def test_with_the_documented_cap_above_the_account_limit_429_backoff_still_converges(tmp_path):
    # fluxhook believes BFL's documented 24; this account allows only 4. The 429s are honoured
    # (Retry-After) and every job still gets through.
    config = SimulatorConfig(latency_s=(0.05, 0.25), max_active_tasks=LIMIT, seed=32)
    async with running_stack(tmp_path, config) as stack:
        ids = await submit_jobs(stack.client, 40)
        docs = await wait_terminal(stack.client, ids, timeout=120)
        stats = await provider_stats(stack.provider_url)

    failed = {job_id: doc["error"] for job_id, doc in docs.items() if doc["status"] != "succeeded"}
    assert failed == {}
    assert stats["submitted"] == 40
    assert stats["peak_active"] == LIMIT
    assert stats["answered_429"] > 0  # what fluxhook's own cap spares the provider
    retried = [a for doc in docs.values() for a in doc["attempts"] if a["outcome"] == "unavailable"]
    assert len(retried) == stats["answered_429"]
    assert all(a["http_status"] == 429 for a in retried)


async def test_auto_jobs_overflow_to_the_next_provider_while_the_first_is_full(tmp_path):
    def with_cometapi(url: str) -> dict[str, str]:
        return {"COMETAPI_BASE_URL": url, "COMETAPI_API_KEY": "comet-key"}

    # Each simulated account (BFL's, CometAPI's) allows 2 active tasks, and fluxhook knows it.
    config = SimulatorConfig(latency_s=(0.3, 0.6), max_active_tasks=2, seed=33)
    async with running_stack(tmp_path, config, provider_env=with_cometapi,
                             BFL_MAX_ACTIVE_TASKS="2", COMETAPI_MAX_ACTIVE_TASKS="2") as stack:
        ids = []
        for n in range(12):
            body = {"provider": "auto", "model": "flux-pro-1.1",
                    "input": {"prompt": f"overflow {n}", "width": 256, "height": 256}}
            response = await stack.client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        docs = await wait_terminal(stack.client, ids, timeout=60)
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"{stack.provider_url}/_sim/stats")).json()

    assert {doc["status"] for doc in docs.values()} == {"succeeded"}
    by_provider = {p: sum(doc["provider"] == p for doc in docs.values()) for p in ("bfl", "cometapi")}
    assert by_provider["bfl"] >= 2 and by_provider["cometapi"] >= 2, by_provider
    for account in ("bfl", "cometapi"):
        assert stats[account]["peak_active"] == 2 and stats[account]["answered_429"] == 0
    # Overflow is not a failure: each job was submitted once, where it ran.
    assert all([a["outcome"] for a in doc["attempts"]] == ["accepted"] for doc in docs.values())
