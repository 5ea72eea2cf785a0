"""Subscriptions and per-job destinations: validation and the documents the API returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.context import WorkContext
from service.documents import rfc3339
from service.egress import DestinationRefused
from service.errors import NotFound, ValidationFailed
from service.fields import json_object, only_fields
from service.ids import new_prefixed_id
from service.webhook_signing import new_secret
from storage.records import (
    EVENT_TYPES,
    JOB_EVENT_TYPES,
    DeliveryAttemptRecord,
    DeliveryRecord,
    SubscriptionRecord,
)

ROTATION_GRACE_S = 24 * 3600  # the old secret keeps signing beside the new one (Svix: 24 h)
MAX_DESCRIPTION = 500


def check_destination(ctx: WorkContext, url: Any, field: str) -> str:
    """A notification URL: http(s), no credentials, not a private address unless allowed."""
    if not isinstance(url, str) or not url:
        raise ValidationFailed(f"{field} is required", details=[{"field": field, "rule": "required"}])
    if len(url) > 2083:
        raise ValidationFailed(
            f"{field} is too long", details=[{"field": field, "rule": "maxLength", "maximum": 2083}]
        )
    try:
        ctx.egress.check_url(url)
    except DestinationRefused as exc:
        detail = {"field": field, "rule": "destination", "message": exc.reason}
        if exc.address is not None:  # a private address, not a malformed host or port
            detail["hint"] = "private and loopback destinations need FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS"
        raise ValidationFailed(f"{field} is refused: {exc.reason}", details=[detail]) from exc
    return url


def check_event_types(value: Any, field: str, *, allowed: tuple[str, ...] = EVENT_TYPES) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationFailed(
            f"{field} must be a list of event types",
            details=[{"field": field, "rule": "type", "expected": "array", "allowed": list(allowed)}],
        )
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ValidationFailed(
            f"{field} has unknown event types: {', '.join(unknown)}",
            details=[{"field": field, "rule": "enum", "allowed": list(allowed), "unknown": unknown}],
        )
    return list(dict.fromkeys(value))


def parse_new_subscription(ctx: WorkContext, body: Any) -> SubscriptionRecord:
    body = json_object(body)
    only_fields(body, ("url", "events", "description"))
    now = ctx.clock()
    return SubscriptionRecord(
        id=new_prefixed_id("sub", now),
        url=check_destination(ctx, body.get("url"), "url"),
        events=tuple(check_event_types(body.get("events"), "events")),
        description=_description(body.get("description")),
        secret=new_secret(),
        previous_secret=None,
        previous_secret_until=None,
        status="enabled",
        disabled_reason=None,
        failing_since=None,
        created_at=now,
        updated_at=now,
    )


def parse_subscription_changes(ctx: WorkContext, body: Any) -> dict[str, Any]:
    body = json_object(body)
    only_fields(body, ("url", "events", "description", "status"))
    changes: dict[str, Any] = {}
    if "url" in body:
        changes["url"] = check_destination(ctx, body["url"], "url")
    if "events" in body:
        changes["events"] = check_event_types(body["events"], "events")
    if "description" in body:
        changes["description"] = _description(body["description"])
    if "status" in body:
        if body["status"] not in ("enabled", "disabled"):
            raise ValidationFailed(
                "status must be enabled or disabled",
                details=[{"field": "status", "rule": "enum", "allowed": ["enabled", "disabled"]}],
            )
        changes["status"] = body["status"]
    return changes


def parse_job_destination(ctx: WorkContext, body: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """A job's own `webhook_url` and `webhook_events` (signed with the service-wide secret)."""
    url = body.get("webhook_url")
    if url is None:
        if body.get("webhook_events") is not None:
            raise ValidationFailed(
                "webhook_events needs webhook_url",
                details=[{"field": "webhook_events", "rule": "requires", "requires": "webhook_url"}],
            )
        return None, ()
    url = check_destination(ctx, url, "webhook_url")
    return url, tuple(
        check_event_types(body.get("webhook_events"), "webhook_events", allowed=JOB_EVENT_TYPES)
    )


def parse_since(value: str | None) -> int:
    if not value:
        raise ValidationFailed(
            "since is required (RFC 3339)", details=[{"field": "since", "rule": "required"}]
        )
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(
            "since must be an RFC 3339 time",
            details=[{"field": "since", "rule": "format", "format": "date-time"}],
        ) from exc
    if moment.tzinfo is None:
        raise ValidationFailed(
            "since needs a time zone (e.g. Z)",
            details=[{"field": "since", "rule": "format", "format": "date-time"}],
        )
    return int(moment.timestamp() * 1000)


# The actions the API and the dashboard share (handlers/subscriptions.py, handlers/dashboard/) ---


def missing_subscription(sub_id: str) -> NotFound:
    return NotFound(f"no subscription {sub_id!r}", details=[{"field": "subscription_id", "rule": "exists"}])


async def change_subscription(ctx: WorkContext, sub_id: str, changes: dict[str, Any]) -> SubscriptionRecord:
    """Apply parsed changes (`parse_subscription_changes`); enabling clears the failure clock."""
    sub = await ctx.store.subscriptions.update_subscription(sub_id, changes, now=ctx.clock())
    if sub is None:
        raise missing_subscription(sub_id)
    return sub


async def rotate_subscription_secret(ctx: WorkContext, sub_id: str) -> SubscriptionRecord:
    """A new secret; the old one keeps signing beside it for ROTATION_GRACE_S."""
    sub = await ctx.store.subscriptions.rotate_subscription_secret(
        sub_id, new_secret(), now=ctx.clock(), grace_ms=ctx.ms(ROTATION_GRACE_S)
    )
    if sub is None:
        raise missing_subscription(sub_id)
    return sub


async def recover_deliveries(ctx: WorkContext, sub_id: str, *, since: int) -> int:
    """Send again every delivery to the subscription that failed since `since`; how many."""
    if await ctx.store.subscriptions.get_subscription(sub_id) is None:
        raise missing_subscription(sub_id)
    count = await ctx.store.deliveries.recover(sub_id, since=since, now=ctx.clock())
    ctx.nudge()
    return count


async def redeliver(ctx: WorkContext, delivery_id: str) -> tuple[DeliveryRecord, list[DeliveryAttemptRecord]]:
    """Send one delivery again now, as a manual attempt."""
    found = await ctx.store.deliveries.redeliver(delivery_id, now=ctx.clock())
    if found is None:
        raise NotFound(f"no delivery {delivery_id!r}", details=[{"field": "delivery_id", "rule": "exists"}])
    ctx.nudge()
    return found


def subscription_document(sub: SubscriptionRecord, *, with_secret: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": sub.id,
        "url": sub.url,
        "events": list(sub.events),
        "description": sub.description,
        "status": sub.status,
        "disabled_reason": sub.disabled_reason,
        "failing_since": rfc3339(sub.failing_since),
        "created_at": rfc3339(sub.created_at),
        "updated_at": rfc3339(sub.updated_at),
    }
    if with_secret:
        doc["secret"] = sub.secret
        if sub.previous_secret_until:
            doc["previous_secret_expires_at"] = rfc3339(sub.previous_secret_until)
    return doc


def delivery_document(delivery: DeliveryRecord, attempts: list[DeliveryAttemptRecord]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "subscription_id": delivery.subscription_id,
        "job_id": delivery.job_id,
        "url": delivery.url,
        "status": delivery.status,
        "attempt_count": delivery.attempts,
        "next_attempt_at": rfc3339(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": rfc3339(delivery.created_at),
        "delivered_at": rfc3339(delivery.delivered_at),
        "attempts": [
            {
                "attempt": a.attempt,
                "at": rfc3339(a.started_at),
                "status_code": a.status_code,
                "duration_ms": a.duration_ms,
                "response": a.response_head,
                "error": a.error,
                "next_attempt_at": rfc3339(a.next_attempt_at),
            }
            for a in attempts
        ],
    }


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise ValidationFailed(
            "description must be a string of at most 500 characters",
            details=[{"field": "description", "rule": "maxLength", "maximum": MAX_DESCRIPTION}],
        )
    return value
