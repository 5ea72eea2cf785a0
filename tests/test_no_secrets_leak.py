"""No secret appears in a log line or an error body, through a whole real flow."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
from typing import Any

import psycopg
import pytest

from service.loopback import serve
from service.simulator import SimulatorConfig
from tests.e2e import BACKEND_ENV, running_stack, submit_jobs, wait_terminal
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


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
