"""`make demo`: fluxhook, its embedded provider simulator and a downstream receiver, live.

Everything runs on this machine over real loopback HTTP: fluxhook's API; the simulator, mounted
at /simulator and speaking every provider's protocol (BFL, CometAPI, Apiframe, RunComfy, Replicate,
fal); its signed callbacks (a third are dropped, so the fallback poller has work); and a small
receiver subscribed to fluxhook's notifications, which verifies every signature.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.app import create_app
from service.loopback import bind_loopback, serve, url_of
from service.settings import Settings
from service.simulator import SimulatorConfig, create_simulator_app
from storage.blobs import open_blob_store

UPLOADED = "<uploaded reference image>"
JOBS: list[dict[str, Any]] = [
    {
        "provider": "bfl",
        "model": "flux-pro-1.1",
        "input": {"prompt": "a lighthouse at dusk, oil painting", "width": 1024, "height": 768},
    },
    {
        "provider": "bfl",
        "model": "flux-dev",
        "input": {"prompt": "isometric tiny city, soft light", "width": 768, "height": 1024, "steps": 28},
    },
    {
        "provider": "cometapi",
        "model": "flux-pro-1.1",
        "input": {"prompt": "a red fox in fresh snow", "width": 512, "height": 512, "output_format": "png"},
    },
    {
        "provider": "apiframe",
        "model": "flux-pro-1.1",
        "input": {"prompt": "a misty fjord at golden hour", "aspect_ratio": "16:9"},
    },
    {
        "provider": "apiframe",
        "model": "flux-2-dev",
        "input": {"prompt": "macro shot of a dew-covered spiderweb", "steps": 28, "guidance": 3},
    },
    {
        "provider": "runcomfy",
        "model": "flux-kontext-pro",
        "input": {"prompt": "make it winter", "image_url": UPLOADED, "aspect_ratio": "1:1"},
    },
    {
        "provider": "replicate",
        "model": "flux-schnell",
        "input": {"prompt": "a paper boat on a pond, watercolour", "aspect_ratio": "3:2", "steps": 4},
    },
    {
        "provider": "fal",
        "model": "flux-pro-1.1-ultra",
        "input": {"prompt": "a glacier lagoon under northern lights", "aspect_ratio": "21:9", "raw": True},
    },
    {
        "provider": "auto",
        "model": "flux-kontext-pro",
        "input": {"prompt": "add a tiny boat", "image_url": UPLOADED},
    },
]
# BFL's fill model (inpainting): repaint where the uploaded mask is white, the reference's sky.
# The image and mask reach BFL as base64, fetched by fluxhook from its own uploads.
MASK = "<uploaded inpainting mask>"
JOBS.append({
    "provider": "bfl",
    "model": "flux-pro-1.0-fill",
    "input": {"prompt": "a hot-air balloon in the sky", "image_url": UPLOADED, "mask_url": MASK},
})
TERMINAL = {"succeeded", "failed", "cancelled"}
NOTIFIED = ["job.succeeded", "job.failed", "job.cancelled"]


class DemoReceiver:
    """A downstream system: verifies each notification's signature before believing it."""

    def __init__(self) -> None:
        self.secret = ""
        self.seen: list[dict[str, Any]] = []
        self.arrived = anyio.Event()  # set (and replaced) on every notification

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hooks/fluxhook", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        headers = {
            k: request.headers.get(k, "") for k in ("webhook-id", "webhook-timestamp", "webhook-signature")
        }
        try:
            payload = verify(self.secret, body, headers)
        except Exception as exc:  # a forged or mangled notification: refuse it
            self.seen.append({"id": headers["webhook-id"], "verified": False, "error": str(exc)})
            return Response(status_code=400)
        self.seen.append(
            {
                "id": headers["webhook-id"],
                "verified": True,
                "type": payload["type"],
                "job": payload["data"]["id"],
                "status": payload["data"]["status"],
                "outputs": len(payload["data"]["outputs"]),
                "signatures": len(headers["webhook-signature"].split()),
            }
        )
        return Response(status_code=204)


def verify(secret: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """Check with the independent `standardwebhooks` package when installed (make demo installs
    it), else with fluxhook's own signer; either way the signature must match."""
    try:
        from standardwebhooks import Webhook
    except ImportError:
        import hmac

        from service.webhook_signing import sign

        expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
        if not any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split()):
            raise ValueError("signature mismatch") from None
        return dict(json.loads(body))
    return dict(Webhook(secret).verify(body, headers))


def demo_settings(data_dir: Path, public_url: str) -> Settings:
    env = {
        "FLUXHOOK_DATA_DIR": str(data_dir),
        "FLUXHOOK_PUBLIC_URL": public_url,
        "FLUXHOOK_SIMULATOR": "on",
        "FLUXHOOK_POLL_GRACE_SECONDS": "4",
        "FLUXHOOK_POLL_BASE_SECONDS": "1",
        "FLUXHOOK_POLL_MAX_SECONDS": "2",
        "FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback",  # the receiver runs on this machine
        "FLUXHOOK_LOG_LEVEL": "warning",
    }
    return Settings.from_env(env)


def reference_png() -> bytes:
    image = Image.new("RGB", (320, 240), (40, 90, 160))
    for x in range(0, 320, 40):
        image.paste((230, 200, 60), (x, 180, x + 20, 240))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def inpainting_mask() -> bytes:
    """White over the top half of `reference_png`: the part BFL's fill model repaints."""
    mask = Image.new("L", (320, 240), 0)
    mask.paste(255, (0, 0, 320, 120))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


async def run_demo(data_dir: Path) -> int:
    sock = bind_loopback()
    base = url_of(sock)
    settings = demo_settings(data_dir, base)
    simulator = create_simulator_app(
        SimulatorConfig(latency_s=(1.0, 4.0), callback_drop_rate=0.34, callback_duplicate_rate=0.1, seed=2026)
    )
    receiver = DemoReceiver()
    started = time.monotonic()
    async with (
        serve(receiver.app()) as receiver_url,
        serve(create_app(settings, simulator=simulator), sock),
        httpx.AsyncClient(base_url=base, timeout=30) as client,
    ):
        print(
            f"fluxhook on {base}  (simulator at {base}/simulator, receiver at {receiver_url}, "
            f"data in {data_dir})\n"
        )
        sub = (
            await client.post(
                "/v1/subscriptions",
                json={
                    "url": f"{receiver_url}/hooks/fluxhook",
                    "events": NOTIFIED,
                    "description": "demo receiver",
                },
            )
        ).json()
        receiver.secret = sub["secret"]
        print(f"subscribed the receiver to {', '.join(NOTIFIED)} as {sub['id']}")
        upload = (
            await client.post("/v1/uploads", content=reference_png(), headers={"Content-Type": "image/png"})
        ).json()
        print(f"uploaded a reference image: {upload['url'][:70]}…")
        mask = (
            await client.post("/v1/uploads", content=inpainting_mask(), headers={"Content-Type": "image/png"})
        ).json()
        refused = await client.post(
            "/v1/jobs",
            json={"provider": "apiframe", "model": "flux-2-dev", "input": {"prompt": "x", "guidance": 12}},
        )
        print(
            f"bad input is refused before any provider is paid: HTTP {refused.status_code} "
            f"{refused.json()['error']['details'][0]}\n"
        )
        ids = []
        for spec in JOBS:
            body = json.loads(json.dumps(spec).replace(UPLOADED, upload["url"]).replace(MASK, mask["url"]))
            response = await client.post("/v1/jobs", json={**body, "metadata": {"demo": True}})
            response.raise_for_status()
            ids.append(response.json()["id"])
            print(
                f"submitted {ids[-1]}  {response.json()['provider']:<9} {spec['model']:<17} "
                f"{spec['input']['prompt']}"
            )
        print()
        final = await watch(client, ids, started)
        await wait_for_notifications(receiver, len(ids))
    return summarize(final, receiver, settings)


async def watch(client: httpx.AsyncClient, ids: list[str], started: float) -> dict[str, dict[str, Any]]:
    """Print each status change as it happens; return the final documents."""
    seen: dict[str, str] = {}
    latest: dict[str, dict[str, Any]] = {}
    with anyio.fail_after(120):
        while True:
            for job_id in ids:
                doc = (await client.get(f"/v1/jobs/{job_id}")).json()
                latest[job_id] = doc
                if seen.get(job_id) != doc["status"]:
                    seen[job_id] = doc["status"]
                    how = f" (via {doc['completion_source']})" if doc["completion_source"] else ""
                    done = sum(1 for s in seen.values() if s in TERMINAL)
                    print(
                        f"[{time.monotonic() - started:5.1f}s] {job_id}  {doc['provider']:<9} "
                        f"{doc['status']:<9}{how:<16} {done}/{len(ids)} done"
                    )
            if all(seen.get(j) in TERMINAL for j in ids):
                return latest
            await anyio.sleep(0.25)


async def wait_for_notifications(receiver: DemoReceiver, count: int) -> None:
    with anyio.move_on_after(15):
        while len({s["id"] for s in receiver.seen if s["verified"]}) < count:
            await receiver.arrived.wait()


def summarize(final: dict[str, dict[str, Any]], receiver: DemoReceiver, settings: Settings) -> int:
    blobs = open_blob_store(settings.blob_location, aws=settings.aws)
    print("\njobs")
    ok = True
    for doc in final.values():
        expected = doc["status"] == "succeeded" and len(doc["outputs"]) == 1
        ok &= expected
        tried = " → ".join(f"{a['provider']}:{a['outcome']}" for a in doc["attempts"])
        print(
            f" {'ok ' if expected else 'BAD'} {doc['id']}  {doc['status']:<9} via "
            f"{doc['completion_source'] or '-':<8} {doc['provider']}/{doc['model']}  ({tried})"
        )
        for out in doc["outputs"]:
            print(f"       {out['content_type']:<10} {out['bytes']:>8} bytes  sha256 {out['sha256'][:16]}…")
            print(f"       stored at {blobs.describe(out['sha256'])}")
        if doc["error"]:
            print(f"       error {doc['error']['code']}: {doc['error']['message']}")
    print("\nnotifications the receiver got (signatures checked with standardwebhooks)")
    for seen in receiver.seen:
        if seen["verified"]:
            print(
                f"  verified  {seen['id']}  {seen['type']:<14} {seen['job']}  {seen['status']}, "
                f"{seen['outputs']} output(s)"
            )
        else:
            print(f"  REFUSED   {seen['id']}  {seen['error']}")
    verified = {s["job"] for s in receiver.seen if s["verified"]}
    ok &= verified == set(final) and all(s["verified"] for s in receiver.seen)
    print(
        "\nevery job finished and was notified as expected"
        if ok
        else "\nsome jobs did not finish or were not notified as expected"
    )
    return 0 if ok else 1


def main() -> int:
    data_dir = Path(os.environ.get("FLUXHOOK_DEMO_DIR", "./data/demo")).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)  # a fresh demo every time
    return anyio.run(run_demo, data_dir)


if __name__ == "__main__":
    sys.exit(main())
