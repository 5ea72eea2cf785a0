"""Prometheus metrics: what this process did (counters, histograms) and, read from the database
at scrape time, what is waiting (gauges).

Why this split, rather than prometheus-client's multiprocess mode: the processes that do the work
(web, workers, ticks) may run on several hosts, and multiprocess mode only merges processes that
share one directory on one host. So each process counts its own events in its own registry (the
counters are per process; Prometheus sums them with `sum without (instance)`), and the numbers
that describe the whole system (due tasks, the oldest due task, due deliveries) come from the
store when `/metrics` is scraped, so every process that serves them agrees.

One `Metrics` lives on each WorkContext (no module globals); the shells (handlers, workers)
count through it. The core stays free of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest, start_http_server

if TYPE_CHECKING:
    from service.contracts import Stores
    from storage.records import Recorded

# Seconds: from a provider's "ready" to the images stored, and from stored to notified.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """This process's counters and histograms, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.jobs_created = Counter(
            "fluxhook_jobs_created", "Jobs accepted by POST /v1/jobs in this process (replays not counted).",
            ["provider", "model"], registry=registry)
        self.jobs_finished = Counter(
            "fluxhook_jobs_finished",
            "Jobs whose final state this process wrote, by provider, model, status and completion source "
            "(callback, poll, or none when fluxhook ended it: cancelled, timed out, rejected).",
            ["provider", "model", "status", "completion_source"], registry=registry)
        self.callbacks = Counter(
            "fluxhook_callbacks", "Provider callbacks received, by verdict (verified, unsigned, duplicate, "
            "rejected) and, when rejected, the reason (its error code).",
            ["provider", "verdict", "reason"], registry=registry)
        self.polls = Counter(
            "fluxhook_polls", "Status polls sent to providers, by outcome (answered, failed).",
            ["provider", "outcome"], registry=registry)
        self.submit_attempts = Counter(
            "fluxhook_submit_attempts", "Submits sent to providers, by outcome (as in a job's attempts).",
            ["provider", "outcome"], registry=registry)
        self.download_bytes = Counter(
            "fluxhook_download_bytes", "Bytes of output images downloaded and stored.",
            ["provider"], registry=registry)
        self.download_seconds = Histogram(
            "fluxhook_download_seconds", "Time to download and store one job's output images.",
            ["provider"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.ready_to_stored = Histogram(
            "fluxhook_ready_to_stored_seconds",
            "From the provider's ready (callback or poll) to every image stored.",
            ["provider"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.stored_to_notified = Histogram(
            "fluxhook_stored_to_notified_seconds",
            "From a job's images stored to its job.succeeded notification delivered (first 2xx).",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.deliveries = Counter(
            "fluxhook_deliveries", "Notification delivery attempts, by outcome (delivered, failed).",
            ["outcome"], registry=registry)
        self.delivery_seconds = Histogram(
            "fluxhook_delivery_seconds", "Duration of one delivery attempt.",
            buckets=_LATENCY_BUCKETS, registry=registry)
        # Read from the store at scrape time (`refresh`): the same whichever process serves them.
        # A registry of their own, so a worker's endpoint (counters only) never shows them stale.
        self.system = system = CollectorRegistry(auto_describe=True)
        self.due_tasks = Gauge(
            "fluxhook_due_tasks", "Tasks due now and not leased, by kind (submit, poll, fetch).",
            ["kind"], registry=system)
        self.scheduled_tasks = Gauge(
            "fluxhook_scheduled_tasks", "Tasks waiting, due now or later, by kind.", ["kind"],
            registry=system)
        self.oldest_due_task_age = Gauge(
            "fluxhook_oldest_due_task_age_seconds",
            "How long the earliest claimable task has been due (0 when none is).", registry=system)
        self.due_deliveries = Gauge(
            "fluxhook_due_deliveries", "Notification deliveries due now and not leased.", registry=system)

    # Counting, from the shells ------------------------------------------------------------------

    def job_recorded(self, recorded: Recorded | None, *, provider: str | None = None) -> None:
        """Count what one write of a job came to: finished (a transition into a final state carries
        effects; a repeat on a final job carries none)."""
        if recorded is None or recorded.transition is None:
            return
        transition, job = recorded.transition, recorded.job
        if transition.state.terminal and transition.effects:
            self.jobs_finished.labels(
                provider or job.provider, job.model, job.status.value, job.completion_source or "none"
            ).inc()

    def callback(self, provider: str, verdict: str, reason: str = "") -> None:
        self.callbacks.labels(provider, verdict, reason).inc()

    def poll(self, provider: str, outcome: str) -> None:
        self.polls.labels(provider, outcome).inc()

    def submit_attempt(self, provider: str, outcome: str) -> None:
        self.submit_attempts.labels(provider, outcome).inc()

    def outputs_stored(
        self, provider: str, *, size: int, seconds: float, since_ready_s: float | None
    ) -> None:
        self.download_bytes.labels(provider).inc(size)
        self.download_seconds.labels(provider).observe(seconds)
        if since_ready_s is not None:
            self.ready_to_stored.labels(provider).observe(max(0.0, since_ready_s))

    def delivery(self, *, delivered: bool, seconds: float) -> None:
        self.deliveries.labels("delivered" if delivered else "failed").inc()
        self.delivery_seconds.observe(seconds)

    # Scraping -----------------------------------------------------------------------------------

    async def refresh(self, store: Stores, *, now: int) -> None:
        """Set the gauges that describe the whole system from the store."""
        _set_by_kind(self.due_tasks, await store.tasks.count_due(now=now))
        _set_by_kind(self.scheduled_tasks, await store.tasks.count_tasks())
        due_at = await store.tasks.next_due_at(now=now)
        self.oldest_due_task_age.set(max(0, now - due_at) / 1000 if due_at is not None else 0)
        self.due_deliveries.set(await store.deliveries.count_due_deliveries(now=now))

    def exposition(self, *, system: bool = True) -> bytes:
        """The text format: this process's counters, and (`system`) the gauges `refresh` set."""
        text = generate_latest(self.registry)
        return text + generate_latest(self.system) if system else text

    def serve_process_metrics(self, port: int, host: str) -> Callable[[], None]:
        """This process's counters on their own port (`fluxhook worker --metrics-port`), in a
        thread prometheus-client runs; returns what stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


def _set_by_kind(gauge: Gauge, counts: dict[str, int]) -> None:
    gauge.clear()  # a kind with nothing waiting any more reads 0 rather than its last value
    for kind in ("submit", "poll", "fetch"):
        gauge.labels(kind).set(0)
    for kind, count in counts.items():
        gauge.labels(kind).set(count)
