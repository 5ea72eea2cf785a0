"""BFL's fill, expand and FLUX.2 preview end to end over loopback, through the simulator: the
image and mask go up through /v1/uploads, reach BFL as base64, and come back inpainted."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from service.simulator import SimulatorConfig
from tests.e2e import assert_outputs_match_simulator, running_stack, simulator_tasks, wait_terminal

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

RED = (250, 0, 0)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def test_fill_expand_and_a_flux_2_preview_succeed_through_the_simulator(tmp_path):
    photo = png(Image.new("RGB", (64, 48), RED))
    mask_image = Image.new("L", (64, 48), 0)
    mask_image.paste(255, (32, 0, 64, 48))  # repaint the right half only
    mask = png(mask_image)
    config = SimulatorConfig(latency_s=(0.3, 0.6), seed=31)
    async with running_stack(tmp_path, config) as stack:
        urls = []
        for data in (photo, mask):
            uploaded = await stack.client.post("/v1/uploads", content=data,
                                               headers={"Content-Type": "image/png"})
            assert uploaded.status_code == 201, uploaded.text
            urls.append(uploaded.json()["url"])
        jobs = {
            "fill": {"model": "flux-pro-1.0-fill", "input": {
                "prompt": "a blue door", "image_url": urls[0], "mask_url": urls[1],
                "output_format": "png", "steps": 15}},
            "expand": {"model": "flux-pro-1.0-expand", "input": {
                "image_url": urls[0], "left": 16, "top": 8, "output_format": "png"}},
            # 64 wide: valid in the catalog, and now in the simulator too (it used to be a 422).
            "preview": {"model": "flux-2-pro-preview", "input": {
                "prompt": "a tall tower", "width": 64, "height": 320, "image_url": urls[0],
                "image_url_2": urls[0]}},
        }
        ids = {}
        for kind, spec in jobs.items():
            response = await stack.client.post("/v1/jobs", json={"provider": "bfl", **spec})
            assert response.status_code == 202, response.text
            ids[kind] = response.json()["id"]
        docs = await wait_terminal(stack.client, list(ids.values()), timeout=60)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)
        images = {}
        for kind, job_id in ids.items():
            doc = docs[job_id]
            assert doc["status"] == "succeeded", (kind, doc["error"])
            assert doc["completion_source"] == "callback"
            served = await stack.client.get(doc["outputs"][0]["url"])
            images[kind] = Image.open(io.BytesIO(served.content)).convert("RGB")

    fill = tasks[docs[ids["fill"]]["provider_job_id"]]
    assert fill["model"] == "flux-pro-1.0-fill"
    # What reached the simulator is exactly the uploaded bytes, sent as base64.
    assert (fill["edit"]["image_bytes"], fill["edit"]["mask_bytes"]) == (len(photo), len(mask))
    assert images["fill"].size == (64, 48)
    assert {images["fill"].getpixel((x, y)) for x in range(32) for y in range(48)} == {RED}
    assert {images["fill"].getpixel((x, y)) for x in range(32, 64) for y in range(48)} != {RED}

    assert images["expand"].size == (64 + 16, 48 + 8)
    assert images["expand"].getpixel((16 + 10, 8 + 10)) == RED

    preview = tasks[docs[ids["preview"]]["provider_job_id"]]
    assert (preview["model"], preview["width"], preview["height"]) == ("flux-2-pro-preview", 64, 320)
