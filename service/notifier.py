"""The notifier: delivers events to subscriptions and per-job webhook URLs, durably.

Every attempt is signed per Standard Webhooks over the exact bytes sent; only a 2xx counts;
redirects are never followed; retries follow the configured schedule with ±20% jitter and
honour Retry-After on 429/503; a 410 disables the subscription. At most
`webhook_per_destination` deliveries are in flight to one destination, and each has a timeout,
so a slow or dead receiver never delays the others.

While it runs, the notifier is also this process's `Handoff` (service/context.py): a download
that stores a job's outputs leases the deliveries its commit makes in that same transaction and
hands them over, so `job.succeeded` goes out without a claim transaction or a wake-up between
the commit and the send. The lease is a claim's lease: another process cannot send them
meanwhile, and if this one dies first, the lease runs out and any notifier claims them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from service.backoff import parse_retry_after
from service.context import Signal, WorkContext
from service.egress import refused_cause
from service.loops import ClaimLoop
from service.webhook_signing import webhook_headers
from storage.records import AttemptResult, ClaimedDelivery, DeliveryLease, destination_key

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("fluxhook.notifier")

RESPONSE_HEAD_BYTES = 2048  # what the delivery log keeps of each response
JITTER = 0.2  # Svix's JITTER_DELTA


def next_attempt_at(
    attempt: int, *, schedule: tuple[float, ...], now: int, rand: float, retry_after: float | None
) -> int | None:
    """When try `attempt + 1` is due (attempt counts from 1), or None once the schedule is spent."""
    if attempt >= len(schedule):
        return None
    delay = schedule[attempt] * (1 - JITTER + 2 * JITTER * rand)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 86_400.0))
    return now + int(delay * 1000)


class Notifier(ClaimLoop[ClaimedDelivery]):
    """Sends deliveries: one attempt each time a delivery is due (with `only_job`, only that
    job's: serverless mode's request doing the work it caused, service/inline.py)."""

    def __init__(
        self, ctx: WorkContext, *, stop: anyio.Event | None = None, only_job: str | None = None
    ) -> None:
        super().__init__(ctx, stop=stop)
        self._busy: Counter[str] = Counter()
        self.only_job = only_job

    async def send(self, delivery: ClaimedDelivery) -> AttemptResult:
        """One attempt at one delivery, recorded in the delivery log."""
        import httpx  # on the first send: a tick with nothing to deliver never imports it (cold start)

        ctx = self.ctx
        secrets = delivery.secrets or (ctx.settings.webhook_secret,)
        started_at = ctx.clock()
        headers = webhook_headers(secrets, delivery.event_id, started_at // 1000, delivery.body)
        headers["user-agent"] = "fluxhook-webhooks/1"
        status: int | None = None
        received = bytearray()  # what of the response body has come, kept if the time runs out
        error: str | None = None
        retry_after: float | None = None
        began = time.perf_counter()
        try:
            # httpx's timeout bounds each read, not the attempt: a receiver sending a byte now
            # and then would hold the attempt (and, past its lease, see it sent twice at once).
            with anyio.fail_after(ctx.settings.webhook_timeout_s):
                async with ctx.notify_client.stream(
                    "POST", delivery.url, content=delivery.body, headers=headers
                ) as response:
                    status = response.status_code
                    retry_after = parse_retry_after(response.headers.get("retry-after"), now_ms=ctx.clock())
                    await _read_head(response, received)
        except (httpx.TimeoutException, TimeoutError):
            error = f"timed out after {ctx.settings.webhook_timeout_s:g}s"
        except httpx.HTTPError as exc:
            refused = refused_cause(exc)
            error = f"destination refused: {refused.reason}" if refused else f"{type(exc).__name__}"
        duration_ms = int((time.perf_counter() - began) * 1000)
        head = received[:RESPONSE_HEAD_BYTES].decode("utf-8", "replace") if status is not None else None
        delivered = status is not None and 200 <= status < 300
        if status is not None and not delivered:
            error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        retry_at = None
        if not delivered and not delivery.manual:
            retry_at = next_attempt_at(
                delivery.attempt,
                schedule=ctx.settings.webhook_retry_schedule,
                now=ctx.clock(),
                rand=ctx.rand.random(),
                retry_after=retry_after if status in (429, 503) else None,
            )
        disable = "410 Gone" if status == 410 and delivery.subscription_id else None
        result = AttemptResult(delivered, started_at, duration_ms, status, head, error, retry_at, disable)
        with anyio.CancelScope(shield=True):
            await ctx.store.deliveries.record_delivery_attempt(
                delivery,
                result,
                now=ctx.clock(),
                disable_after_ms=ctx.ms(ctx.settings.webhook_disable_after_s),
            )
        await self._count(delivery, result)
        if not delivered:
            log.info(
                "delivery %s (%s) attempt %d failed: %s",
                delivery.id,
                delivery.event_type,
                delivery.attempt,
                error,
            )
        return result

    async def _count(self, delivery: ClaimedDelivery, result: AttemptResult) -> None:
        metrics = self.ctx.metrics
        metrics.delivery(delivered=result.delivered, seconds=result.duration_ms / 1000)
        if result.delivered and not delivery.manual and delivery.event_type == "job.succeeded" \
                and delivery.job_completed_at is not None:
            # Per destination, failed tries' waits included: what a receiver sees.
            metrics.stored_to_notified.observe(
                max(0, self.ctx.clock() - delivery.job_completed_at) / 1000)

    @property
    def concurrency(self) -> int:
        return self.ctx.settings.webhook_concurrency

    @property
    def signal(self) -> Signal:
        return self.ctx.signals.deliveries

    @property
    def lease_ms(self) -> int:
        """How long a delivery is leased for one attempt: past the attempt's own timeout."""
        settings = self.ctx.settings
        return self.ctx.ms(max(settings.task_lease_s, settings.webhook_timeout_s + 5))

    async def run(self) -> None:
        """As `ClaimLoop.run`, and this process's `Handoff` meanwhile."""
        ctx = self.ctx
        if ctx.handoff is None:
            ctx.handoff = self
        try:
            await super().run()
        finally:
            if ctx.handoff is self:
                ctx.handoff = None

    def offer(self, now: int) -> DeliveryLease | None:
        """The lease a write may take for this notifier (`Handoff.offer`): as many deliveries
        as it has free slots, none to a destination at its in-flight cap."""
        free = self.concurrency - self.inflight
        if not self.running or free <= 0:
            return None
        full = tuple(key for key, count in self._busy.items()
                     if count >= self.ctx.settings.webhook_per_destination)
        return DeliveryLease(until=now + self.lease_ms, limit=free, exclude=full)

    def take(self, deliveries: Sequence[ClaimedDelivery]) -> bool:
        """Send `deliveries`, leased as `offer` said, as if this notifier had claimed them
        (`Handoff.take`). A destination's cap may be passed by the few that were leased while
        another claim filled it: the cap keeps a backlog from piling onto one receiver, and
        these are each job's own first try."""
        if not self.running:
            return False
        for delivery in deliveries:
            self._busy[destination_key(delivery.subscription_id, delivery.url)] += 1
        return self.adopt(deliveries)

    async def claim(self, limit: int) -> list[ClaimedDelivery]:
        ctx = self.ctx
        claimed = await ctx.store.deliveries.claim_due_deliveries(
            now=ctx.clock(),
            limit=limit,
            lease_ms=self.lease_ms,
            busy=self._busy,
            per_destination=ctx.settings.webhook_per_destination,
            job_id=self.only_job,
        )
        for delivery in claimed:
            self._busy[destination_key(delivery.subscription_id, delivery.url)] += 1
        return claimed

    async def handle(self, item: ClaimedDelivery) -> None:
        try:
            if (await self.send(item)).delivered:
                return
        except Exception:
            log.exception("delivery %s: unexpected failure; its lease will expire and it is retried", item.id)
        # A retry is scheduled, and a subscription may have been disabled (its event goes to
        # the others): let every loop look. A delivered one left nothing to look for.
        self.ctx.nudge()

    async def hand_back(self, items: list[ClaimedDelivery]) -> int:
        # An interrupted attempt may have reached the receiver; sending it again is the
        # at-least-once promise, with the same webhook-id so receivers can tell.
        return await self.ctx.store.deliveries.release_deliveries([(d.id, d.lease_until) for d in items])

    def released(self, item: ClaimedDelivery) -> None:
        key = destination_key(item.subscription_id, item.url)
        if self._busy[key] >= self.ctx.settings.webhook_per_destination:
            self.ctx.signals.deliveries.fire()  # its destination has a slot again
        self._busy[key] -= 1
        if self._busy[key] <= 0:
            del self._busy[key]

    async def next_due(self) -> int | None:
        # Due rows whose destination is at its cap cannot be sent until a slot frees (which
        # fires the signal); counting them as due would turn the loop's sleep into a spin.
        full = [
            key for key, count in self._busy.items() if count >= self.ctx.settings.webhook_per_destination
        ]
        return await self.ctx.store.deliveries.pending_delivery_due(now=self.ctx.clock(), exclude=full)


async def _read_head(response: httpx.Response, into: bytearray) -> None:
    async for chunk in response.aiter_bytes():
        into.extend(chunk)
        if len(into) >= RESPONSE_HEAD_BYTES:
            break
