"""GET /metrics: Prometheus's text format, parsed by prometheus-client's own parser, and after a
run of jobs through the simulator its counters agree with the jobs' documents."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.loopback import bind_loopback, serve, url_of
from service.settings import Settings
from service.simulator import SimulatorConfig, create_simulator_app
from tests.conftest import assert_error_shape
from tests.e2e import BACKEND_ENV, fluxhook_env, free_port, run_fluxhook, submit_jobs, wait_terminal, wait_up

pytestmark = pytest.mark.anyio

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample by its name (counters end in _total, histograms in _count/_sum/_bucket)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def by(samples: Samples, name: str, *labels: str) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for sample_labels, value in samples.get(name, []):
        if value:
            counts[tuple(sample_labels[label] for label in labels)] += int(value)
    return counts


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_after_a_run_through_the_simulator_the_counters_match_the_jobs_documents(tmp_path: Path):
    simulator = create_simulator_app(SimulatorConfig(
        latency_s=(0.2, 0.8), callback_drop_rate=0.3, callback_duplicate_rate=0.2, seed=5))
    async with serve(simulator) as provider_url:
        sock = bind_loopback()
        settings = Settings.from_env(fluxhook_env(tmp_path / "data", url_of(sock), provider_url))
        async with serve(create_app(settings), sock) as base, \
                httpx.AsyncClient(base_url=base, timeout=30) as client:
            ids = await submit_jobs(client, 16)
            await wait_terminal(client, ids, timeout=90)
            # A duplicate callback may still land after its job is final: read the documents on
            # both sides of the scrape until nothing changed in between.
            with anyio.fail_after(30):
                while True:
                    before = {j: (await client.get(f"/v1/jobs/{j}")).json() for j in ids}
                    scrape = await client.get("/metrics")
                    docs = {j: (await client.get(f"/v1/jobs/{j}")).json() for j in ids}
                    if docs == before:
                        break
                    await anyio.sleep(0.5)

    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(scrape.text)
    jobs = list(docs.values())
    assert {d["status"] for d in jobs} == {"succeeded"}
    assert by(samples, "fluxhook_jobs_created_total", "provider", "model") == Counter(
        (d["provider"], d["model"]) for d in jobs)
    assert by(samples, "fluxhook_jobs_finished_total", "provider", "model", "status",
              "completion_source") == Counter(
        (d["provider"], d["model"], d["status"], d["completion_source"]) for d in jobs)
    # Both ways of completing happened, so both paths are counted.
    assert {d["completion_source"] for d in jobs} == {"callback", "poll"}
    callbacks = by(samples, "fluxhook_callbacks_total", "verdict")
    assert sum(callbacks.values()) == sum(d["callbacks"] for d in jobs)
    assert callbacks[("duplicate",)] >= 1 and callbacks[("verified",)] >= 1
    assert by(samples, "fluxhook_polls_total", "outcome")[("answered",)] == sum(d["polls"] for d in jobs)
    assert by(samples, "fluxhook_submit_attempts_total", "provider", "outcome") == Counter(
        (a["provider"], a["outcome"]) for d in jobs for a in d["attempts"])
    stored: Counter[tuple[str, ...]] = Counter()
    for d in jobs:
        stored[(d["provider"],)] += sum(o["bytes"] for o in d["outputs"])
    assert by(samples, "fluxhook_download_bytes_total", "provider") == stored
    assert by(samples, "fluxhook_ready_to_stored_seconds_count", "provider") == Counter(
        (d["provider"],) for d in jobs)
    # Nothing is left to do, and the store-derived gauges say so.
    assert by(samples, "fluxhook_due_tasks", "kind") == Counter()
    assert samples["fluxhook_oldest_due_task_age_seconds"] == [({}, 0.0)]


async def test_metrics_need_the_api_key_when_one_is_set(make_settings):
    app = create_app(make_settings(FLUXHOOK_API_KEY="metrics-key"), run_workers=False)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope, receive, send):
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state),
                                     base_url="http://test") as client:
            assert_error_shape(await client.get("/metrics"), 401, "unauthorized")
            answer = await client.get("/metrics", headers={"Authorization": "Bearer metrics-key"})
    assert answer.status_code == 200
    assert "fluxhook_due_tasks" in parse(answer.text)


async def test_a_rejected_callback_is_counted_by_its_reason_without_the_path_as_a_label(api):
    response = await api.client.post("/v1/callbacks/bfl/not-a-token", content=b"{}")
    assert_error_shape(response, 403, "invalid_token")
    await api.client.post("/v1/callbacks/made-up-provider/x", content=b"{}")
    samples = parse((await api.client.get("/metrics")).text)
    rejected = by(samples, "fluxhook_callbacks_total", "provider", "verdict", "reason")
    assert rejected[("bfl", "rejected", "invalid_token")] == 1
    assert not any(provider == "made-up-provider" for provider, _, _ in rejected)


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_a_worker_process_serves_its_own_counters_and_web_plus_worker_add_up(tmp_path: Path):
    """`fluxhook serve --no-workers` and `fluxhook worker --metrics-port`: each process counts what
    it did, and the sums across both match the jobs' documents."""
    web_port, metrics_port = free_port(), free_port()
    web = f"http://127.0.0.1:{web_port}"
    env = {**BACKEND_ENV, "FLUXHOOK_DATA_DIR": str(tmp_path / "data"), "FLUXHOOK_PUBLIC_URL": web,
           "FLUXHOOK_SECRET_KEY": "metrics-secret-key", "FLUXHOOK_LOG_LEVEL": "warning"}
    log = tmp_path / "processes.log"
    processes = [run_fluxhook(["serve", "--port", str(web_port), "--no-workers"], env, log),
                 run_fluxhook(["worker", "--metrics-port", str(metrics_port)], env, log)]
    try:
        await wait_up(f"{web}/healthz", processes[0])
        await wait_up(f"http://127.0.0.1:{metrics_port}/metrics", processes[1])
        async with httpx.AsyncClient(base_url=web, timeout=30) as client:
            ids = await submit_jobs(client, 6)
            docs = await wait_terminal(client, ids, timeout=60)
            web_samples = parse((await client.get("/metrics")).text)
            worker_samples = parse((await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    jobs = list(docs.values())
    assert {d["status"] for d in jobs} == {"succeeded"}, log.read_text()[-2000:]
    # The web process took the submits and the callbacks; the worker submitted, polled and stored.
    assert sum(by(web_samples, "fluxhook_jobs_created_total", "model").values()) == len(jobs)
    assert by(worker_samples, "fluxhook_jobs_created_total", "model") == Counter()
    assert by(worker_samples, "fluxhook_submit_attempts_total", "outcome") == Counter(
        (a["outcome"],) for d in jobs for a in d["attempts"])
    finished = (by(web_samples, "fluxhook_jobs_finished_total", "status")
                + by(worker_samples, "fluxhook_jobs_finished_total", "status"))
    assert finished == Counter({("succeeded",): len(jobs)})
    callbacks = by(web_samples, "fluxhook_callbacks_total", "verdict")
    assert sum(callbacks.values()) == sum(d["callbacks"] for d in jobs)
    # The due work is the system's, read from the store by the web process only.
    assert "fluxhook_due_tasks" in web_samples and "fluxhook_due_tasks" not in worker_samples
