"""Never pay twice: what to make of a submit whose answer was lost, and of a callback about a
provider task the job does not know. Pure: no I/O, no clock.

A submit is written down as an `unknown` attempt before the request goes out. If its answer
never arrives (a read timeout, or the process died between the provider accepting and
fluxhook's commit), a provider task — and a charge — may exist. For a provider that calls back,
that task's callback comes to the job's token URL, signed with the job's own `webhook_secret`,
which only fluxhook's submits carried: the job *adopts* the task it names instead of submitting
again. Only when nothing is heard within a window is the job submitted again; if the first task
turns up after all, it is recorded as `orphaned` (or `adopted`, when its result is the first to
arrive) rather than refused as forged.

    attempt outcomes: unknown -> accepted | rejected | unavailable | failed_over
                      unknown -> adopted | orphaned   (its task found by callback or poll)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from storage.state import ADOPTED as ADOPTED
from storage.state import ORPHANED as ORPHANED
from storage.state import UNKNOWN as UNKNOWN
from storage.state import TaskRole as TaskRole


class AttemptView(Protocol):
    """The part of an attempt row these rules read."""

    @property
    def id(self) -> int: ...

    @property
    def provider(self) -> str: ...

    @property
    def outcome(self) -> str: ...

    @property
    def provider_job_id(self) -> str | None: ...

    @property
    def at(self) -> int: ...


def classify_task(
    named: str | None,
    *,
    current: str | None,
    provider: str,
    attempts: Iterable[AttemptView],
    verified: bool,
) -> TaskRole:
    """The role of the provider task `named` by a callback for a job at `provider`.

    `verified` means the callback's signature checked out with the job's own webhook secret,
    which proves the task came from one of this job's submits.
    """
    if named is None or named == current:
        return TaskRole.CURRENT
    mine = [a for a in attempts if a.provider == provider]
    if any(a.provider_job_id == named for a in mine):
        return TaskRole.ADOPT if current is None else TaskRole.ORPHAN
    if not any(a.outcome == UNKNOWN for a in mine):
        return TaskRole.FOREIGN
    if not verified:
        return TaskRole.CONFIRM
    return TaskRole.ADOPT if current is None else TaskRole.ORPHAN


def pending_submit(attempts: Sequence[AttemptView], provider: str) -> AttemptView | None:
    """The last submit to `provider` whose answer never came (no task id learned), if the job's
    latest attempt is one: the job may already have a provider task it has not heard of."""
    if not attempts:
        return None
    last = attempts[-1]
    if last.provider == provider and last.outcome == UNKNOWN and last.provider_job_id is None:
        return last
    return None


@dataclass(frozen=True)
class SubmitPlan:
    """What the submitter does with a queued job: submit now, or wait for a lost task's callback
    until `wait_until` (epoch ms). `reuse` is the attempt to write the new submit over (an
    idempotent provider returns the same task, so it is the same attempt)."""

    submit: bool
    wait_until: int | None = None
    reuse: AttemptView | None = None


def plan_submit(
    attempts: Sequence[AttemptView],
    provider: str,
    *,
    now: int,
    window_ms: int,
    calls_back: bool,
    idempotent: bool,
) -> SubmitPlan:
    """Submit again only when that cannot create a second task silently.

    - nothing unknown: submit;
    - the provider de-duplicates submits (Apiframe's `Idempotency-Key`): submit again at once,
      over the same attempt, and the provider answers with the task it already has;
    - the provider calls back: wait until `window_ms` after the lost submit for its callback
      (which adopts the task); then submit again;
    - the provider neither calls back nor de-duplicates (RunComfy): nothing can ever name the
      lost task, so waiting gains nothing; submit again (README: Known limits).
    """
    pending = pending_submit(attempts, provider)
    if pending is None:
        return SubmitPlan(submit=True)
    if idempotent:
        return SubmitPlan(submit=True, reuse=pending)
    if calls_back and now < pending.at + window_ms:
        return SubmitPlan(submit=False, wait_until=pending.at + window_ms)
    return SubmitPlan(submit=True)


def unconfirmed_tasks(
    named: Iterable[str], *, current: str | None, attempts: Iterable[AttemptView], limit: int = 3
) -> list[str]:
    """Task ids that unsigned callbacks named and no attempt accounts for, to confirm by polling
    (a few at most: a forger holding a token must not make fluxhook poll without end)."""
    known = {a.provider_job_id for a in attempts if a.provider_job_id}
    if current:
        known.add(current)
    out: list[str] = []
    for task in named:
        if task not in known and task not in out:
            out.append(task)
        if len(out) >= limit:
            break
    return out
