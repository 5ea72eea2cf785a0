"""Download one output image into the blob store: streamed, capped, checked, allow-listed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from service.blobs import BlobStore, BlobTooLarge, BlobUnavailable
from service.errors import OutputRejected, OutputRetryable
from service.parsing import parse_count
from service.urls import check_download_url

if TYPE_CHECKING:
    import httpx

MAX_REDIRECTS = 3

# Magic numbers of the image types providers return (PNG, JPEG, WebP, GIF).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    content_type: str
    bytes: int


def sniff_image_type(head: bytes) -> str | None:
    """The image type the first bytes prove, or None."""
    for magic, content_type in _SIGNATURES:
        if head.startswith(magic):
            return content_type
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


async def download_image(
    client: httpx.AsyncClient,
    url: str,
    *,
    blobs: BlobStore,
    allowed_hosts: tuple[str, ...],
    max_bytes: int,
    timeout: float,
) -> Downloaded:
    """Fetch `url` into `blobs`. OutputRetryable for transient failures, OutputRejected else."""
    import httpx  # on the first download: a tick with nothing due never imports it (cold start)

    for _ in range(MAX_REDIRECTS + 1):
        check_download_url(url, allowed_hosts)
        try:
            async with client.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                _check_status(response.status_code, url)
                declared = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if declared and not declared.startswith(("image/", "application/octet-stream")):
                    raise OutputRejected(f"output is {declared!r}, not an image")
                return await _store(response, blobs, max_bytes)
        except httpx.TimeoutException as exc:
            raise OutputRetryable("output download timed out") from exc
        except httpx.HTTPError as exc:
            raise OutputRetryable(f"output download failed: {type(exc).__name__}") from exc
    raise OutputRejected(f"more than {MAX_REDIRECTS} redirects")


async def _store(response: httpx.Response, blobs: BlobStore, max_bytes: int) -> Downloaded:
    declared = parse_count(response.headers.get("content-length"))
    if declared is not None and declared > max_bytes:
        raise OutputRejected(f"output is {declared} bytes, over the {max_bytes}-byte limit")
    content_type: str | None = None
    head = b""
    try:
        async with blobs.writer(max_bytes=max_bytes) as writer:
            async for chunk in response.aiter_bytes():
                if content_type is None:
                    head += chunk
                    if len(head) < 12:
                        continue
                    content_type = sniff_image_type(head)
                    if content_type is None:
                        raise OutputRejected("output bytes are not a PNG, JPEG, WebP or GIF image")
                    await writer.write(head)
                    continue
                await writer.write(chunk)
            if content_type is None:
                content_type = sniff_image_type(head)
                if content_type is None:
                    raise OutputRejected("output is empty or not an image")
                await writer.write(head)
            sha256 = await writer.commit()
            return Downloaded(sha256, content_type, writer.size)
    except BlobTooLarge as exc:
        raise OutputRejected(f"output is over the {exc.limit}-byte limit") from exc
    except BlobUnavailable as exc:
        raise OutputRetryable(str(exc)) from exc


def _check_status(status: int, url: str) -> None:
    if 200 <= status < 300:
        return
    import httpx  # loaded already: `download_image` imported it

    host = httpx.URL(url).host
    if status in (404, 410):
        # An expired delivery URL answers 404; a fresh poll may not help, so this is final
        # only once the output window has passed (the fetcher decides).
        raise OutputRetryable(f"output URL on {host} answered {status}")
    if status == 429 or status >= 500 or status == 408:
        raise OutputRetryable(f"output URL on {host} answered {status}")
    raise OutputRejected(f"output URL on {host} answered {status}")
