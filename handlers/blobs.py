"""Serving a stored image: streamed from the blob store, or a redirect to a presigned URL."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response, StreamingResponse

from service.context import WorkContext
from service.errors import NotFound


async def serve_blob(
    ctx: WorkContext, sha256: str, content_type: str, *, headers: dict[str, str], missing: NotFound
) -> Response:
    """The blob as the response body (Content-Length, `headers`), or with
    FLUXHOOK_BLOB_REDIRECT=presigned a 307 to a URL valid FLUXHOOK_BLOB_REDIRECT_SECONDS."""
    settings = ctx.settings
    if settings.blob_redirect == "presigned":
        if not await ctx.blobs.exists(sha256):
            raise missing
        url = await ctx.blobs.presigned_url(sha256, expires_s=settings.blob_redirect_s)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"ETag": headers["ETag"]})
    content = await ctx.blobs.open(sha256)
    if content is None:
        raise missing
    return StreamingResponse(
        content.chunks,
        media_type=content_type,
        headers={**headers, "Content-Length": str(content.size)},
    )
