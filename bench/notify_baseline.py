"""The baselines for bench/notify.py: a provider callback turned into a bare httpx notification.

On each callback it does the least the same path needs: read the body, check the
`X-BFL-Signature` HMAC, download the image from the provider, and POST a small JSON note to
the receiver, all before answering. No queue, no Standard Webhooks signature, no retries.

- Bare (the default): no database and nothing written: the floor fluxhook's overhead is
  measured against (issue 10's ratio).
- `--durable DIR`: the same, plus the least durability fluxhook promises, written inline the
  way a user would by hand: the callback committed to SQLite (WAL, `synchronous=FULL`) before
  anything acts on it, the image written to a file that is fsynced and renamed into place (and
  its directory fsynced), and the success committed (`synchronous=FULL`) before the note is
  sent. What durability alone costs on this machine: a floor no durable server can go below.

    python bench/notify_baseline.py PORT RECEIVER_URL [--durable DIR]
    (secret in NOTIFY_BASELINE_SECRET)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.event_loop import EVENT_LOOP


class DurableLog:
    """The durable steps, inline and blocking (sqlite3 and os calls on the event loop's thread),
    as a hand-written receiver would do them: the fewest hops there are."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.images = directory / "images"
        self.images.mkdir(exist_ok=True)
        self.db = sqlite3.connect(directory / "floor.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS callbacks (id INTEGER PRIMARY KEY, task TEXT, body BLOB, "
                        "sha256 TEXT, succeeded INTEGER NOT NULL DEFAULT 0)")

    def record(self, task: str, body: bytes) -> int:
        with self.db:
            return int(self.db.execute("INSERT INTO callbacks (task, body) VALUES (?, ?)",
                                       (task, body)).lastrowid or 0)

    def store(self, row: int, image: bytes) -> str:
        digest = hashlib.sha256(image).hexdigest()
        final, partial = self.images / digest, self.images / f"{digest}.part"
        with open(partial, "wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
        folder = os.open(self.images, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        with self.db:
            self.db.execute("UPDATE callbacks SET sha256 = ?, succeeded = 1 WHERE id = ?", (digest, row))
        return digest


def create_app(receiver_url: str, secret: str, durable: DurableLog | None = None) -> Starlette:
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
        row = durable.record(report["id"], body) if durable is not None else 0
        client: httpx.AsyncClient = request.state.client
        image = await client.get(report["result"]["sample"])
        image.raise_for_status()
        digest = (durable.store(row, image.content) if durable is not None
                  else hashlib.sha256(image.content).hexdigest())
        note = {"type": "job.succeeded",
                "data": {"provider_job_id": report["id"], "bytes": len(image.content), "sha256": digest}}
        await client.post(receiver_url, json=note)
        return JSONResponse({"received": True})

    return Starlette(routes=[Route("/v1/callbacks/{provider}/{token}", callback, methods=["POST"])],
                     lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("receiver_url")
    parser.add_argument("--durable", type=Path, help="a directory for the durable floor's files")
    args = parser.parse_args()
    app = create_app(args.receiver_url, os.environ["NOTIFY_BASELINE_SECRET"],
                     DurableLog(args.durable) if args.durable else None)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", loop=EVENT_LOOP, access_log=False)
