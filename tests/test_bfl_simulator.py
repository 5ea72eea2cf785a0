"""The simulated BFL takes every body fluxhook's catalog allows, and makes real fill, expand
and FLUX.2 pictures from them (service/simulator/bfl_inputs.py, images.py)."""

from __future__ import annotations

import base64
import io
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from PIL import Image

from service.catalog import Catalog, Model
from service.simulator import create_simulator_app
from service.simulator.bfl_inputs import RENDER_MAX_PIXELS, RENDER_MAX_SIDE, fit_within, parse_inputs
from service.simulator.images import render_image
from tests.test_bfl_schema import highest, lowest, minimal, spread, submit_body
from tests.test_simulator import BFL_KEY, FAST, poll_until_terminal, record, serving

pytestmark = pytest.mark.anyio

MODELS = Catalog.default().models("bfl")
every_model = pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])


@asynccontextmanager
async def simulated_bfl() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_simulator_app(FAST, rand=random.Random(7))
    async with serving(app) as base, httpx.AsyncClient(base_url=base, trust_env=False) as client:
        yield client, app.state.simulator


def picture(size: tuple[int, int], colour: tuple[int, int, int], *, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@every_model
def test_every_body_the_catalog_allows_is_accepted_by_the_simulator(model: Model) -> None:
    """The known mismatch: a FLUX.2 size the catalog accepts (64, or 2000: no step, no maximum)
    got a 202 from fluxhook and then a 422 from the simulator. The catalog is the authority."""
    for case, value in spread(model):
        path, body = submit_body(model, value)
        inputs, errors = parse_inputs(path.removeprefix("/v1/"), body)
        assert errors == [] and inputs is not None, (case, errors)


@every_model
def test_one_step_past_a_catalog_bound_is_refused_by_the_simulator_too(model: Model) -> None:
    checked = 0
    for name, spec in model.parameters.items():
        if spec.get("type") not in ("integer", "number") or name == "seed":
            continue  # the seed's bound is fluxhook's own, not BFL's
        step = spec.get("multipleOf", 1)
        for past in (lowest(spec) - step, *((highest(spec) + step,) if "maximum" in spec else ())):
            _, body = submit_body(model, minimal(model))
            body[name] = past
            inputs, errors = parse_inputs(model.native_id, body)
            assert inputs is None and [e["loc"] for e in errors] == [["body", name]], (name, past)
            checked += 1
    assert checked


def test_an_unbounded_flux_2_size_is_drawn_within_the_render_budget() -> None:
    inputs, errors = parse_inputs("flux-2-pro", {"prompt": "p", "width": 10**40, "height": 64})
    assert errors == [] and inputs is not None
    assert inputs.width * inputs.height <= RENDER_MAX_PIXELS and inputs.height >= 1
    assert fit_within(2048, 1024, RENDER_MAX_PIXELS, RENDER_MAX_SIDE) == (2048, 1024)
    assert fit_within(4096, 4096, RENDER_MAX_PIXELS, RENDER_MAX_SIDE) == (2048, 2048)
    assert fit_within(64, 40000, RENDER_MAX_PIXELS, RENDER_MAX_SIDE) == (26, 16383)


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "png"])
def test_a_flux_2_size_wider_than_any_encoder_allows_still_renders(fmt: str) -> None:
    # WebP encodes at most 16,383 pixels a side (the fuzz suite once drew 20,000 x 64): the
    # simulator must draw it smaller, not fail in its background work.
    inputs, errors = parse_inputs("flux-2-pro", {"prompt": "p", "width": 20000, "height": 64,
                                                 "output_format": fmt})
    assert errors == [] and inputs is not None
    assert (inputs.width, inputs.height) == (16383, 52)
    data, _ = render_image(prompt="p", seed=1, width=inputs.width, height=inputs.height, fmt=fmt)
    assert opened(data).size == (16383, 52)


async def test_a_fill_job_keeps_the_picture_where_the_mask_is_black() -> None:
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (32, 0, 64, 48))  # repaint the right half
    mask_png = io.BytesIO()
    mask.save(mask_png, "PNG")
    async with simulated_bfl() as (client, _):
        submitted = await client.post("/v1/flux-pro-1.0-fill", headers=BFL_KEY, json={
            "image": b64(picture((64, 48), (250, 0, 0))), "mask": b64(mask_png.getvalue()),
            "prompt": "a blue door", "output_format": "png", "steps": 15, "guidance": 100})
        assert submitted.status_code == 200, submitted.text
        result = await poll_until_terminal(client, submitted.json()["polling_url"], BFL_KEY)
        image = opened((await client.get(result["result"]["sample"])).content)
        task = await record(client, submitted.json()["id"])

    assert image.size == (64, 48)
    assert task["edit"]["kind"] == "fill" and task["edit"]["mask_bytes"] > 0
    kept = {image.getpixel((x, y)) for x in range(0, 32) for y in range(48)}
    assert kept == {(250, 0, 0)}  # black in the mask: the input's red, untouched
    drawn = {image.getpixel((x, y)) for x in range(32, 64) for y in range(48)}
    assert drawn != {(250, 0, 0)}  # white in the mask: the simulator's own drawing


async def test_a_fill_job_without_a_mask_repaints_the_transparent_part() -> None:
    source = Image.new("RGBA", (40, 40), (0, 0, 250, 255))
    source.paste((0, 0, 0, 0), (0, 0, 40, 20))  # transparent top half
    data = io.BytesIO()
    source.save(data, "PNG")
    async with simulated_bfl() as (client, _):
        submitted = await client.post("/v1/flux-pro-1.0-fill", headers=BFL_KEY,
                                      json={"image": b64(data.getvalue()), "output_format": "png"})
        result = await poll_until_terminal(client, submitted.json()["polling_url"], BFL_KEY)
        image = opened((await client.get(result["result"]["sample"])).content)
    assert {image.getpixel((x, y)) for x in range(40) for y in range(20, 40)} == {(0, 0, 250)}


async def test_an_expand_job_frames_the_picture_with_its_margins() -> None:
    async with simulated_bfl() as (client, _):
        submitted = await client.post("/v1/flux-pro-1.0-expand", headers=BFL_KEY, json={
            "image": b64(picture((30, 20), (0, 250, 0))), "top": 10, "bottom": 0, "left": 5,
            "right": 15, "output_format": "png"})
        assert submitted.status_code == 200, submitted.text
        result = await poll_until_terminal(client, submitted.json()["polling_url"], BFL_KEY)
        image = opened((await client.get(result["result"]["sample"])).content)
        task = await record(client, submitted.json()["id"])
    assert image.size == (5 + 30 + 15, 10 + 20)
    assert task["edit"]["margins"] == {"top": 10, "bottom": 0, "left": 5, "right": 15}
    assert {image.getpixel((x, y)) for x in range(5, 35) for y in range(10, 30)} == {(0, 250, 0)}


@pytest.mark.parametrize(("model", "body", "field"), [
    ("flux-pro-1.0-fill", {"prompt": "p"}, "image"),
    ("flux-pro-1.0-fill", {"image": "bm90IGFuIGltYWdl"}, "image"),  # base64, but not an image
    ("flux-pro-1.0-fill", {"image": b64(picture((8, 8), (1, 2, 3))),
                           "mask": b64(picture((9, 8), (255, 255, 255)))}, "mask"),
    ("flux-pro-1.0-fill", {"image": b64(picture((8, 8), (1, 2, 3))), "steps": 14}, "steps"),
    ("flux-pro-1.0-expand", {"image": b64(picture((8, 8), (1, 2, 3))), "left": 2049}, "left"),
    ("flux-2-klein-9b-preview", {"prompt": "p", "input_image_5": "https://x/5.png"}, "input_image_5"),
    ("flux-2-pro-preview", {"prompt": "p", "width": 63}, "width"),
    ("flux-2-pro-preview", {"prompt": "p", "safety_tolerance": 6}, "safety_tolerance"),
])
async def test_the_simulator_refuses_what_bfl_would(model: str, body: dict[str, Any],
                                                   field: str) -> None:
    async with simulated_bfl() as (client, sim):
        response = await client.post(f"/v1/{model}", headers=BFL_KEY, json=body)
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]
        assert sim.tasks == {}


async def test_a_flux_2_preview_makes_the_size_asked_for() -> None:
    async with simulated_bfl() as (client, _):
        submitted = await client.post("/v1/flux-2-pro-preview", headers=BFL_KEY, json={
            "prompt": "tall and thin", "width": 64, "height": 1000, "input_image": "https://x/1.png",
            "input_image_8": "https://x/8.png"})
        assert submitted.status_code == 200, submitted.text
        result = await poll_until_terminal(client, submitted.json()["polling_url"], BFL_KEY)
        image = opened((await client.get(result["result"]["sample"])).content)
    assert image.size == (64, 1000)
