"""Output thumbnails for the dashboard: made once per output, kept in the blob store.

The first request for an output's thumbnail reads the stored image, scales it down with Pillow
(in a worker thread, a few at a time, so a first look at a page of new jobs does not take
every core), writes the result to the blob store (content-addressed, like every image) and
records its sha256 against the output (`JobStore.record_thumbnail`). Every later request is
served from the blob store: a full image is never resized per request.

Pillow is imported on the first thumbnail, never at start-up (tests/test_cold_start.py).
"""

from __future__ import annotations

import io

import anyio

from service.context import WorkContext
from storage.records import OutputRecord

THUMBNAIL_PX = 320  # the longer side; the list shows them at 96 px, a job page at 160 (2x screens)
THUMBNAIL_TYPE = "image/webp"


class NoThumbnail(Exception):
    """The output's image is not stored, or is not an image Pillow can read."""


def make_thumbnail(image: bytes, *, px: int = THUMBNAIL_PX) -> bytes:
    """A WebP at most `px` on its longer side (never larger than the image), same aspect ratio.
    Pure: bytes in, bytes out; the same image always gives the same bytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as source:
            source.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, much cheaper
            picture = source.convert("RGBA" if source.mode in ("RGBA", "LA", "P") else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise NoThumbnail(str(exc)) from exc
    picture.thumbnail((px, px))
    out = io.BytesIO()
    picture.save(out, format="WEBP", quality=80, method=4)
    return out.getvalue()


async def thumbnail_of(ctx: WorkContext, output: OutputRecord, *, makers: anyio.CapacityLimiter) -> str:
    """The sha256 of the output's thumbnail in the blob store, made now if it was never made
    (or its blob went missing), with at most `makers`' tokens of them being made at once.
    NoThumbnail when the output's image cannot be read."""
    if output.thumb_sha256 is not None and await ctx.blobs.exists(output.thumb_sha256):
        return output.thumb_sha256
    content = await ctx.blobs.open(output.sha256)
    if content is None:
        raise NoThumbnail("the output's image is not in the blob store")
    image = b"".join([chunk async for chunk in content.chunks])
    async with makers:
        data = await anyio.to_thread.run_sync(make_thumbnail, image)
    async with ctx.blobs.writer(max_bytes=max(len(data), 1)) as writer:
        await writer.write(data)
        sha256 = await writer.commit()
    await ctx.store.jobs.record_thumbnail(output.job_id, output.index, sha256, now=ctx.clock())
    return sha256
