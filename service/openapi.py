"""The OpenAPI 3.1 document served at GET /openapi.json. Pure: built from data, no I/O.

Every route of `service/app.py` is described here with its parameters, bodies and every error
status it answers, all in the one error shape (service/errors.py). The `input` of a job comes
from the model catalog: each configured provider's models, with the very JSON Schemas that
GET /v1/models publishes and validation enforces, so the document cannot disagree with them.
tests/test_openapi.py checks the document against the running app.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.catalog import Catalog
from service.settings import PROVIDER_NAMES

JOB_STATUSES = ("queued", "submitted", "running", "succeeded", "failed", "cancelled")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(type_: str, **more: Any) -> Schema:
    return {"type": [type_, "null"], **more}


def _object(required: Iterable[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": list(required), "properties": properties}


_TIME = _nullable("string", format="date-time")
_STRING = {"type": "string"}
_INT = {"type": "integer"}

# What each error status means; every one has the body `Error`.
_ERRORS = {
    304: "Not modified: the ETag given in If-None-Match still matches (no body).",
    400: "Malformed request: the body is not JSON (`malformed_json`) or not what the route reads, "
         "or a `cursor` this service did not issue (`invalid_cursor`).",
    401: "Missing or wrong credential: `Authorization: Bearer <FLUXHOOK_API_KEY>` (or, for the "
         "tick, `<FLUXHOOK_TICK_TOKEN>`; for a callback, a signature that does not verify).",
    403: "The callback's token is not fluxhook's, or is about another job or provider.",
    404: "No such resource; `details` names the path parameter.",
    409: "Conflict: an Idempotency-Key reused with another body, or a job in the wrong state "
         "(`job_not_final`, `job_final`).",
    410: "Gone: the job's outputs were removed, or the upload URL expired.",
    413: "The body is larger than the configured limit.",
    422: "Validation failed: `details` names every offending field (an unknown body field or "
         "query parameter is `rule: unknown_field`, with the names allowed).",
    503: "The database does not answer; nothing was recorded. Retry later.",
}


def _error(status: int) -> Schema:
    if status == 304:
        return {"description": _ERRORS[304]}
    return {"description": _ERRORS[status],
            "content": {"application/json": {"schema": _ref("Error")}}}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or _STRING}


def _query(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _operation(
    summary: str, ok: dict[int, Schema], errors: Iterable[int], *, tag: str,
    parameters: Iterable[Schema] = (), body: Schema | None = None, secured: bool = True,
    security: list[dict[str, list[str]]] | None = None, operation_id: str,
) -> Schema:
    responses: dict[str, Schema] = {str(code): response for code, response in ok.items()}
    codes = set(errors) | ({401} if secured else set())
    for code in sorted(codes):
        responses[str(code)] = _error(code)
    operation: Schema = {"summary": summary, "operationId": operation_id, "tags": [tag],
                         "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = body
    if security is not None:
        operation["security"] = security
    elif not secured:
        operation["security"] = []
    return operation


def _json_body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# The documents fluxhook answers with ---------------------------------------------------------


def _components(catalog: Catalog, providers: list[str], event_types: Iterable[str],
                job_event_types: Iterable[str]) -> Schema:
    inputs: dict[str, Schema] = {}
    variants: list[Schema] = []
    for provider in providers:
        for model in catalog.models(provider):
            name = f"Input.{provider}.{model.name}"
            inputs[name] = model.schema()
            # A model is named by fluxhook's name or the provider's own id.
            names = list(dict.fromkeys((model.name, model.native_id)))
            variants.append({
                "type": "object",
                "required": ["model", "input"],
                "properties": {
                    "provider": {"enum": [provider, "auto"]} if provider == providers[0]
                    else {"const": provider},
                    "model": {"enum": names},
                    "input": _ref(name),
                },
            })
    events = list(event_types)
    job_events = list(job_event_types)
    return {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "additionalProperties": False,
                "properties": {"error": {
                    "type": "object",
                    "required": ["code", "message", "details"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "description": "Stable, machine-readable."},
                        "message": {"type": "string"},
                        "details": {"type": "array", "items": {
                            "type": "object",
                            "description": "One per offending field: `field`, `rule`, and what "
                                           "the rule allows.",
                        }},
                    },
                }},
            },
            **inputs,
            "JobRequest": {
                "description": "A job: one model of one provider (or `auto`: the configured "
                               "providers serving the model, in FLUXHOOK_PROVIDER_ORDER), with "
                               "`input` as that model's schema (the same as GET /v1/models).",
                "allOf": [
                    {"type": "object", "properties": {
                        "provider": _STRING, "model": _STRING, "input": {"type": "object"},
                        "metadata": {"type": "object", "description": "At most 16 KB, kept as is."},
                        "webhook_url": {"type": "string", "format": "uri"},
                        "webhook_events": {"type": "array", "items": {"enum": job_events}},
                    }, "additionalProperties": False},
                    {"anyOf": variants} if variants else {},
                ],
            },
            "Output": _object(("index", "url", "sha256", "content_type", "bytes"),
                              index=_INT, url=_STRING, sha256=_STRING, content_type=_STRING, bytes=_INT),
            "Attempt": _object(("provider", "outcome", "http_status", "message", "provider_job_id", "at"),
                               provider=_STRING,
                               outcome={"enum": ["accepted", "rejected", "unavailable", "failed_over",
                                                 "unknown", "adopted", "orphaned"]},
                               http_status=_nullable("integer"), message=_nullable("string"),
                               provider_job_id=_nullable("string"), at=_TIME),
            "Job": _object(
                ("id", "provider", "model", "status", "input", "metadata", "provider_job_id", "progress",
                 "outputs", "outputs_deleted_at", "error", "completion_source", "polls", "callbacks",
                 "webhook_url", "webhook_events", "attempts", "created_at", "updated_at", "completed_at"),
                id=_STRING, provider=_STRING, model=_STRING, status={"enum": list(JOB_STATUSES)},
                input={"type": "object"}, metadata={"type": "object"},
                provider_job_id=_nullable("string"), progress=_nullable("number"),
                outputs={"type": "array", "items": _ref("Output")}, outputs_deleted_at=_TIME,
                error={"oneOf": [{"type": "null"},
                                 _object(("code", "message"), code=_STRING, message=_nullable("string"))]},
                completion_source={"enum": ["callback", "poll", None]}, polls=_INT, callbacks=_INT,
                webhook_url=_nullable("string"), webhook_events={"type": "array", "items": _STRING},
                attempts={"type": "array", "items": _ref("Attempt")},
                created_at=_TIME, updated_at=_TIME, completed_at=_TIME,
            ),
            "JobList": _object(("data", "next_cursor"), data={"type": "array", "items": _ref("Job")},
                               next_cursor=_nullable("string")),
            "Model": _object(("name", "native_id", "parameters", "capabilities"), name=_STRING,
                             native_id=_STRING, parameters={"type": "object"},
                             capabilities={"type": "object"}),
            "Models": _object(("providers",), providers={"type": "array", "items": _object(
                ("name", "models"), name=_STRING, models={"type": "array", "items": _ref("Model")})}),
            "SubscriptionRequest": {
                "type": "object", "required": ["url"], "additionalProperties": False,
                "properties": {"url": {"type": "string", "format": "uri"},
                               "events": {"type": "array", "items": {"enum": events}},
                               "description": _nullable("string", maxLength=500)},
            },
            "SubscriptionChanges": {
                "type": "object", "additionalProperties": False,
                "properties": {"url": {"type": "string", "format": "uri"},
                               "events": {"type": "array", "items": {"enum": events}},
                               "description": _nullable("string", maxLength=500),
                               "status": {"enum": ["enabled", "disabled"]}},
            },
            "Subscription": _object(
                ("id", "url", "events", "description", "status", "disabled_reason", "failing_since",
                 "created_at", "updated_at"),
                id=_STRING, url=_STRING, events={"type": "array", "items": _STRING},
                description=_nullable("string"), status={"enum": ["enabled", "disabled"]},
                disabled_reason=_nullable("string"), failing_since=_TIME, created_at=_TIME,
                updated_at=_TIME,
                secret={"type": "string", "description": "Only when created or rotated."},
                previous_secret_expires_at=_TIME,
            ),
            "SubscriptionList": _object(("data",), data={"type": "array", "items": _ref("Subscription")}),
            "Delivery": _object(
                ("id", "event_id", "event_type", "subscription_id", "job_id", "url", "status",
                 "attempt_count", "next_attempt_at", "last_status", "last_error", "created_at",
                 "delivered_at", "attempts"),
                id=_STRING, event_id=_STRING, event_type=_STRING, subscription_id=_nullable("string"),
                job_id=_nullable("string"), url=_STRING, status=_STRING, attempt_count=_INT,
                next_attempt_at=_TIME, last_status=_nullable("integer"), last_error=_nullable("string"),
                created_at=_TIME, delivered_at=_TIME,
                attempts={"type": "array", "items": _object(
                    ("attempt", "at", "status_code", "duration_ms", "response", "error", "next_attempt_at"),
                    attempt=_INT, at=_TIME, status_code=_nullable("integer"),
                    duration_ms=_nullable("integer"), response=_nullable("string"),
                    error=_nullable("string"), next_attempt_at=_TIME)},
            ),
            "DeliveryList": _object(("data",), data={"type": "array", "items": _ref("Delivery")}),
            "Upload": _object(("id", "url", "sha256", "content_type", "bytes", "expires_at"),
                              id=_STRING, url=_STRING, sha256=_STRING,
                              content_type={"enum": list(IMAGE_TYPES)}, bytes=_INT, expires_at=_TIME),
            "TickReport": _object(("ran", "finished", "seconds", "due", "scheduled", "next_due_at"),
                                  ran={"type": "object"}, finished={"type": "boolean"},
                                  seconds={"type": "number"}, due={"type": "object"},
                                  scheduled={"type": "object"}, next_due_at=_TIME),
            "CallbackReceipt": _object(("received", "job_id", "status", "duplicate"),
                                       received={"const": True}, job_id=_STRING,
                                       status={"enum": list(JOB_STATUSES)}, duplicate={"type": "boolean"}),
        },
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer",
                       "description": "FLUXHOOK_API_KEY, when it is set (otherwise no credential)."},
            "tickToken": {"type": "http", "scheme": "bearer", "description": "FLUXHOOK_TICK_TOKEN."},
        },
    }


# The routes ----------------------------------------------------------------------------------


def _paths(event_types: Iterable[str]) -> Schema:
    job_id = _path_param("job_id", "The job's id (`job_...`).")
    sub_id = _path_param("subscription_id", "The subscription's id (`sub_...`).")
    job = _json(_ref("Job"), "The job.")
    no_params = "Takes no query parameters: any is refused with 422."
    image = {"description": "The image bytes, with its ETag (`\"<sha256>\"`).",
             "headers": {"ETag": {"schema": _STRING}},
             "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES}}
    binary_upload = {"required": True, "content": {
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}},
    }}
    tick = _operation(
        "Run the due work for at most `seconds`, then report what was done and what is still due.",
        {200: _json(_ref("TickReport"), "What the tick did.")}, (401, 422), tag="operations",
        parameters=[_query("seconds", "At most FLUXHOOK_TICK_SECONDS (the default).",
                           {"type": "string", "pattern": r"^[0-9]{1,6}(\.[0-9]{1,6})?$"})],
        secured=False, security=[{"tickToken": []}], operation_id="tick",
    )
    return {
        "/healthz": {"get": _operation(
            "200 when the database answers.",
            {200: _json(_object(("status",), status={"const": "ok"}), "Up.")},
            (503,), tag="operations", secured=False, operation_id="healthz")},
        "/metrics": {"get": _operation(
            "Prometheus metrics (text format): this process's counters and the due work.",
            {200: {"description": "Prometheus text exposition format 0.0.4.",
                   "content": {"text/plain": {"schema": _STRING}}}},
            (), tag="operations", operation_id="metrics")},
        "/openapi.json": {"get": _operation(
            "This document.", {200: _json({"type": "object"}, "OpenAPI 3.1.")}, (), tag="operations",
            secured=False, operation_id="openapi")},
        "/v1/jobs": {
            "post": _operation(
                "Submit a job; `input` is validated against the model before any provider is called.",
                {202: {**job, "headers": {"Location": {"schema": _STRING}, "Idempotent-Replayed": {
                    "schema": {"const": "true"}, "description": "A replay of an earlier submit."}}}},
                (400, 409, 413, 422), tag="jobs", body=_json_body(_ref("JobRequest")),
                parameters=[{"name": "Idempotency-Key", "in": "header", "required": False,
                             "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                             "description": "A retried submit with the same key returns the same job."}],
                operation_id="createJob"),
            "get": _operation(
                "Jobs, newest first. Unknown query parameters are refused with 422.",
                {200: _json(_ref("JobList"), "A page of jobs.")}, (400, 422), tag="jobs",
                parameters=[_query("status", "Only jobs in this status.", {"enum": list(JOB_STATUSES)}),
                            _query("provider", "Only jobs at this provider (for `auto`: the one it is at).",
                                   {"enum": list(PROVIDER_NAMES)}),
                            _query("limit", "1 to 100 (default 20).",
                                   {"type": "integer", "minimum": 1, "maximum": 100}),
                            _query("cursor", "`next_cursor` of the previous page.", _STRING)],
                operation_id="listJobs"),
        },
        "/v1/jobs/{job_id}": {
            "parameters": [job_id],
            "get": _operation(
                "The job; with `wait`, answers once it is final or after that many seconds.",
                {200: job}, (404, 422), tag="jobs",
                parameters=[_query("wait", "0 to 60 seconds.",
                                   {"type": "string", "pattern": r"^[0-9]{1,6}(\.[0-9]{1,6})?$"})],
                operation_id="getJob"),
            "delete": _operation(
                "Remove a final job's images (each output URL then answers 410); the job stays.",
                {200: job}, (404, 409), tag="jobs", operation_id="deleteJob"),
        },
        "/v1/jobs/{job_id}/outputs/{index}": {
            "parameters": [job_id, _path_param("index", "The output's index, from 0.",
                                               {"type": "string", "pattern": "^[0-9]+$"})],
            "get": _operation(
                "The stored image (with FLUXHOOK_BLOB_REDIRECT=presigned, a 307 to a presigned URL).",
                {200: image}, (304, 404, 410, 422), tag="jobs",
                parameters=[{"name": "If-None-Match", "in": "header", "required": False, "schema": _STRING}],
                operation_id="getOutput"),
        },
        "/v1/jobs/{job_id}/cancel": {"parameters": [job_id], "post": _operation(
            "Cancel the job (at the provider where it can); a final job is a 409.", {200: job}, (404, 409),
            tag="jobs", operation_id="cancelJob")},
        "/v1/jobs/{job_id}/deliveries": {"parameters": [job_id], "get": _operation(
            f"Every notification about the job, with every attempt. {no_params}",
            {200: _json(_ref("DeliveryList"), "The deliveries.")}, (404, 422), tag="notifications",
            operation_id="listJobDeliveries")},
        "/v1/models": {"get": _operation(
            f"Per configured provider, its models with their input as JSON Schema. {no_params}",
            {200: _json(_ref("Models"), "The catalog.")}, (422,), tag="jobs", operation_id="listModels")},
        "/v1/uploads": {"post": _operation(
            "Store a reference image (the raw body, or a form's `file`); its signed `url` needs no "
            "credential.", {201: _json(_ref("Upload"), "The upload.")}, (400, 413, 422), tag="uploads",
            body=binary_upload, operation_id="createUpload")},
        "/uploads/{token}": {"parameters": [_path_param("token", "The signed token of an upload's url.")],
                             "get": _operation(
            "An uploaded image, for providers; the token is the credential.", {200: image},
            (304, 404, 410), tag="uploads", secured=False, operation_id="getUpload",
            parameters=[{"name": "If-None-Match", "in": "header", "required": False, "schema": _STRING}])},
        "/v1/subscriptions": {
            "post": _operation(
                "Subscribe a URL to events; the answer shows its `whsec_` secret this once.",
                {201: _json(_ref("Subscription"), "The subscription, with its secret.")},
                (400, 413, 422), tag="notifications", body=_json_body(_ref("SubscriptionRequest")),
                operation_id="createSubscription"),
            "get": _operation(
                f"Every subscription. {no_params}", {200: _json(_ref("SubscriptionList"), "Subscriptions.")},
                (422,), tag="notifications", operation_id="listSubscriptions"),
        },
        "/v1/subscriptions/{subscription_id}": {
            "parameters": [sub_id],
            "get": _operation("The subscription.", {200: _json(_ref("Subscription"), "It.")}, (404,),
                              tag="notifications", operation_id="getSubscription"),
            "patch": _operation(
                "Change its url, events, description or status.",
                {200: _json(_ref("Subscription"), "The changed subscription.")}, (400, 404, 413, 422),
                tag="notifications", body=_json_body(_ref("SubscriptionChanges")),
                operation_id="updateSubscription"),
            "delete": _operation("Delete it.", {204: {"description": "Deleted."}}, (404,),
                                 tag="notifications", operation_id="deleteSubscription"),
        },
        "/v1/subscriptions/{subscription_id}/rotate-secret": {"parameters": [sub_id], "post": _operation(
            "A new secret; the old one keeps signing beside it for 24 hours.",
            {200: _json(_ref("Subscription"), "The subscription, with its new secret.")}, (404,),
            tag="notifications", operation_id="rotateSecret")},
        "/v1/subscriptions/{subscription_id}/deliveries": {"parameters": [sub_id], "get": _operation(
            f"The delivery log. {no_params}", {200: _json(_ref("DeliveryList"), "The deliveries.")},
            (404, 422), tag="notifications", operation_id="listSubscriptionDeliveries")},
        "/v1/subscriptions/{subscription_id}/recover": {"parameters": [sub_id], "post": _operation(
            "Resend everything to this subscription that failed since `since`.",
            {202: _json(_object(("recovered",), recovered=_INT), "How many were scheduled again.")},
            (404, 422), tag="notifications", operation_id="recover",
            parameters=[{**_query("since", "RFC 3339.", {"type": "string", "format": "date-time"}),
                         "required": True}])},
        "/v1/deliveries/{delivery_id}/redeliver": {
            "parameters": [_path_param("delivery_id", "The delivery's id.")],
            "post": _operation("Send one delivery again now (same webhook-id).",
                               {202: _json(_ref("Delivery"), "The delivery.")}, (404,),
                               tag="notifications", operation_id="redeliver")},
        "/v1/webhook-secret": {"get": _operation(
            "The service-wide `whsec_` secret that signs per-job notifications.",
            {200: _json(_object(("secret",), secret=_STRING), "The secret.")}, (), tag="notifications",
            operation_id="webhookSecret")},
        "/v1/events": {"get": _operation(
            "Live Server-Sent Events, resumable with Last-Event-ID. Unknown query parameters are "
            "refused with 422.",
            {200: {"description": "An endless text/event-stream.",
                   "content": {"text/event-stream": {"schema": _STRING}}}},
            (422,), tag="events", operation_id="streamEvents",
            parameters=[_query("type", "Comma-separated event types: " + ", ".join(event_types), _STRING),
                        _query("job_id", "Only this job's events.", _STRING),
                        _query("last_event_id", "Resume after this event (0: from the start).",
                               {"type": "string", "pattern": "^[0-9]{1,19}$"}),
                        {"name": "Last-Event-ID", "in": "header", "required": False,
                         "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}}])},
        "/v1/callbacks/{provider}/{token}": {
            "parameters": [_path_param("provider", "The provider."),
                           _path_param("token", "The signed token fluxhook gave the provider.")],
            "post": _operation(
                "The inbound webhook providers call (not for clients): the token is checked, then "
                "the signature over the raw body.",
                {200: _json(_ref("CallbackReceipt"), "Recorded durably.")}, (400, 401, 403, 404, 413),
                tag="callbacks", secured=False, operation_id="receiveCallback",
                body={"required": True, "content": {"application/json": {"schema": {}}}})},
        "/v1/tick": {"get": {**tick, "operationId": "tickGet"}, "post": tick},
    }


# Served but left out of the document on purpose, by path prefix: what a browser shows people,
# not an API for clients (tests/test_openapi.py checks every other route is in the document).
NOT_DOCUMENTED = {
    "/dashboard": "the dashboard: HTML pages, their fragments and static files (handlers/dashboard/)",
}


def openapi_document(
    catalog: Catalog, providers: Iterable[str], *, event_types: Iterable[str],
    job_event_types: Iterable[str], version: str,
) -> Schema:
    """The document, for the `providers` configured here (in catalog order)."""
    configured = set(providers)
    ordered = [p for p in catalog.providers() if p in configured]
    events = list(event_types)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fluxhook",
            "version": version,
            "description": (
                "A webhook-first gateway for asynchronous Flux image generation. Every error has "
                "one shape (`Error`). Every /v1/ route but callbacks and the tick, and /metrics, "
                "need `Authorization: Bearer <FLUXHOOK_API_KEY>` when that setting is set. Any "
                "route that reads the database may answer 503 `store_unavailable` when it does "
                "not answer."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": _paths(events),
        "components": _components(catalog, ordered, events, job_event_types),
    }
