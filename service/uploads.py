"""Reference images for Kontext edit and `image_prompt`: stored here, fetched by providers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from service.blobs import BlobTooLarge
from service.context import WorkContext
from service.documents import rfc3339
from service.downloads import sniff_image_type
from service.errors import PayloadTooLarge, ValidationFailed
from service.ids import new_upload_id
from storage.records import UploadRecord

_ACCEPTED = ("image/png", "image/jpeg", "image/webp", "image/gif")


async def store_upload(ctx: WorkContext, chunks: AsyncIterator[bytes], declared: str | None) -> UploadRecord:
    """Stream an uploaded image into the blob store: size-capped and type-checked."""
    declared = (declared or "").split(";")[0].strip().lower() or None
    if declared and declared not in (*_ACCEPTED, "application/octet-stream"):
        raise ValidationFailed(f"Content-Type {declared!r} is not an accepted image type", details=[
            {"field": "Content-Type", "rule": "enum", "allowed": list(_ACCEPTED)}])
    limit = ctx.settings.upload_max_bytes
    head = b""
    content_type = None
    try:
        async with ctx.blobs.writer(max_bytes=limit) as writer:
            async for chunk in chunks:
                if content_type is None and len(head) < 16:
                    head += chunk
                    if len(head) < 16:
                        continue
                    content_type = _sniff(head, declared)
                    await writer.write(head)
                    continue
                await writer.write(chunk)
            if content_type is None:
                content_type = _sniff(head, declared)
                await writer.write(head)
            sha256 = await writer.commit()
            size = writer.size
    except BlobTooLarge as exc:
        raise PayloadTooLarge(f"upload is larger than {limit} bytes", details=[
            {"field": "(body)", "rule": "maxBytes", "maximum": limit}]) from exc
    now = ctx.clock()
    record = UploadRecord(new_upload_id(now), sha256, content_type, size, now,
                          now + ctx.ms(ctx.settings.upload_url_ttl_s))
    await ctx.store.uploads.record_upload(record)
    return record


def upload_document(ctx: WorkContext, upload: UploadRecord) -> dict[str, object]:
    token = ctx.upload_tokens.issue(upload.id)
    return {
        "id": upload.id,
        "url": f"{ctx.settings.public_url}/uploads/{token}",
        "sha256": upload.sha256,
        "content_type": upload.content_type,
        "bytes": upload.bytes,
        "expires_at": rfc3339(upload.expires_at),
    }


def _sniff(head: bytes, declared: str | None) -> str:
    found = sniff_image_type(head)
    if found is None:
        raise ValidationFailed("upload is not a PNG, JPEG, WebP or GIF image", details=[
            {"field": "(body)", "rule": "image", "allowed": list(_ACCEPTED)}])
    if declared not in (None, "application/octet-stream", found):
        raise ValidationFailed(f"upload is {found} but was declared {declared}", details=[
            {"field": "Content-Type", "rule": "matches_content", "detected": found}])
    return found
