"""One simulated generation task: its drawn fate, its clock-derived phase, and its counters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

# The first 40% of a task's latency counts as queued: RunComfy's in_queue (the only state it can
# still be cancelled in) and Apiframe's QUEUED. BFL reports both halves as Pending.
QUEUE_FRACTION = 0.4


class Phase(enum.StrEnum):
    """Where a task is in its life, independent of any provider's spelling."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REQUEST_MODERATED = "request_moderated"
    CONTENT_MODERATED = "content_moderated"
    CANCELLED = "cancelled"


TERMINAL = frozenset(Phase) - {Phase.QUEUED, Phase.RUNNING}
FAILURES = frozenset({Phase.FAILED, Phase.REQUEST_MODERATED, Phase.CONTENT_MODERATED})

# Each provider's status word for each phase. Apiframe and RunComfy have no moderated states,
# so moderation surfaces there as an ordinary failure.
_BFL_STATUS = {
    Phase.QUEUED: "Pending",
    Phase.RUNNING: "Pending",
    Phase.SUCCEEDED: "Ready",
    Phase.FAILED: "Error",
    Phase.REQUEST_MODERATED: "Request Moderated",
    Phase.CONTENT_MODERATED: "Content Moderated",
}
NATIVE_STATUS: dict[str, dict[Phase, str]] = {
    "bfl": _BFL_STATUS,
    "cometapi": _BFL_STATUS,  # a BFL proxy: same words
    "apiframe": {
        Phase.QUEUED: "QUEUED",
        Phase.RUNNING: "PROCESSING",
        Phase.SUCCEEDED: "COMPLETED",
        Phase.FAILED: "FAILED",
        Phase.REQUEST_MODERATED: "FAILED",
        Phase.CONTENT_MODERATED: "FAILED",
    },
    "runcomfy": {
        Phase.QUEUED: "in_queue",
        Phase.RUNNING: "in_progress",
        Phase.SUCCEEDED: "completed",
        Phase.FAILED: "failed",
        Phase.REQUEST_MODERATED: "failed",
        Phase.CONTENT_MODERATED: "failed",
        Phase.CANCELLED: "cancelled",
    },
    # Replicate has no moderated state: a safety-checker refusal is `failed` with an E005 error.
    "replicate": {
        Phase.QUEUED: "starting",
        Phase.RUNNING: "processing",
        Phase.SUCCEEDED: "succeeded",
        Phase.FAILED: "failed",
        Phase.REQUEST_MODERATED: "failed",
        Phase.CONTENT_MODERATED: "failed",
        Phase.CANCELLED: "canceled",
    },
    # fal's queue knows three words; a failed or cancelled request is COMPLETED, and its result
    # says how (service/simulator/fal.py).
    "fal": {
        Phase.QUEUED: "IN_QUEUE",
        Phase.RUNNING: "IN_PROGRESS",
        Phase.SUCCEEDED: "COMPLETED",
        Phase.FAILED: "COMPLETED",
        Phase.REQUEST_MODERATED: "COMPLETED",
        Phase.CONTENT_MODERATED: "COMPLETED",
        Phase.CANCELLED: "COMPLETED",
    },
}


@dataclass(frozen=True)
class Fate:
    """Everything random about a task, drawn once at submit from the injected generator."""

    outcome: Phase
    latency_s: float
    drop_callback: bool = False
    duplicate_callback: bool = False
    unsigned_callback: bool = False
    callback_delay_s: float = 0.0
    # Drawn only when their rates are set, so other fates keep their sequence.
    replayed_callback: bool = False  # the terminal callback is also sent to another task's URL
    stale_callback: bool = False  # callbacks are stamped 6 minutes in the past


@dataclass(frozen=True)
class Webhook:
    """Where and how to call back; secrets never leave the simulator through the inspection API."""

    url: str
    secret: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)  # Apiframe signs with the submit key
    events: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edit:
    """A fill or expand task's input picture, kept in its output: where the mask is black (or
    the picture opaque), or framed by the margins. `margins` is (top, bottom, left, right)."""

    kind: str  # fill | expand
    image: bytes = field(repr=False)
    mask: bytes | None = field(default=None, repr=False)
    margins: tuple[int, int, int, int] = (0, 0, 0, 0)

    def to_public(self) -> dict[str, Any]:
        return {"kind": self.kind, "image_bytes": len(self.image),
                "mask_bytes": None if self.mask is None else len(self.mask),
                "margins": dict(zip(("top", "bottom", "left", "right"), self.margins, strict=True))}


@dataclass
class Task:
    """A task record: inputs, fate and counters. Its status is derived from the clock."""

    id: str
    protocol: str
    model: str
    prompt: str
    seed: int
    width: int
    height: int
    fmt: str  # output format as the provider spells it: jpeg, jpg, png or webp
    created_at: float  # epoch seconds, like BFL's start_time/end_time
    fate: Fate
    base_url: str  # the simulator's own URL as the submitter reached it, for callback payloads
    webhook: Webhook | None = None
    edit: Edit | None = None
    cost: float = 0.0
    idempotency_fingerprint: str | None = None
    cancelled_at: float | None = None
    images: list[bytes] = field(default_factory=list, repr=False)
    sha256s: list[str] = field(default_factory=list)
    content_type: str | None = None
    poll_count: int = 0
    download_count: int = 0
    callback_attempts: int = 0
    callbacks_acknowledged: int = 0
    callback_dropped: bool = False
    terminal_callback_acknowledged: bool = False
    callback_log: list[dict[str, Any]] = field(default_factory=list)
    render_lock: anyio.Lock = field(default_factory=anyio.Lock, repr=False)

    @property
    def done_at(self) -> float:
        """When the task reaches its drawn outcome (unless cancelled first)."""
        return self.created_at + self.fate.latency_s

    @property
    def queued_until(self) -> float:
        """When the task leaves the queue and starts running."""
        return self.created_at + self.fate.latency_s * QUEUE_FRACTION

    def phase(self, now: float) -> Phase:
        """The task's phase at time `now`."""
        if self.cancelled_at is not None:
            return Phase.CANCELLED
        if now < self.queued_until:
            return Phase.QUEUED
        if now < self.done_at:
            return Phase.RUNNING
        return self.fate.outcome

    def status(self, now: float) -> str:
        """The provider-native status word at time `now`."""
        return NATIVE_STATUS[self.protocol][self.phase(now)]

    def running_percent(self, now: float) -> int:
        """Progress 0-100: 0 while queued, rising through running, 100 once terminal."""
        phase = self.phase(now)
        if phase is Phase.QUEUED:
            return 0
        if phase is not Phase.RUNNING:
            return 100
        span = self.done_at - self.queued_until
        done = (now - self.queued_until) / span if span > 0 else 1.0
        return max(1, min(99, int(done * 100)))

    def ready_at(self, now: float) -> float | None:
        """When the task became terminal (not cancelled), or None if it has not yet."""
        phase = self.phase(now)
        return self.done_at if phase in TERMINAL and phase is not Phase.CANCELLED else None

    def to_public(self, now: float) -> dict[str, Any]:
        """The inspection record: counters and fate, no secrets and no image bytes."""
        return {
            "id": self.id,
            "protocol": self.protocol,
            "model": self.model,
            "status": self.status(now),
            "phase": self.phase(now).value,
            "prompt": self.prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "format": self.fmt,
            "edit": None if self.edit is None else self.edit.to_public(),
            "sha256s": list(self.sha256s),
            "content_type": self.content_type,
            "poll_count": self.poll_count,
            "download_count": self.download_count,
            "callback_attempts": self.callback_attempts,
            "callbacks_acknowledged": self.callbacks_acknowledged,
            "callback_dropped": self.callback_dropped,
            "callback_log": [dict(entry) for entry in self.callback_log],
            "webhook_url": redacted_url(self.webhook.url) if self.webhook else None,
            "fate": {
                "outcome": self.fate.outcome.value,
                "latency_s": self.fate.latency_s,
                "drop_callback": self.fate.drop_callback,
                "duplicate_callback": self.fate.duplicate_callback,
                "unsigned_callback": self.fate.unsigned_callback,
                "callback_delay_s": self.fate.callback_delay_s,
                "replayed_callback": self.fate.replayed_callback,
                "stale_callback": self.fate.stale_callback,
            },
            "created_at": self.created_at,
            "ready_at": self.ready_at(now),
            "cancelled_at": self.cancelled_at,
        }


def rfc3339(epoch_s: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp with milliseconds and a Z suffix."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redacted_url(url: str) -> str:
    """The URL with any long path segment (a callback token is a credential) replaced by '…'.

    Mounted in `fluxhook serve` by default, the inspection API is reachable by anyone who can
    reach fluxhook, so it must not hand out the tokens in fluxhook's callback URLs.
    """
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    segments = ["…" if len(seg) > 24 else seg for seg in path.split("/")]
    return f"{scheme}{sep}{host}{slash}{'/'.join(segments)}"
