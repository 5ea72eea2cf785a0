"""The live simulator: config, task table, injected randomness and clock, background callbacks."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx

from service.simulator.callbacks import Callback, CallbackFormat, deliver
from service.simulator.config import SimulatorConfig
from service.simulator.images import render_edit, render_image
from service.simulator.state import NATIVE_STATUS, TERMINAL, Edit, Fate, Phase, Task, Webhook

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    """An injected failure for one request: 429 with Retry-After, or 503 (maybe as HTML)."""

    status: int
    html: bool = False


@dataclass
class AccountStats:
    """What one protocol's account saw, for tests of fluxhook's own limits (`GET /_sim/stats`)."""

    submitted: int = 0
    peak_active: int = 0  # the most tasks active at once (reached, by definition, at a submit)
    answered_429: int = 0  # every 429 answered, injected or past max_active_tasks


class Simulator:
    """State shared by every simulated provider; ``app.state.simulator`` is one of these."""

    def __init__(self, config: SimulatorConfig, *, rand: random.Random, clock: Callable[[], float]) -> None:
        self.config = config
        self.rand = rand
        self.clock = clock
        self.tasks: dict[str, Task] = {}
        # Apiframe Idempotency-Key: (api key, idempotency key) -> job id.
        self.idempotency: dict[tuple[str, str], str] = {}
        self.stats: dict[str, AccountStats] = {protocol: AccountStats() for protocol in NATIVE_STATUS}
        # Replicate's per-account `whsec_` callback signing secrets, by API key.
        self.signing_secrets: dict[str, str] = {}
        self.client: httpx.AsyncClient | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self, transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[Simulator]:
        """Own the callback client and background work for the app's lifespan.

        On exit, pending callback deliveries are cancelled first, then the client is closed.
        """
        # trust_env=False: callbacks go straight to the receiver, never via an env proxy.
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            self.client = client
            try:
                async with anyio.create_task_group() as group:
                    self._task_group = group
                    try:
                        yield self
                    finally:
                        group.cancel_scope.cancel()
            finally:
                self._task_group = None
                self.client = None

    def update_config(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Swap in a config with the given knobs changed; raises KnobError naming a bad knob."""
        self.config = self.config.with_changes(changes)
        return self.config

    def check_key(self, presented: str | None) -> int | None:
        """401 for a missing key, 403 for a key other than the configured one, else None."""
        if not presented:
            return 401
        expected = self.config.api_key
        if expected is not None and not hmac.compare_digest(presented.encode(), expected.encode()):
            return 403
        return None

    def signing_secret(self, api_key: str) -> str:
        """The account's callback signing secret, made on first use. Not drawn from `rand`, so
        asking for it never reshuffles the tasks' fates."""
        if api_key not in self.signing_secrets:
            self.rotate_signing_secret(api_key)
        return self.signing_secrets[api_key]

    def rotate_signing_secret(self, api_key: str) -> str:
        """A new secret for the account; callbacks sent from now on are signed with it only."""
        self.signing_secrets[api_key] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        return self.signing_secrets[api_key]

    def draw_fault(self, stage: str) -> Fault | None:
        """Maybe fail this request, per the submit_* or poll_* rates; stage is submit|poll."""
        rate_429 = getattr(self.config, f"{stage}_429_rate")
        rate_5xx = getattr(self.config, f"{stage}_5xx_rate")
        if not (rate_429 or rate_5xx):
            return None  # draw nothing, so enabling faults does not reshuffle other fates
        roll, html = self.rand.random(), self.rand.random() < 0.5
        if roll < rate_429:
            return Fault(429)
        if roll < rate_429 + rate_5xx:
            return Fault(503, html=html)
        return None

    def active_tasks(self, protocol: str) -> int:
        """Tasks submitted through `protocol` and not yet terminal: what BFL's limit counts."""
        now = self.clock()
        return sum(1 for t in self.tasks.values() if t.protocol == protocol and t.phase(now) not in TERMINAL)

    def at_active_limit(self, protocol: str) -> bool:
        """True when one more task would exceed `max_active_tasks` (0: no limit)."""
        limit = self.config.max_active_tasks
        return limit > 0 and self.active_tasks(protocol) >= limit

    def public_stats(self) -> dict[str, dict[str, int]]:
        """Per protocol: the counters and the tasks active now."""
        return {protocol: {**asdict(stats), "active": self.active_tasks(protocol)}
                for protocol, stats in self.stats.items()}

    def submit(
        self,
        *,
        protocol: str,
        model: str,
        prompt: str,
        seed: int | None,
        width: int,
        height: int,
        fmt: str,
        base_url: str,
        webhook: Webhook | None = None,
        callback_format: CallbackFormat | None = None,
        cost: float = 0.0,
        idempotency_fingerprint: str | None = None,
        edit: Edit | None = None,
    ) -> Task:
        """Create a task, drawing its whole fate now, and schedule its callbacks if any."""
        cfg, draw = self.config, self.rand
        # Always the same number of draws, so one seed gives one sequence of fates.
        task_id = str(uuid.UUID(int=draw.getrandbits(128), version=4))
        latency = draw.uniform(*cfg.latency_s)
        roll, coin = draw.random(), draw.random()
        drop = draw.random() < cfg.callback_drop_rate
        duplicate = draw.random() < cfg.callback_duplicate_rate
        unsigned = draw.random() < cfg.unsigned_callback_rate
        delay = draw.uniform(*cfg.callback_delay_s)
        drawn_seed = draw.randrange(2**32)
        # Drawn only when asked for, so seeds chosen before these knobs keep their fates.
        replayed = bool(cfg.replayed_callback_rate) and draw.random() < cfg.replayed_callback_rate
        stale = bool(cfg.stale_callback_rate) and draw.random() < cfg.stale_callback_rate
        if roll < cfg.failure_rate:
            outcome = Phase.FAILED
        elif roll < cfg.failure_rate + cfg.moderation_rate:
            outcome = Phase.REQUEST_MODERATED if coin < 0.5 else Phase.CONTENT_MODERATED
        else:
            outcome = Phase.SUCCEEDED
        fate = Fate(
            outcome=outcome,
            latency_s=latency,
            drop_callback=drop,
            duplicate_callback=duplicate,
            unsigned_callback=unsigned,
            callback_delay_s=delay,
            replayed_callback=replayed,
            stale_callback=stale,
        )
        task = Task(
            id=task_id,
            protocol=protocol,
            model=model,
            prompt=prompt,
            seed=drawn_seed if seed is None else seed,
            width=width,
            height=height,
            fmt=fmt,
            created_at=self.clock(),
            fate=fate,
            base_url=base_url,
            webhook=webhook,
            edit=edit,
            cost=cost,
            idempotency_fingerprint=idempotency_fingerprint,
        )
        self.tasks[task_id] = task
        stats = self.stats[protocol]
        stats.submitted += 1
        stats.peak_active = max(stats.peak_active, self.active_tasks(protocol))
        if webhook is not None and callback_format is not None:
            self._spawn(self._run_webhooks, task, callback_format)
        return task

    def find(self, task_id: str, protocol: str) -> Task | None:
        """The task with this id if it was submitted through `protocol`."""
        task = self.tasks.get(task_id)
        return task if task is not None and task.protocol == protocol else None

    async def ensure_rendered(self, task: Task) -> None:
        """Render a succeeded task's image once; later calls return the same bytes."""
        if task.images:
            return
        async with task.render_lock:
            if task.images:
                return
            edit = task.edit
            if edit is None:
                render = functools.partial(render_image, prompt=task.prompt, seed=task.seed,
                                           width=task.width, height=task.height, fmt=task.fmt)
            else:  # fill or expand: the input picture is part of the output
                render = functools.partial(render_edit, kind=edit.kind, image=edit.image, mask=edit.mask,
                                           margins=edit.margins, prompt=task.prompt, seed=task.seed,
                                           width=task.width, height=task.height, fmt=task.fmt)
            # Encoding 1440x1440 takes tens of milliseconds: keep it off the event loop.
            data, content_type = await anyio.to_thread.run_sync(render)
            task.sha256s = [hashlib.sha256(data).hexdigest()]
            task.content_type = content_type
            task.images = [data]

    async def sleep_until(self, moment: float) -> None:
        """Sleep until the injected clock reads `moment` (at once if it already has)."""
        await anyio.sleep(max(0.0, moment - self.clock()))

    async def _run_webhooks(self, task: Task, fmt: CallbackFormat) -> None:
        assert task.webhook is not None
        running_s = task.done_at - task.queued_until
        for fraction in fmt.progress_points(task):
            await self.sleep_until(task.queued_until + fraction * running_s)
            if task.cancelled_at is not None:
                return
            progress = fmt.build(task, "progress", now=self.clock(), config=self.config)
            if progress is not None:
                # Separate so a slow receiver's retries never hold back the terminal callback.
                self._spawn(self._deliver, task, progress)
        await self.sleep_until(task.done_at)
        if task.cancelled_at is not None:
            return
        if task.fate.outcome is Phase.SUCCEEDED:
            await self.ensure_rendered(task)
        if task.fate.drop_callback:
            task.callback_dropped = True
            return
        await anyio.sleep(task.fate.callback_delay_s)
        terminal = fmt.build(task, "terminal", now=self.clock(), config=self.config)
        if terminal is None:
            return
        for _ in range(2 if task.fate.duplicate_callback else 1):
            if await self._deliver(task, terminal):
                task.terminal_callback_acknowledged = True
        if task.fate.replayed_callback:
            await self._replay(task, terminal)

    async def _replay(self, task: Task, callback: Callback) -> None:
        """Send `task`'s terminal callback, byte for byte and validly signed, to the webhook URL
        of the latest other task of its protocol: what an attacker who captured it would do.
        Logged on that task as a "replayed" event, and never retried."""
        victims = [t for t in self.tasks.values()
                   if t is not task and t.protocol == task.protocol and t.webhook is not None]
        if not victims or self.client is None:
            return
        victim = victims[-1]
        assert victim.webhook is not None
        replayed = Callback(event="replayed", body=callback.body, headers=callback.headers)
        await deliver(self.client, victim.webhook.url, replayed, victim, retry_delays_s=(),
                      clock=self.clock)

    async def _deliver(self, task: Task, callback: Callback) -> bool:
        assert task.webhook is not None and self.client is not None
        return await deliver(
            self.client,
            task.webhook.url,
            callback,
            task,
            retry_delays_s=self.config.callback_retry_delays_s,
            clock=self.clock,
        )

    def _spawn(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._task_group is None:
            logger.warning("simulator app is not running its lifespan; callbacks are not sent")
            return
        self._task_group.start_soon(self._guarded, func, *args)

    @staticmethod
    async def _guarded(func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        # One broken callback must not take the lifespan's task group (and the app) down.
        try:
            await func(*args)
        except Exception:
            logger.exception("simulator background work failed")
