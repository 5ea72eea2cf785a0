"""Downstream receivers for notification tests: real Starlette apps that record what arrives."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    answered: int | str  # the status sent, or "slow" when the sender had already given up
    arrived_at: float = 0.0  # time.time() when the request came in

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each webhook-id's first `fail_first` attempts with `failure` (503, or "slow"),
    then 2xx. On job.succeeded it fetches the output from fluxhook, as a real consumer would.

    Given a `secret` (whsec_...), it verifies each delivery as a Standard Webhooks consumer
    does, before anything else: one that does not verify is answered 401 and counted in
    `forged`, never recorded as received."""

    fail_first: int = 0
    failure: int | str = 503
    slow_s: float = 2.0
    fetch_outputs: bool = True
    received: list[Received] = field(default_factory=list)
    output_status: dict[str, int] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)
    secret: str | None = None
    forged: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        arrived_at = time.time()
        body = await request.body()
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, dict(request.headers))
            except WebhookVerificationError:
                self.forged += 1
                return JSONResponse({"error": "bad signature"}, status_code=401)
        webhook_id = request.headers["webhook-id"]
        self.attempts[webhook_id] += 1
        answer: int | str = 204
        if self.attempts[webhook_id] <= self.fail_first:
            if self.failure == "slow":
                await anyio.sleep(self.slow_s)  # past the sender's timeout: it has hung up
                self.received.append(
                    Received(
                        webhook_id,
                        request.headers["webhook-timestamp"],
                        request.headers["webhook-signature"],
                        body,
                        "slow",
                        arrived_at,
                    )
                )
                return Response(status_code=204)
            answer = int(self.failure)
        if answer == 204 and self.fetch_outputs:
            payload = json.loads(body)
            if payload["type"] == "job.succeeded":
                async with httpx.AsyncClient() as client:
                    for output in payload["data"]["outputs"]:
                        self.output_status[output["url"]] = (await client.get(output["url"])).status_code
        self.received.append(
            Received(
                webhook_id,
                request.headers["webhook-timestamp"],
                request.headers["webhook-signature"],
                body,
                answer,
                arrived_at,
            )
        )
        if answer == 204:
            return Response(status_code=204)
        return JSONResponse({"error": "not now"}, status_code=int(answer))

    def accepted_ids(self) -> list[str]:
        return [r.webhook_id for r in self.received if r.answered == 204]
