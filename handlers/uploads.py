"""Reference-image uploads: POST /v1/uploads, and the signed URL providers fetch them from."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive

from handlers.blobs import serve_blob
from service.context import WorkContext
from service.errors import MalformedRequest, NotFound, PayloadTooLarge, ValidationFailed
from service.parsing import parse_count
from service.uploads import store_upload, upload_document
from storage.records import UploadRecord

MULTIPART_OVERHEAD = 65_536  # room for boundaries and part headers around the file


async def create_upload(request: Request) -> Response:
    """The image is the request body (`--data-binary @cat.png -H 'Content-Type: image/png'`) or
    the `file` field of a multipart form (`-F file=@cat.png`)."""
    ctx: WorkContext = request.state.ctx
    limit = ctx.settings.upload_max_bytes
    declared = parse_count(request.headers.get("content-length"))
    if declared is not None and declared > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            upload = await _store_form_upload(ctx, request, limit)
        else:
            upload = await store_upload(ctx, request.stream(), request.headers.get("content-type"))
    except ClientDisconnect as exc:
        raise MalformedRequest("client disconnected before sending the whole upload") from exc
    return JSONResponse(upload_document(ctx, upload), status_code=201)


async def _store_form_upload(ctx: WorkContext, request: Request, limit: int) -> UploadRecord:
    # Starlette spools file parts to a temporary file with no total cap, so the stream it
    # reads is capped here; store_upload then sniffs and caps the file itself.
    capped = Request(request.scope, _capped(request.receive, limit + MULTIPART_OVERHEAD, limit))
    try:
        form = await capped.form(max_files=1, max_fields=10)
    except MultiPartException as exc:
        raise MalformedRequest(
            f"multipart body is malformed: {exc.message}", details=[{"field": "(body)", "rule": "multipart"}]
        ) from exc
    try:
        files = [v for k, v in form.multi_items() if isinstance(v, UploadFile) and k == "file"]
        if not files:
            raise ValidationFailed(
                "a multipart upload needs its image in the field 'file'",
                details=[{"field": "file", "rule": "required"}],
            )
        file = files[0]

        async def chunks() -> AsyncIterator[bytes]:
            while data := await file.read(65_536):
                yield data

        return await store_upload(ctx, chunks(), file.content_type)
    finally:
        await form.close()


def _capped(receive: Receive, cap: int, limit: int) -> Receive:
    seen = 0

    async def capped_receive() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > cap:
            raise _too_large(limit)
        return message

    return capped_receive


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"upload is larger than {limit} bytes",
        details=[{"field": "(body)", "rule": "maxBytes", "maximum": limit}],
    )


async def get_upload(request: Request) -> Response:
    """GET /uploads/{token}: no credentials needed; the token is signed and expires."""
    ctx: WorkContext = request.state.ctx
    upload_id = ctx.upload_tokens.read(request.path_params["token"], max_age_s=ctx.settings.upload_url_ttl_s)
    upload = await ctx.store.uploads.get_upload(upload_id)
    missing = NotFound("no such upload", details=[{"field": "token", "rule": "exists"}])
    if upload is None:
        raise missing
    etag = f'"{upload.sha256}"'
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={"ETag": etag})
    return await serve_blob(ctx, upload.sha256, upload.content_type, headers={"ETag": etag}, missing=missing)
