"""Subscriptions, the delivery log, redelivery and recovery, and the service-wide secret."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handlers.body import read_json
from service.context import WorkContext
from service.errors import NotFound
from service.fields import only_params
from service.subscriptions import (
    change_subscription,
    delivery_document,
    missing_subscription,
    parse_new_subscription,
    parse_since,
    parse_subscription_changes,
    recover_deliveries,
    rotate_subscription_secret,
    subscription_document,
)
from service.subscriptions import redeliver as redeliver_one


def _ctx(request: Request) -> WorkContext:
    ctx: WorkContext = request.state.ctx
    return ctx


async def create_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    new = parse_new_subscription(ctx, await read_json(request, limit=ctx.settings.max_body_bytes))
    sub = await ctx.store.subscriptions.create_subscription(new)
    # The secret is shown here, once; later reads never include it.
    return JSONResponse(subscription_document(sub, with_secret=True), status_code=201)


async def list_subscriptions(request: Request) -> Response:
    only_params(request.query_params, ())
    subs = await _ctx(request).store.subscriptions.list_subscriptions()
    return JSONResponse({"data": [subscription_document(s) for s in subs]})


async def get_subscription(request: Request) -> Response:
    sub_id = request.path_params["subscription_id"]
    sub = await _ctx(request).store.subscriptions.get_subscription(sub_id)
    if sub is None:
        raise missing_subscription(sub_id)
    return JSONResponse(subscription_document(sub))


async def update_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    sub_id = request.path_params["subscription_id"]
    changes = parse_subscription_changes(ctx, await read_json(request, limit=ctx.settings.max_body_bytes))
    return JSONResponse(subscription_document(await change_subscription(ctx, sub_id, changes)))


async def delete_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    sub_id = request.path_params["subscription_id"]
    if not await ctx.store.subscriptions.delete_subscription(sub_id, now=ctx.clock()):
        raise missing_subscription(sub_id)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    sub = await rotate_subscription_secret(_ctx(request), request.path_params["subscription_id"])
    return JSONResponse(subscription_document(sub, with_secret=True))


async def subscription_deliveries(request: Request) -> Response:
    ctx = _ctx(request)
    sub_id = request.path_params["subscription_id"]
    only_params(request.query_params, ())
    if await ctx.store.subscriptions.get_subscription(sub_id) is None:
        raise missing_subscription(sub_id)
    rows = await ctx.store.deliveries.list_deliveries(subscription_id=sub_id)
    return JSONResponse({"data": [delivery_document(d, a) for d, a in rows]})


async def recover(request: Request) -> Response:
    since = parse_since(request.query_params.get("since"))
    count = await recover_deliveries(_ctx(request), request.path_params["subscription_id"], since=since)
    return JSONResponse({"recovered": count}, status_code=202)


async def job_deliveries(request: Request) -> Response:
    ctx = _ctx(request)
    job_id = request.path_params["job_id"]
    only_params(request.query_params, ())
    if await ctx.store.jobs.get_job(job_id) is None:
        raise NotFound(f"no job {job_id!r}", details=[{"field": "job_id", "rule": "exists"}])
    rows = await ctx.store.deliveries.list_deliveries(job_id=job_id)
    return JSONResponse({"data": [delivery_document(d, a) for d, a in rows]})


async def redeliver(request: Request) -> Response:
    found = await redeliver_one(_ctx(request), request.path_params["delivery_id"])
    return JSONResponse(delivery_document(*found), status_code=202)


async def webhook_secret(request: Request) -> Response:
    """The whsec_ secret that signs per-job notifications (those sent to a job's webhook_url)."""
    return JSONResponse({"secret": _ctx(request).settings.webhook_secret})
