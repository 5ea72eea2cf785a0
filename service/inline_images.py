"""Images a provider takes only as base64: fetched by fluxhook at submit time and inlined.

BFL's schema takes some images as base64 and never as a URL (FLUX1.1's `image_prompt`, fill's
`image` and `mask`, expand's `image`; `Model.inline_images`). Clients give those as URLs like
every other image, an upload's or their own, so the submitter fetches them here and the pure
adapter receives the base64 text. The job keeps the URL; the bytes exist only for the submit.

Each fetch is bounded like an upload (`FLUXHOOK_UPLOAD_MAX_BYTES`) and in time (one
`FLUXHOOK_HTTP_TIMEOUT_SECONDS` for the whole of it, redirects included), and it goes out
through the notifier's SSRF-guarded client (service/egress.py): a client-supplied URL is no
more trusted here than a webhook destination. fluxhook's own upload URLs are read from the
blob store instead, without a request to itself. A fetch that fails is `InputUnavailable`
(service/errors.py), naming the field; the submitter retries it or fails the job.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import anyio

from service.blobs import BlobUnavailable
from service.context import WorkContext
from service.downloads import sniff_image_type
from service.egress import DestinationRefused, EgressPolicy, refused_cause
from service.errors import ApiError, InputUnavailable
from service.parsing import parse_count

if TYPE_CHECKING:
    import httpx

MAX_REDIRECTS = 3


async def inline_images(
    ctx: WorkContext, names: tuple[str, ...], value: Mapping[str, Any]
) -> dict[str, Any]:
    """`value` with each of `names` that holds a URL replaced by its image, base64-encoded."""
    resolved = dict(value)
    for name in names:
        url = value.get(name)
        if isinstance(url, str):
            data = await fetch_image(ctx, name, url)
            resolved[name] = base64.b64encode(data).decode("ascii")
    return resolved


async def fetch_image(ctx: WorkContext, field: str, url: str) -> bytes:
    """The image at `url` (an upload of ours or any http(s) URL), checked to be an image."""
    settings = ctx.settings
    own = f"{settings.public_url}/uploads/"
    try:
        with anyio.fail_after(settings.http_timeout_s):
            if url.startswith(own):
                data = await _read_upload(ctx, field, url[len(own):])
            else:
                data = await _download(ctx.notify_client, ctx.egress, field, url,
                                       limit=settings.upload_max_bytes, timeout=settings.http_timeout_s)
    except TimeoutError:
        raise InputUnavailable(field, f"fetching the image took longer than {settings.http_timeout_s:g}s",
                               retryable=True) from None
    if sniff_image_type(data[:16]) is None:
        raise InputUnavailable(field, "the URL did not give a PNG, JPEG, WebP or GIF image", retryable=False)
    return data


async def _read_upload(ctx: WorkContext, field: str, token: str) -> bytes:
    try:
        upload_id = ctx.upload_tokens.read(token, max_age_s=ctx.settings.upload_url_ttl_s)
    except ApiError as exc:  # 404 not ours or mangled, 410 expired
        raise InputUnavailable(field, f"upload URL refused: {exc.message}", retryable=False) from exc
    upload = await ctx.store.uploads.get_upload(upload_id)
    try:
        content = None if upload is None else await ctx.blobs.open(upload.sha256)
        if upload is None or content is None:
            raise InputUnavailable(field, "the upload no longer exists", retryable=False)
        return b"".join([chunk async for chunk in content.chunks])
    except BlobUnavailable as exc:
        raise InputUnavailable(field, f"the blob store did not answer: {exc}", retryable=True) from exc


async def _download(
    client: httpx.AsyncClient, egress: EgressPolicy, field: str, url: str, *, limit: int, timeout: float
) -> bytes:
    import httpx  # on the first download: a tick with nothing due never imports it (cold start)

    for _ in range(MAX_REDIRECTS + 1):
        host = _host(url)
        try:
            egress.check_url(url)  # the early refusal; the transport checks every connection
            async with client.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                _check_status(field, host, response.status_code)
                return await _read_capped(field, response, limit)
        except DestinationRefused as exc:
            raise InputUnavailable(field, f"image host refused: {exc.reason}", retryable=False) from exc
        except httpx.TimeoutException as exc:
            raise InputUnavailable(field, f"image host {host} timed out", retryable=True) from exc
        except httpx.HTTPError as exc:
            refused = refused_cause(exc)
            if refused is not None:
                raise InputUnavailable(field, f"image host refused: {refused.reason}",
                                       retryable=False) from exc
            raise InputUnavailable(field, f"image host {host} unreachable ({type(exc).__name__})",
                                   retryable=True) from exc
    raise InputUnavailable(field, f"more than {MAX_REDIRECTS} redirects", retryable=False)


def _check_status(field: str, host: str, status: int) -> None:
    if 200 <= status < 300:
        return
    retryable = status in (408, 429) or status >= 500
    raise InputUnavailable(field, f"image host {host} answered HTTP {status}", retryable=retryable)


async def _read_capped(field: str, response: httpx.Response, limit: int) -> bytes:
    too_large = InputUnavailable(field, f"the image is larger than {limit} bytes", retryable=False)
    declared = parse_count(response.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise too_large
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


def _host(url: str) -> str:
    import httpx  # loaded already: `_download` imported it

    try:
        return httpx.URL(url).host or "(no host)"
    except (httpx.InvalidURL, TypeError):
        return "(invalid URL)"
