"""The baseline for bench/notify.py: a provider callback turned into a bare httpx notification.

On each callback it does the least the same path needs: read the body, check the
`X-BFL-Signature` HMAC, download the image from the provider, and POST a small JSON note to
the receiver, all before answering. No database, no queue, no Standard Webhooks signature,
no retries: the floor fluxhook's overhead is measured against.

    python bench/notify_baseline.py PORT RECEIVER_URL   (secret in NOTIFY_BASELINE_SECRET)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.serving import EVENT_LOOP


def create_app(receiver_url: str, secret: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
        async with httpx.AsyncClient(timeout=30) as client:
            yield {"client": client}

    async def callback(request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get("x-bfl-signature", "").removeprefix("sha256=")
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        report = json.loads(body)
        client: httpx.AsyncClient = request.state.client
        image = await client.get(report["result"]["sample"])
        image.raise_for_status()
        note = {"type": "job.succeeded",
                "data": {"provider_job_id": report["id"], "bytes": len(image.content),
                         "sha256": hashlib.sha256(image.content).hexdigest()}}
        await client.post(receiver_url, json=note)
        return JSONResponse({"received": True})

    return Starlette(routes=[Route("/v1/callbacks/{provider}/{token}", callback, methods=["POST"])],
                     lifespan=lifespan)


if __name__ == "__main__":
    app = create_app(sys.argv[2], os.environ["NOTIFY_BASELINE_SECRET"])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop=EVENT_LOOP, access_log=False)
