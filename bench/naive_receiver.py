"""What a user writes instead of fluxhook, for bench/ingest.py: a durable signed-callback receiver.

Per request: read the body, look up the job's own secret, check the HMAC over the raw bytes,
INSERT the callback and COMMIT with `synchronous=FULL` (on disk before the 200), on the same
uvicorn stack as the other servers.

    .venv/bin/python bench/naive_receiver.py PORT DATABASE

The database holds `secrets(job_id, secret)`, seeded by bench/ingest.py.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.event_loop import EVENT_LOOP

SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets (job_id TEXT PRIMARY KEY, secret TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS callbacks (id INTEGER PRIMARY KEY, job_id TEXT NOT NULL,
                                      body BLOB NOT NULL, received_at INTEGER NOT NULL);
"""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn


def create_app(path: str) -> Starlette:
    conn = connect(path)

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        job_id = request.path_params["job_id"]
        row = conn.execute("SELECT secret FROM secrets WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return JSONResponse({"error": "unknown job"}, status_code=404)
        expected = "sha256=" + hmac.new(row[0].encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("x-bfl-signature", "")):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO callbacks (job_id, body, received_at) VALUES (?, ?, ?)",
                     (job_id, body, time.time_ns() // 1_000_000))
        conn.execute("COMMIT")
        return JSONResponse({"received": True})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/v1/callbacks/bfl/{job_id}", receive, methods=["POST"]),
                             Route("/healthz", healthz)])


if __name__ == "__main__":
    uvicorn.run(create_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop=EVENT_LOOP,
                access_log=False)
