"""End to end with blobs on S3: fluxhook's web and worker processes over loopback, the simulator
as provider, moto's server as the object store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from service.loopback import serve
from service.simulator import SimulatorConfig, create_simulator_app
from storage.blobs.s3 import S3BlobStore
from tests.blobs import read_blob, stored_names
from tests.conftest import new_bucket, s3_env
from tests.e2e import (
    assert_outputs_match_simulator,
    fluxhook_env,
    free_port,
    run_fluxhook,
    simulator_tasks,
    submit_jobs,
    wait_terminal,
    wait_up,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


async def test_jobs_store_their_images_in_s3_and_serve_them_streamed_or_by_presigned_redirect(
    tmp_path: Path, s3_endpoint: str
):
    blob_env = s3_env(s3_endpoint, new_bucket(s3_endpoint), prefix="images")
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.6), callback_drop_rate=0.3, seed=21))
    port, presigning_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    async with serve(simulator) as provider_url, httpx.AsyncClient(base_url=base, timeout=30) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, **blob_env)
        web = run_fluxhook(["serve", "--port", str(port), "--no-workers"], env, log)
        worker = run_fluxhook(["worker"], env, log)
        presigning = run_fluxhook(
            ["serve", "--port", str(presigning_port), "--no-workers"],
            {**env, "FLUXHOOK_BLOB_REDIRECT": "presigned"}, log,
        )
        try:
            await wait_up(f"{base}/healthz", web)
            ids = await submit_jobs(client, 8)
            docs = await wait_terminal(client, ids, timeout=60)
            assert {doc["status"] for doc in docs.values()} == {"succeeded"}, log.read_text()[-3000:]
            await assert_outputs_match_simulator(client, docs, await simulator_tasks(provider_url))

            # The bucket holds exactly the stated images, each under its own sha256, nothing else.
            bucket = blob_env["FLUXHOOK_BLOB_URL"].removeprefix("s3://").split("/")[0]
            blobs = S3BlobStore(bucket, "images", blob_env)
            stated = {o["sha256"] for doc in docs.values() for o in doc["outputs"]}
            assert await stored_names(blobs) == sorted(f"{s[:2]}/{s[2:4]}/{s}" for s in stated)
            for sha256 in stated:
                assert hashlib.sha256(await read_blob(blobs, sha256)).hexdigest() == sha256

            # The same outputs through a web process that hands out presigned URLs instead.
            await wait_up(f"http://127.0.0.1:{presigning_port}/healthz", presigning)
            async with httpx.AsyncClient(timeout=30) as anyone:
                for doc in docs.values():
                    for output in doc["outputs"]:
                        url = output["url"].replace(base, f"http://127.0.0.1:{presigning_port}")
                        redirect = await anyone.get(url)
                        assert redirect.status_code == 307, redirect.text
                        assert redirect.headers["location"].startswith(f"{s3_endpoint}/{bucket}/images/")
                        assert redirect.headers["etag"] == f'"{output["sha256"]}"'
                        fetched = await anyone.get(redirect.headers["location"])
                        assert hashlib.sha256(fetched.content).hexdigest() == output["sha256"]
        finally:
            for process in (worker, web, presigning):
                process.kill()
                process.wait(timeout=10)
    assert "test-secret-key" not in log.read_text()  # credentials are never logged
