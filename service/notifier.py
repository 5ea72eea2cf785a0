"""The notifier: delivers events to subscriptions and per-job webhook URLs, durably.

Every attempt is signed per Standard Webhooks over the exact bytes sent; only a 2xx counts;
redirects are never followed; retries follow the configured schedule with ±20% jitter and
honour Retry-After on 429/503; a 410 disables the subscription. At most
`webhook_per_destination` deliveries are in flight to one destination, and each has a timeout,
so a slow or dead receiver never delays the others.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import anyio
import httpx

from service.backoff import parse_retry_after
from service.context import WorkContext
from service.egress import refused_cause
from service.webhook_signing import webhook_headers
from storage.notifications import AttemptResult, ClaimedDelivery, destination_key

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


class Notifier:
    def __init__(self, ctx: WorkContext) -> None:
        self.ctx = ctx
        self._busy: Counter[str] = Counter()

    async def send(self, delivery: ClaimedDelivery) -> AttemptResult:
        """One attempt at one delivery, recorded in the delivery log."""
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
            await ctx.store.record_delivery_attempt(
                delivery,
                result,
                now=ctx.clock(),
                disable_after_ms=ctx.ms(ctx.settings.webhook_disable_after_s),
            )
        if not delivered:
            log.info(
                "delivery %s (%s) attempt %d failed: %s",
                delivery.id,
                delivery.event_type,
                delivery.attempt,
                error,
            )
        return result

    async def run_once(self) -> int:
        """Send every due delivery once (up to the concurrency limits); how many were sent."""
        claimed = await self._claim(self.ctx.settings.webhook_concurrency)
        async with anyio.create_task_group() as group:
            for delivery in claimed:
                group.start_soon(self._send_and_release, delivery)
        return len(claimed)

    async def drain(self, *, max_rounds: int = 1000) -> int:
        total = 0
        for _ in range(max_rounds):
            sent = await self.run_once()
            total += sent
            if sent == 0:
                break
        return total

    async def run(self) -> None:
        """Deliver forever (until cancelled)."""
        settings = self.ctx.settings
        async with anyio.create_task_group() as group:
            while True:
                wake = self.ctx.signals.deliveries.current()
                free = settings.webhook_concurrency - sum(self._busy.values())
                claimed: list[ClaimedDelivery] = []
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except Exception:
                        log.exception("claiming deliveries failed; trying again shortly")
                for delivery in claimed:
                    group.start_soon(self._send_and_release, delivery)
                if claimed and len(claimed) == free:
                    continue
                await self._sleep(wake)

    async def _claim(self, limit: int) -> list[ClaimedDelivery]:
        ctx = self.ctx
        claimed = await ctx.store.claim_due_deliveries(
            now=ctx.clock(),
            limit=limit,
            lease_ms=ctx.ms(max(ctx.settings.task_lease_s, ctx.settings.webhook_timeout_s + 5)),
            busy=self._busy,
            per_destination=ctx.settings.webhook_per_destination,
        )
        for delivery in claimed:
            self._busy[destination_key(delivery.subscription_id, delivery.url)] += 1
        return claimed

    async def _send_and_release(self, delivery: ClaimedDelivery) -> None:
        try:
            await self.send(delivery)
        except Exception:
            log.exception(
                "delivery %s: unexpected failure; its lease will expire and it is retried", delivery.id
            )
        finally:
            key = destination_key(delivery.subscription_id, delivery.url)
            self._busy[key] -= 1
            if self._busy[key] <= 0:
                del self._busy[key]
            self.ctx.signals.deliveries.fire()

    async def _sleep(self, wake: anyio.Event) -> None:
        settings = self.ctx.settings
        wait = settings.worker_idle_s
        # Due rows that cannot be sent until a slot frees (all slots busy, or their destination
        # at its cap) must not cut this sleep short: a freed slot fires `wake`, and counting
        # them as due would turn this sleep into a busy loop.
        full = [key for key, count in self._busy.items() if count >= settings.webhook_per_destination]
        due = None
        if sum(self._busy.values()) < settings.webhook_concurrency:
            try:
                due = await self.ctx.store.pending_delivery_due(exclude=full)
            except Exception:
                due = None
        if due is not None:
            wait = min(wait, max(0.0, (due - self.ctx.clock()) / 1000))
        with anyio.move_on_after(wait):
            await wake.wait()


async def _read_head(response: httpx.Response, into: bytearray) -> None:
    async for chunk in response.aiter_bytes():
        into.extend(chunk)
        if len(into) >= RESPONSE_HEAD_BYTES:
            break
