"""No secret appears in a log line, an error body or the repr of an object that holds one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sqlite3
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from service.loopback import serve
from service.simulator import SimulatorConfig
from tests.e2e import BACKEND_ENV, running_stack, submit_jobs, wait_terminal
from tests.receivers import Receiver

pytestmark = pytest.mark.anyio


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_secrets_tokens_and_keys_never_reach_logs_or_error_bodies(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = Receiver(fetch_outputs=False)
    errors: list[str] = []
    config = SimulatorConfig(
        latency_s=(0.2, 0.4), callback_drop_rate=0.5, unsigned_callback_rate=0.3, seed=41
    )
    async with (
        serve(receiver.app()) as hook_url,
        running_stack(
            tmp_path,
            config,
            FLUXHOOK_API_KEY="api-key-do-not-log",
            FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS="loopback",
        ) as stack,
    ):
        client = stack.client
        client.headers["Authorization"] = "Bearer api-key-do-not-log"
        sub = (await client.post("/v1/subscriptions", json={"url": f"{hook_url}/hook"})).json()
        ids = await submit_jobs(client, 6)
        await wait_terminal(client, ids, timeout=30)
        upload = (await client.post("/v1/uploads", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 64)).json()

        url = BACKEND_ENV.get("FLUXHOOK_DATABASE_URL")
        db: Any = psycopg.connect(url) if url else sqlite3.connect(tmp_path / "data" / "fluxhook.db")
        job_secrets = [row[0] for row in db.execute("SELECT webhook_secret FROM jobs")]
        db.close()
        # Provoke the error paths a forger or a confused client would hit.
        for body, headers in (
            (b"{}", {"X-BFL-Signature": "sha256=" + "0" * 64}),
            (
                b"not json",
                {
                    "X-BFL-Signature": "sha256="
                    + hmac.new(job_secrets[0].encode(), b"not json", hashlib.sha256).hexdigest()
                },
            ),
        ):
            errors.append(
                (await client.post("/v1/callbacks/bfl/cb1.forged", content=body, headers=headers)).text
            )
        errors.append((await client.post("/v1/jobs", json={"model": "nope"})).text)
        errors.append((await client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"})).text)
        errors.append((await client.get(upload["url"] + "x")).text)
        webhook_secret = (await client.get("/v1/webhook-secret")).json()["secret"]
        secret_key = (
            (tmp_path / "data" / "secret_key").read_text()
            if (tmp_path / "data" / "secret_key").exists()
            else "e2e-secret-key"
        )

    secrets = {
        "api key": "api-key-do-not-log",
        "provider key": "e2e-key",
        "signing key": secret_key,
        "service webhook secret": webhook_secret,
        "subscription secret": sub["secret"],
        "upload token": upload["url"].rsplit("/", 1)[1],
        **{f"job secret {n}": s for n, s in enumerate(job_secrets)},
    }
    logged = "\n".join(
        record.getMessage() + " " + json.dumps(record.args, default=str) for record in caplog.records
    )
    assert len(caplog.records) > 20  # the flow really logged
    assert "cb1." not in logged  # no callback token (they ride in webhook URLs)
    for name, value in secrets.items():
        assert value not in logged, f"{name} leaked into a log line"
        for body in errors:
            assert value not in body, f"{name} leaked into an error body"
    assert any(r.answered == 204 for r in receiver.received)


# Every secret fluxhook holds, each a distinct marker that must never show.
MARK = "MARKER-do-not-show"
WEBHOOK_KEY = base64.b64encode(b"webhook-secret-MARKER-32-bytes!!").decode()
REPLICATE_KEY = base64.b64encode(b"replicate-signing-MARKER-secret!").decode()
SECRET_ENV = {
    "FLUXHOOK_API_KEY": f"api-{MARK}",
    "FLUXHOOK_SECRET_KEY": f"signing-{MARK}",
    "FLUXHOOK_WEBHOOK_SECRET": f"whsec_{WEBHOOK_KEY}",
    "BFL_API_KEY": f"bfl-{MARK}",
    "COMETAPI_API_KEY": f"comet-{MARK}",
    "APIFRAME_API_KEY": f"apiframe-{MARK}",
    "RUNCOMFY_API_TOKEN": f"runcomfy-{MARK}",
    "REPLICATE_API_TOKEN": f"replicate-{MARK}",
    "REPLICATE_WEBHOOK_SECRET": f"whsec_{REPLICATE_KEY}",
    "FAL_KEY": f"fal-{MARK}",
    "AWS_ACCESS_KEY_ID": f"AKID{MARK}",
    "AWS_SECRET_ACCESS_KEY": f"aws-{MARK}",
    "AWS_SESSION_TOKEN": f"session-{MARK}",
}
DB_PASSWORD = f"dbpw-{MARK}"
JOB_SECRET = f"whsec_{base64.b64encode(b'job-secret-MARKER-is-32-bytes!!!').decode()}"
SUB_SECRETS = (f"sub-{MARK}", f"previous-sub-{MARK}")


def with_password(url: str) -> str:
    """`url` with DB_PASSWORD as its password (the test server trusts, so it still connects)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{DB_PASSWORD}@{host}"))


def leaks(text: str) -> list[str]:
    secrets = (*SECRET_ENV.values(), WEBHOOK_KEY, REPLICATE_KEY, DB_PASSWORD, JOB_SECRET, *SUB_SECRETS, MARK)
    return [value for value in secrets if value in text]


async def test_no_adapter_settings_store_or_blob_store_shows_a_secret_in_its_repr(
    tmp_path, caplog, postgres_url
):
    from service.app import create_app
    from service.check import environment_warnings
    from service.providers.base import SubmitOrder
    from service.providers.replicate import ReplicateAdapter
    from service.resources import build_adapters
    from service.settings import Settings
    from service.stores import open_stores
    from service.tokens import CallbackTokens, UploadTokens
    from storage.blobs import open_blob_store
    from storage.postgres.wakeups import Listener
    from storage.records import ClaimedDelivery, NewJob, SubscriptionRecord

    caplog.set_level(logging.DEBUG)
    env = {**SECRET_ENV, "FLUXHOOK_DATA_DIR": str(tmp_path / "data"), "FLUXHOOK_BLOB_URL": "s3://bucket/p",
           "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com"}
    on_sqlite = Settings.from_env(env)
    on_postgres = Settings.from_env({**env, "FLUXHOOK_DATABASE_URL": with_password(postgres_url)})
    assert on_sqlite.webhook_secret == SECRET_ENV["FLUXHOOK_WEBHOOK_SECRET"]  # the markers are in use
    assert len(on_sqlite.providers) == 6
    assert on_sqlite.aws["AWS_SECRET_ACCESS_KEY"] == SECRET_ENV["AWS_SECRET_ACCESS_KEY"]
    shown: dict[str, object] = {"settings": on_sqlite, "postgres settings": on_postgres}
    shown.update({f"provider settings {n}": p for n, p in on_sqlite.providers.items()})

    callback_url = f"https://hooks.example.com/v1/callbacks/bfl/cb1.token-{MARK}"
    order = SubmitOrder("job_1", "flux-pro-1.1", {"prompt": "a fox"}, callback_url, JOB_SECRET)
    shown["submit order"] = order
    for name, adapter in build_adapters(on_sqlite).items():
        shown[f"adapter {name}"] = adapter
        shown[f"{name} submit call"] = adapter.submit_call(order)
        # fal's queue URLs carry the model id: a job always has one (its submit's status_url).
        queue_url = "https://queue.fal.run/fal-ai/flux-pro/requests/task-1/status"
        shown[f"{name} status call"] = adapter.status_call("task-1", queue_url)
        shown[f"{name} cancel call"] = adapter.cancel_call("task-1", queue_url)
    assert SECRET_ENV["BFL_API_KEY"] in shown["bfl submit call"].headers.values()  # the key is in there
    replicate = build_adapters(on_sqlite)["replicate"]
    assert isinstance(replicate, ReplicateAdapter)
    shown["replicate keys call"] = replicate.keys_call()
    shown["replicate configured keys"] = replicate.configured_keys()
    assert replicate.configured_keys() is not None  # the secret is in there

    shown["callback tokens"] = CallbackTokens(on_sqlite.secret_key)
    shown["upload tokens"] = UploadTokens(on_sqlite.secret_key)
    shown["s3 blob store"] = open_blob_store(on_sqlite.blob_url, aws=on_sqlite.aws)
    shown["local blob store"] = open_blob_store(str(tmp_path / "blobs"), aws=on_sqlite.aws)
    shown["listener"] = Listener(with_password(postgres_url), ["wake"], lambda _: None)
    shown["new job"] = NewJob("job_1", "bfl", "flux-pro-1.1", {}, {}, JOB_SECRET, None, None, 0)
    shown["claimed delivery"] = ClaimedDelivery(
        "d", "e", "job.succeeded", b"{}", "https://r.example.com", "sub_1", None, 1, False, SUB_SECRETS)
    for settings in (replace(on_sqlite, blob_url=""), replace(on_postgres, blob_url="")):
        store = await open_stores(settings)
        try:
            backend = "postgres" if settings.uses_postgres else "sqlite"
            shown[f"{backend} database"] = store
            shown.update({f"{backend} {name}": value for name, value in vars(store).items()
                          if not name.startswith("_")})  # its public parts: the noun stores
            job, _ = await store.jobs.create_job(shown["new job"], now=1)
            shown[f"{backend} job"] = await store.jobs.get_job(job.id)
            sub = SubscriptionRecord("sub_1", "https://r.example.com/hook", (), None, SUB_SECRETS[0],
                                     SUB_SECRETS[1], 2, "enabled", None, None, 1, 1)
            shown[f"{backend} subscription"] = await store.subscriptions.create_subscription(sub)
        finally:
            await store.close()
    app = create_app(replace(on_sqlite, blob_url=""), run_workers=False)
    async with app.router.lifespan_context(app):  # logs the settings it is ready with
        shown["work context"] = app.state.ctx
    for warning in environment_warnings({**env, "FLUXHOOK_API_KEYS": "x"}) + on_postgres.warnings():
        logging.getLogger("fluxhook").warning("%s", warning)  # as the CLI does at start-up

    for name, value in shown.items():
        assert leaks(repr(value)) == [], f"the {name}'s repr shows a secret: {repr(value)[:300]}"
    logged = "\n".join(
        f"{r.getMessage()} {json.dumps(r.args, default=repr)} {r.exc_text or ''}" for r in caplog.records
    )
    assert "fluxhook ready" in logged and "FLUXHOOK_API_KEYS" in logged  # the check has lines to check
    assert leaks(logged) == []
