"""Serving stored outputs, from each blob store (a local directory and S3): streamed with their
type, size and sha256 ETag, or by a redirect to a short-lived presigned URL when asked."""

from __future__ import annotations

import hashlib
import io
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from PIL import Image

from service.worker import Worker
from tests.blobs import age_blobs
from tests.conftest import Api, assert_error_shape

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
JOB = {"provider": "bfl", "model": "flux-pro-1.1",
       "input": {"prompt": "a lighthouse", "width": 1024, "height": 768}, "metadata": {"order": 42}}


PRESIGNED = {"FLUXHOOK_BLOB_REDIRECT": "presigned", "FLUXHOOK_BLOB_REDIRECT_SECONDS": "120"}


@pytest.fixture
def blob_env(blob_backend: dict[str, str], request: pytest.FixtureRequest) -> dict[str, str]:
    """Each blob store in turn, plus the test's own blob settings (indirect parameters)."""
    return {**blob_backend, **getattr(request, "param", {})}


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "navy").save(buffer, "PNG")
    return buffer.getvalue()


async def succeeded_job(api: Api, router: respx.Router, image: bytes) -> str:
    url = "https://delivery.us1.bfl.ai/r/1/sample.png"
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=httpx.Response(200, json={"id": "t1"}))
    router.get(f"{BASE}/v1/get_result").mock(return_value=httpx.Response(
        200, json={"id": "t1", "status": "Ready", "result": {"sample": url}}))
    router.get(url).mock(
        return_value=httpx.Response(200, content=image, headers={"content-type": "image/png"})
    )
    job_id: str = (await api.client.post("/v1/jobs", json=JOB)).json()["id"]
    worker = Worker(api.ctx)
    await worker.run_once()
    api.ctx.clock.advance(20)
    await worker.run_once()  # poll: Ready
    await worker.run_once()  # fetch
    return job_id


async def test_stored_output_is_served_with_its_type_and_sha256_etag(api, router):
    image = png()
    job_id = await succeeded_job(api, router, image)

    job = (await api.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded" and job["completion_source"] == "poll"
    [output] = job["outputs"]
    digest = hashlib.sha256(image).hexdigest()
    assert output == {"index": 0, "url": f"https://hooks.example.com/v1/jobs/{job_id}/outputs/0",
                      "sha256": digest, "content_type": "image/png", "bytes": len(image)}
    served = await api.client.get(f"/v1/jobs/{job_id}/outputs/0")
    assert served.status_code == 200
    assert served.content == image
    assert served.headers["content-type"] == "image/png"
    assert served.headers["content-length"] == str(len(image))
    assert served.headers["etag"] == f'"{digest}"'
    cached = await api.client.get(f"/v1/jobs/{job_id}/outputs/0", headers={"If-None-Match": f'"{digest}"'})
    assert cached.status_code == 304


async def test_an_output_missing_from_the_blob_store_is_a_404(api, router):
    job_id = await succeeded_job(api, router, png())
    [output] = (await api.client.get(f"/v1/jobs/{job_id}")).json()["outputs"]
    age_blobs(api.ctx.blobs, 3600)
    assert await api.ctx.blobs.remove(output["sha256"], settled_s=0)

    assert_error_shape(await api.client.get(f"/v1/jobs/{job_id}/outputs/0"), 404, "blob_missing")


@pytest.mark.parametrize("blob_env", [PRESIGNED], indirect=True)
async def test_with_presigned_redirects_an_output_from_s3_is_a_redirect_and_a_directory_streams(
    api, router, blob_env
):
    image = png()
    job_id = await succeeded_job(api, router, image)

    served = await api.client.get(f"/v1/jobs/{job_id}/outputs/0")

    if "FLUXHOOK_BLOB_URL" not in blob_env:  # a local directory has no URLs to hand out: it streams as before
        assert served.status_code == 200 and served.content == image
        return
    assert served.status_code == 307
    location = served.headers["location"]
    assert location.startswith(blob_env["AWS_ENDPOINT_URL"])
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["120"]
    assert "test-secret-key" not in location
    async with httpx.AsyncClient() as anyone:
        fetched = await anyone.get(location)
    assert fetched.status_code == 200 and fetched.content == image
