"""The baseline for bench/ingest.py: a bare Starlette endpoint that only reads the body."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.event_loop import EVENT_LOOP


async def receive(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": True, "bytes": len(body)})


app = Starlette(routes=[Route("/v1/callbacks/{provider}/{token}", receive, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop=EVENT_LOOP, access_log=False)
