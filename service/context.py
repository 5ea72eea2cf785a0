"""What the workers and the callback intake share: built once by the app's lifespan or CLI."""

from __future__ import annotations

import contextlib
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from service.blobs import BlobStore
from service.callback_keys import CallbackKeyring
from service.catalog import Catalog
from service.contracts import Stores
from service.early_downloads import EarlyDownloads
from service.egress import EgressPolicy
from service.http_clients import HttpClients
from service.providers.base import Adapter, StatusReport
from service.settings import Settings
from service.tokens import CallbackTokens, UploadTokens
from storage.records import ClaimedDelivery, DeliveryLease, TaskLease, TaskRecord

if TYPE_CHECKING:
    import httpx

    from service.metrics import Metrics

Clock = Callable[[], int]  # epoch milliseconds, UTC


class Signal:
    """Wakes every waiter once: they take `current()` before looking for work, then wait on it."""

    def __init__(self) -> None:
        # Made when a waiter takes it, not when fired: a burst of fires with no one waiting in
        # between (a callback recorded per request under load) costs nothing.
        self._event: anyio.Event | None = None

    def current(self) -> anyio.Event:
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def fire(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()


class ParsedCallbacks:
    """Callbacks as parsed when they were recorded, for this process's applier, which would
    otherwise parse the same bytes again (service/callbacks.py). Bounded: when the applier is far
    behind, or another process applies them, the oldest are dropped and parsed again when applied.
    Parsing is pure, so a report kept for a body is the report of any byte-identical body."""

    def __init__(self, most: int = 4096) -> None:
        # Kept by the event loop's thread, taken by the database's (where the applier's
        # transaction runs): each OrderedDict operation is one atomic step under the GIL.
        self._reports: OrderedDict[tuple[str, bytes], StatusReport] = OrderedDict()
        self._most = most

    def keep(self, provider: str, body: bytes, report: StatusReport) -> None:
        if len(self._reports) >= self._most:
            with contextlib.suppress(KeyError):  # taken meanwhile
                self._reports.popitem(last=False)  # the oldest kept
        self._reports[(provider, body)] = report

    def take(self, provider: str, body: bytes) -> StatusReport | None:
        return self._reports.pop((provider, body), None)


class Handoff(Protocol):
    """The notifier running in this process (service/notifier.py), to which a write that makes
    deliveries hands them directly: leased in the write's own transaction (`offer`), then
    started at once (`take`), with no claim and no wake-up in between."""

    def offer(self, now: int) -> DeliveryLease | None:
        """The lease to take for it now, or None when it has no room (or is not running)."""

    def take(self, deliveries: Sequence[ClaimedDelivery]) -> bool:
        """Start sending `deliveries` (leased as `offer` said); False if it no longer runs,
        and the caller hands their leases back."""


class TaskHandoff(Protocol):
    """The worker running in this process (service/worker.py), to which applying a callback
    hands the download it makes due: leased in the applying transaction (`offer`), then started
    at once (`take`), with no claim and no wake-up in between."""

    def offer(self, now: int) -> TaskLease | None:
        """The lease to take for it now, or None when it has no room (or is not running)."""

    def take(self, tasks: Sequence[TaskRecord]) -> bool:
        """Start running `tasks` (leased as `offer` said); False if it no longer runs, and the
        caller hands their leases back."""


@dataclass
class Signals:
    work: Signal = field(default_factory=Signal)  # new tasks for the worker
    deliveries: Signal = field(default_factory=Signal)  # new deliveries for the notifier
    events: Signal = field(default_factory=Signal)  # new events for live streams and ?wait=
    callbacks: Signal = field(default_factory=Signal)  # callbacks recorded, for the applier


@dataclass
class WorkContext:
    settings: Settings
    store: Stores  # the database's stores (service/contracts.py)
    blobs: BlobStore
    adapters: Mapping[str, Adapter]
    catalog: Catalog
    http: HttpClients  # made on first use: `client` and `notify_client` below
    tokens: CallbackTokens
    upload_tokens: UploadTokens
    clock: Clock
    rand: random.Random
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    # Fired whenever something is committed, so in-process loops react at once; also when
    # another process commits work, on any host with PostgreSQL, on this host with SQLite
    # (service/resources.py `open_context` follows the database's wake-ups). Loops also look
    # every `worker_idle_s`: the safety net.
    signals: Signals = field(default_factory=Signals)
    # Replicate's and fal's account-wide callback keys, fetched once and cached.
    keyring: CallbackKeyring = field(default_factory=CallbackKeyring)
    # Recorded callbacks' reports, for the applier (service/callbacks.py).
    parsed_callbacks: ParsedCallbacks = field(default_factory=ParsedCallbacks)
    # Set while this process's notifier runs (Notifier.run): the download hands it the
    # deliveries of the success it commits (service/fetcher.py).
    handoff: Handoff | None = None
    task_handoff: TaskHandoff | None = None
    # Downloads the applier started for this process's worker before their task was committed
    # (service/early_downloads.py), taken by the task when it runs (service/fetcher.py).
    early_downloads: EarlyDownloads = field(default_factory=EarlyDownloads)
    _metrics: Metrics | None = field(default=None, repr=False)

    @property
    def metrics(self) -> Metrics:
        """This process's counters (service/metrics.py), made on first use: prometheus-client
        takes ~50 ms to import, which a tick with nothing due should not pay."""
        if self._metrics is None:
            from service.metrics import Metrics

            self._metrics = Metrics()
        return self._metrics

    @property
    def client(self) -> httpx.AsyncClient:
        """For provider calls and downloads."""
        return self.http.client

    @property
    def notify_client(self) -> httpx.AsyncClient:
        """For notifications: SSRF-guarded, never follows redirects."""
        return self.http.notify

    def nudge(self) -> None:
        # Deliveries first: a notification waiting to go out is what someone is waiting for,
        # so the notifier gets the first thread and connection.
        self.signals.deliveries.fire()
        self.signals.work.fire()
        self.signals.events.fire()

    def ms(self, seconds: float) -> int:
        return int(seconds * 1000)

    def webhook_url(self, provider: str, job_id: str) -> str:
        token = self.tokens.issue(provider, job_id)
        return f"{self.settings.public_url}/v1/callbacks/{provider}/{token}"
