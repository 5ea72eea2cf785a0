"""Reference-image uploads: stored, type-checked, capped, and fetchable by signed URL only
(each test against each blob store: a local directory and S3)."""

from __future__ import annotations

import io
import random

import anyio
import httpx
import pytest
from PIL import Image

from service.simulator import SimulatorConfig
from tests.conftest import assert_error_shape
from tests.e2e import running_stack

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "teal").save(buffer, "PNG")
    return buffer.getvalue()


async def test_upload_is_served_by_its_signed_url_without_credentials_and_used_in_a_job(
    tmp_path, blob_backend
):
    async with running_stack(
        tmp_path, SimulatorConfig(seed=4), **blob_backend, FLUXHOOK_API_KEY="k"
    ) as stack:
        auth = {"Authorization": "Bearer k"}
        image = png()
        response = await stack.client.post(
            "/v1/uploads", content=image, headers={**auth, "Content-Type": "image/png"}
        )
        assert response.status_code == 201
        upload = response.json()
        assert upload["content_type"] == "image/png" and upload["bytes"] == len(image)
        assert upload["url"].startswith(f"{stack.base}/uploads/")

        async with httpx.AsyncClient() as anonymous:  # as a provider would fetch it
            fetched = await anonymous.get(upload["url"])
            assert fetched.status_code == 200 and fetched.content == image
            assert fetched.headers["content-type"] == "image/png"
            assert fetched.headers["content-length"] == str(len(image))
            etag = fetched.headers["etag"]
            assert etag == f'"{upload["sha256"]}"'
            assert (await anonymous.get(upload["url"], headers={"If-None-Match": etag})).status_code == 304
            tampered = upload["url"][:-4] + ("AAAA" if not upload["url"].endswith("AAAA") else "BBBB")
            assert_error_shape(await anonymous.get(tampered), 404, "not_found")
            assert_error_shape(await anonymous.post(f"{stack.base}/v1/uploads", content=image), 401)

        job = await stack.client.post(
            "/v1/jobs",
            headers=auth,
            json={
                "provider": "bfl",
                "model": "flux-kontext-pro",
                "input": {"prompt": "make it snow", "image_url": upload["url"]},
            },
        )
        assert job.status_code == 202
        with anyio.fail_after(20):
            while (doc := (await stack.client.get(f"/v1/jobs/{job.json()['id']}", headers=auth)).json())[
                "status"
            ] != "succeeded":
                await anyio.sleep(0.1)
        assert doc["input"]["image_url"] == upload["url"]


async def test_uploads_that_are_not_images_too_large_or_mislabelled_are_refused(
    tmp_path, blob_backend
):
    async with running_stack(
        tmp_path, SimulatorConfig(seed=5), **blob_backend, FLUXHOOK_UPLOAD_MAX_BYTES="5000"
    ) as stack:
        post = stack.client.post
        assert_error_shape(await post("/v1/uploads", content=b"%PDF-1.4 not an image at all"), 422)
        assert_error_shape(
            await post("/v1/uploads", content=png(), headers={"Content-Type": "image/jpeg"}), 422
        )
        assert_error_shape(
            await post("/v1/uploads", content=png(), headers={"Content-Type": "text/html"}), 422
        )
        noisy = Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3))
        buffer = io.BytesIO()
        noisy.save(buffer, "PNG")
        assert len(buffer.getvalue()) > 5000
        assert_error_shape(await post("/v1/uploads", content=buffer.getvalue()), 413, "payload_too_large")
        assert_error_shape(await post("/v1/uploads", content=b""), 422)


async def test_upload_url_expires(
    tmp_path, blob_backend
):
    async with running_stack(
        tmp_path, SimulatorConfig(seed=6), **blob_backend, FLUXHOOK_UPLOAD_URL_TTL_SECONDS="1"
    ) as stack:
        upload = (await stack.client.post("/v1/uploads", content=png())).json()
        assert (await stack.client.get(upload["url"])).status_code == 200
        await anyio.sleep(2.2)
        assert_error_shape(await stack.client.get(upload["url"]), 410, "expired")


async def test_multipart_form_upload_is_accepted_like_a_raw_body(
    tmp_path, blob_backend
):
    async with running_stack(
        tmp_path, SimulatorConfig(seed=7), **blob_backend, FLUXHOOK_UPLOAD_MAX_BYTES="20000"
    ) as stack:
        image = png()
        response = await stack.client.post("/v1/uploads", files={"file": ("ref.png", image, "image/png")})
        assert response.status_code == 201, response.text
        upload = response.json()
        assert upload["content_type"] == "image/png" and upload["bytes"] == len(image)
        assert (await stack.client.get(upload["url"])).content == image
        wrong_field = await stack.client.post("/v1/uploads", files={"image": ("ref.png", image, "image/png")})
        assert_error_shape(wrong_field, 422, "validation_failed")
        big = random.Random(2).randbytes(200_000)
        too_big = await stack.client.post(
            "/v1/uploads", files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + big)}
        )
        assert_error_shape(too_big, 413, "payload_too_large")
        not_image = await stack.client.post("/v1/uploads", files={"file": ("x.txt", b"hello, not an image")})
        assert_error_shape(not_image, 422, "validation_failed")
