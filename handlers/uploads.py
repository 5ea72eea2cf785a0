"""Reference-image uploads: POST /v1/uploads, and the signed URL providers fetch them from."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response

from service.context import WorkContext
from service.errors import MalformedRequest, NotFound, PayloadTooLarge
from service.parsing import parse_count
from service.uploads import store_upload, upload_document


async def create_upload(request: Request) -> Response:
    """The request body is the image itself (`curl --data-binary @cat.png -H 'Content-Type: image/png'`)."""
    ctx: WorkContext = request.state.ctx
    limit = ctx.settings.upload_max_bytes
    declared = parse_count(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"upload is larger than {limit} bytes",
                              details=[{"field": "(body)", "rule": "maxBytes", "maximum": limit}])
    try:
        upload = await store_upload(ctx, request.stream(), request.headers.get("content-type"))
    except ClientDisconnect as exc:
        raise MalformedRequest("client disconnected before sending the whole upload") from exc
    return JSONResponse(upload_document(ctx, upload), status_code=201)


async def get_upload(request: Request) -> Response:
    """GET /uploads/{token}: no credentials needed; the token is signed and expires."""
    ctx: WorkContext = request.state.ctx
    upload_id = ctx.upload_tokens.read(request.path_params["token"],
                                       max_age_s=ctx.settings.upload_url_ttl_s)
    upload = await ctx.store.get_upload(upload_id)
    if upload is None or not ctx.blobs.exists(upload.sha256):
        raise NotFound("no such upload", details=[{"field": "token", "rule": "exists"}])
    return FileResponse(ctx.blobs.path_for(upload.sha256), media_type=upload.content_type,
                        headers={"ETag": f'"{upload.sha256}"'})
