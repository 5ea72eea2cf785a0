"""The dashboard's pages and the fragments its JavaScript swaps in (handlers/dashboard/static/)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from handlers.blobs import serve_blob
from handlers.dashboard import Dashboard, back_to
from handlers.events import stream_events
from handlers.jobs import get_output
from service.context import WorkContext
from service.cursors import decode_cursor, encode_cursor
from service.dashboard import PAGE_SIZE, STATUSES, health, job_page, job_row, job_rows
from service.dashboard_sessions import Session
from service.errors import MalformedRequest, NotFound
from service.parsing import parse_count
from service.settings import PROVIDER_NAMES
from service.thumbnails import THUMBNAIL_TYPE, NoThumbnail, thumbnail_of
from storage.records import JOB_EVENT_TYPES


def _ctx(request: Request) -> WorkContext:
    ctx: WorkContext = request.state.ctx
    return ctx


def _filters(request: Request) -> tuple[str | None, str | None]:
    """The list's filters; a value that names no status or provider is no filter."""
    status = request.query_params.get("status") or None
    provider = request.query_params.get("provider") or None
    return (status if status in STATUSES else None, provider if provider in PROVIDER_NAMES else None)


class Pages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def jobs(self, request: Request, session: Session) -> Response:
        """Jobs newest first, filtered by status and provider, kept up to date by the page's
        script from the event stream (it resumes after `last_event`, read before the jobs)."""
        ctx = _ctx(request)
        status, provider = _filters(request)
        cursor = request.query_params.get("before") or None
        try:
            before = decode_cursor(cursor) if cursor else None
        except MalformedRequest:
            before = None
        last_event = await ctx.store.events.latest_event_seq()
        rows = await job_rows(ctx, status=status, provider=provider, before=before, limit=PAGE_SIZE + 1)
        page, more = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
        return self.dash.render(request, session, "jobs.html", {
            "rows": page, "now": ctx.clock(), "status": status, "provider": provider,
            "statuses": STATUSES, "providers": PROVIDER_NAMES, "first_page": before is None,
            "older": encode_cursor(page[-1].job) if more and page else None,
            "last_event": last_event, "health": await health(ctx), "event_types": JOB_EVENT_TYPES,
        })

    async def job_row(self, request: Request, session: Session) -> Response:
        """One row of the list as it is now; 204 when the job is not (or no longer) in the
        filtered list, so the script removes it."""
        ctx = _ctx(request)
        row = await job_row(ctx, request.path_params["job_id"])
        status, provider = _filters(request)
        if row is None or status not in (None, row.job.status) or provider not in (None, row.job.provider):
            return Response(status_code=204)
        return self.dash.render(request, session, "_job_row.html", {"row": row, "now": ctx.clock()})

    async def job(self, request: Request, session: Session) -> Response:
        ctx = _ctx(request)
        job_id = request.path_params["job_id"]
        last_event = await ctx.store.events.latest_event_seq()
        found = await job_page(ctx, job_id)
        if found is None:
            return self.dash.render(request, session, "missing.html", {"what": f"job {job_id}"}, status=404)
        return self.dash.render(request, session, "job.html", {
            "page": found, "job": found.job, "now": ctx.clock(), "last_event": last_event,
            "health": await health(ctx), "event_types": JOB_EVENT_TYPES,
        })

    async def job_live(self, request: Request, session: Session) -> Response:
        """The job page's changing part (status, images, timeline), swapped in by its script."""
        ctx = _ctx(request)
        found = await job_page(ctx, request.path_params["job_id"])
        if found is None:
            raise NotFound("no such job", details=[{"field": "job_id", "rule": "exists"}])
        return self.dash.render(request, session, "_job_live.html", {
            "page": found, "job": found.job, "now": ctx.clock(),
        })

    async def output(self, request: Request, session: Session) -> Response:
        """An output's full image, as GET /v1/jobs/{id}/outputs/{index} serves it."""
        return await get_output(request)

    async def thumbnail(self, request: Request, session: Session) -> Response:
        """An output's thumbnail: made once (service/thumbnails.py), then served from the blob
        store; immutable, as its URL names one output whose images never change."""
        ctx = _ctx(request)
        job_id = request.path_params["job_id"]
        index = parse_count(request.path_params["index"], max_digits=6)
        missing = NotFound("no such output", details=[{"field": "index", "rule": "exists"}])
        output = await ctx.store.jobs.get_output(job_id, index) if index is not None else None
        job = await ctx.store.jobs.get_job(job_id)
        if output is None or job is None or job.outputs_deleted_at is not None:
            raise missing
        try:
            sha256 = await thumbnail_of(ctx, output, makers=self.dash.makers)
        except NoThumbnail as exc:
            raise NotFound("this output has no thumbnail", code="no_thumbnail",
                           details=[{"field": "index", "rule": "image"}]) from exc
        etag = f'"{sha256}"'
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={"ETag": etag})
        return await serve_blob(ctx, sha256, THUMBNAIL_TYPE, missing=missing,
                                headers={"ETag": etag, "Cache-Control": "private, max-age=86400"})

    async def subscriptions(self, request: Request, session: Session) -> Response:
        ctx = _ctx(request)
        subs = await ctx.store.subscriptions.list_subscriptions()
        logs = {sub.id: await ctx.store.deliveries.list_deliveries(subscription_id=sub.id, limit=25)
                for sub in subs}
        return self.dash.render(request, session, "subscriptions.html", {
            "subscriptions": subs, "logs": logs, "now": ctx.clock(), "health": await health(ctx),
            "last_event": await ctx.store.events.latest_event_seq(),
        })

    async def health(self, request: Request, session: Session) -> Response:
        ctx = _ctx(request)
        return self.dash.render(request, session, "_health.html", {"health": await health(ctx)})

    async def events(self, request: Request, session: Session) -> Response:
        """GET /v1/events, for the pages' scripts: the same stream, with the session cookie."""
        return await stream_events(request)

    async def login_form(self, request: Request) -> Response:
        session, fresh = self.dash.session_of(request), None
        target = back_to(request, request.query_params.get("next"))
        if self.dash.sessions.open:
            from starlette.responses import RedirectResponse

            return RedirectResponse(target, status_code=303)
        if session is None:
            session, fresh = self.dash.sessions.start(signed_in=False)
        response = self.dash.render(request, session, "login.html", {"next": target, "error": None})
        if fresh is not None:
            self.dash.set_cookie(response, fresh)
        return response
