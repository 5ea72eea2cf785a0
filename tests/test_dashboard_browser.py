"""The dashboard in a real browser: Playwright driving Debian's Chromium (scripts/chromium.sh
installs it; nothing is downloaded) against a real `fluxhook serve` whose provider is the
simulator. Screenshots go to tests/artifacts/ (not committed)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.loopback import serve
from service.simulator import SimulatorConfig, create_simulator_app
from tests.e2e import ROOT, fluxhook_env, free_port, job_body, read_log, run_fluxhook, wait_up
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "artifacts"
API_KEY = "browser-test-api-key-7f3a9c"
WAIT_MS = 60_000


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Any]:
    """A fresh Chromium (its own new user-data-dir) and one page in it."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            await context.close()


@asynccontextmanager
async def fluxhook(tmp_path: Path, provider_url: str, **extra: str) -> AsyncIterator[str]:
    """`fluxhook serve` as a real process, its provider the simulator at `provider_url`."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    process = run_fluxhook(["serve", "--port", str(port)], fluxhook_env(tmp_path / "data", base, provider_url,
                                                                        **extra), log)
    try:
        await wait_up(f"{base}/healthz", process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert "Traceback" not in read_log(log), read_log(log)[-3000:]


def test_chromium_is_installed_by_the_projects_own_script():
    assert Path(CHROMIUM).exists(), "no /usr/bin/chromium: run scripts/chromium.sh (make test does)"
    assert "chromium" in (ROOT / "scripts" / "chromium.sh").read_text()


async def test_the_dashboard_lists_jobs_live_shows_a_job_and_redelivers_a_failed_delivery(tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    receiver = Receiver(fail_first=10**6, failure=503, fetch_outputs=False)  # refuses until told
    simulator = create_simulator_app(SimulatorConfig(latency_s=(1.0, 2.5), callback_drop_rate=0.5, seed=11))
    async with (
        serve(simulator) as provider_url,
        serve(receiver.app()) as receiver_url,
        fluxhook(tmp_path, provider_url, FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS="loopback",
                 FLUXHOOK_WEBHOOK_RETRY_SCHEDULE="0") as base,  # one try: a refused delivery fails
        httpx.AsyncClient(base_url=base, timeout=30) as api,
        chromium(tmp_path / "profile") as page,
    ):
        sub = await api.post("/v1/subscriptions", json={"url": f"{receiver_url}/hook",
                                                        "events": ["job.succeeded"]})
        assert sub.status_code == 201, sub.text

        # The list, loaded while there is no job at all, then watched as jobs are submitted.
        await page.goto(f"{base}/dashboard/")
        await page.wait_for_selector("#live.on")  # the event stream is open (with the cookie)
        assert await page.locator("#job-rows tr").count() == 0
        await page.evaluate("""() => {
            window.__sameDocument = true;
            window.__seen = new Set();
            const note = (row) => window.__seen.add(`${row.dataset.job} ${row.dataset.status}`);
            new MutationObserver(() => document.querySelectorAll('#job-rows tr').forEach(note)).observe(
                document.getElementById('job-rows'), {childList: true, subtree: true, attributes: true});
        }""")
        ids = []
        for n in range(4):
            response = await api.post("/v1/jobs", json=job_body(n))
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])

        await page.wait_for_function(
            """(ids) => ids.every((id) => {
                   const row = document.getElementById(`job-${id}`);
                   return row && row.dataset.status === 'succeeded'
                       && row.querySelector('img') && row.querySelector('img').complete
                       && row.querySelector('img').naturalWidth > 0;
               })""", arg=ids)
        assert await page.evaluate("() => window.__sameDocument === true")  # never reloaded
        seen = await page.evaluate("() => [...window.__seen]")
        assert {f"{job_id} succeeded" for job_id in ids} <= set(seen)
        assert len(seen) > len(ids)  # rows also showed earlier states before succeeding
        listed = await page.eval_on_selector_all("#job-rows tr", "rows => rows.map(r => r.dataset.job)")
        assert listed == ids[::-1]  # newest first
        completed_by = await page.eval_on_selector_all(".job-row .source", "els => els.map(e => e.innerText)")
        assert set(completed_by) <= {"callback", "poll"} and len(completed_by) == len(ids)
        await page.wait_for_function("() => !document.querySelector('.flash')")  # highlights faded
        await page.screenshot(path=str(ARTIFACTS / "dashboard-list.png"))

        # A job page: its thumbnail (loaded) and its timeline.
        job_id = ids[0]
        await page.click(f"#job-{job_id} a.id")
        await page.wait_for_url(f"{base}/dashboard/jobs/{job_id}")
        await page.wait_for_function(
            "() => { const img = document.querySelector('img.output-thumb');"
            " return img && img.complete && img.naturalWidth > 0; }")
        kinds = set(await page.eval_on_selector_all("#timeline .entry", "es => es.map(e => e.dataset.kind)"))
        assert {"created", "submit", "event", "ready", "stored", "delivery"} <= kinds
        assert kinds & {"callback", "poll"}

        # Its job.succeeded delivery was refused once and given up on; redeliver it.
        failed = page.locator("#timeline .entry[data-delivery]", has_text="delivery failed")
        await failed.first.wait_for()
        delivery_id = await failed.first.get_attribute("data-delivery")
        entries = f'#timeline .entry[data-delivery="{delivery_id}"]'
        attempts = page.locator(entries, has_text="Delivery attempt")
        assert await attempts.count() == 1
        assert "HTTP 503" in await attempts.first.inner_text()
        receiver.fail_first = 0  # the receiver takes deliveries from now on
        await page.click(f'button[data-redeliver="{delivery_id}"]')
        await page.wait_for_url(f"{base}/dashboard/jobs/{job_id}")
        delivered = page.locator(entries, has_text="HTTP 204")
        await delivered.wait_for()
        assert await attempts.count() == 2
        assert "delivery delivered" in await delivered.inner_text()
        await page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

        await page.goto(f"{base}/dashboard/subscriptions")
        assert await page.locator(f"tr[data-delivery='{delivery_id}'] .badge").inner_text() == "delivered"
        assert await page.locator("tr[data-status='failed']").count() == len(ids) - 1

        # The subscription's buttons: recover what failed, disable and enable, rotate the secret.
        card = f"#sub-{sub.json()['id']}"
        await page.click(f"{card} button:has-text('Recover failed')")
        await page.wait_for_url(f"{base}/dashboard/subscriptions")
        with anyio.fail_after(WAIT_MS / 1000):
            while {d["status"] for d in (await api.get(f"/v1/subscriptions/{sub.json()['id']}/deliveries"))
                   .json()["data"]} != {"delivered"}:
                await anyio.sleep(0.2)
        await page.reload()
        assert await page.locator("tr[data-status='failed']").count() == 0
        await page.screenshot(path=str(ARTIFACTS / "dashboard-subscriptions.png"), full_page=True)
        await page.click(f"{card} button:has-text('Disable')")
        await page.wait_for_selector(f"{card}[data-status='disabled']")
        disabled = page.locator("#health .card", has_text="Disabled subscriptions").locator(".value")
        assert await disabled.inner_text() == "1"
        await page.click(f"{card} button:has-text('Enable')")
        await page.wait_for_selector(f"{card}[data-status='enabled']")
        await page.click(f"{card} button:has-text('Rotate secret')")
        secret = await page.locator("pre.secret").inner_text()
        assert secret.startswith("whsec_") and secret != sub.json()["secret"]
    assert len(receiver.accepted_ids()) == len(ids)  # the redelivered and the recovered arrived


async def test_behind_an_api_key_the_browser_signs_in_with_a_form_and_a_cookie(tmp_path):
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.5), seed=3))
    async with (
        serve(simulator) as provider_url,
        fluxhook(tmp_path, provider_url, FLUXHOOK_API_KEY=API_KEY) as base,
        chromium(tmp_path / "profile") as page,
    ):
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        await page.goto(f"{base}/dashboard/subscriptions")
        assert page.url == f"{base}/dashboard/login?next=/dashboard/subscriptions"

        await page.fill("input[name=key]", "not-the-key")
        await page.click("form button")
        await page.wait_for_selector("#login-error")
        assert "/dashboard/login" in page.url

        await page.fill("input[name=key]", API_KEY)
        await page.click("form button")
        await page.wait_for_url(f"{base}/dashboard/subscriptions")
        await page.wait_for_selector("#live.on")  # the event stream takes the cookie
        await page.goto(f"{base}/dashboard/")
        assert await page.locator("h1").inner_text() == "Jobs"

        cookies = await page.context.cookies()
        [session] = [c for c in cookies if c["name"] == "fluxhook_dashboard"]
        assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/dashboard"
        assert API_KEY not in session["value"]
        assert await page.evaluate("() => document.cookie") == ""  # out of reach of scripts
        assert urls and not any(API_KEY in url or "not-the-key" in url for url in urls)

        async with httpx.AsyncClient(base_url=base) as anonymous:  # the API still wants its key
            assert (await anonymous.get("/v1/jobs")).status_code == 401
            assert (await anonymous.get("/dashboard/health")).status_code == 401
