"""Web, worker and tick agree on one public URL, whatever each process's own PORT."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.address import AddressUnknown, adopt, agreed_settings
from service.app import create_app, open_context
from service.rules import JOB_RULES
from service.settings import Settings
from storage import open_database, sqlite_url

pytestmark = pytest.mark.anyio

BACKEND: dict[str, str] = {}  # the running test's database settings (tests/conftest.py backend_env)


@pytest.fixture(autouse=True)
def _on_each_backend(backend_env: dict[str, str]) -> Iterator[None]:
    BACKEND.update(backend_env)
    yield
    BACKEND.clear()

WEB = "http://127.0.0.1:5000"


def zero_config(data_dir: Path, **env: str) -> dict[str, str]:
    """What a Procfile runner hands a process when nothing is configured but the data dir."""
    return {**BACKEND, "FLUXHOOK_DATA_DIR": str(data_dir), "FLUXHOOK_SECRET_KEY": "k", **env}


async def announced(data_dir: Path) -> str | None:
    store = await open_database(BACKEND.get("FLUXHOOK_DATABASE_URL") or sqlite_url(data_dir / "fluxhook.db"),
                                rules=JOB_RULES, pool_size=1)
    try:
        return await store.addresses.announced_address()
    finally:
        await store.close()


async def announce(data_dir: Path, url: str) -> None:
    store = await open_database(BACKEND.get("FLUXHOOK_DATABASE_URL") or sqlite_url(data_dir / "fluxhook.db"),
                                rules=JOB_RULES, pool_size=1)
    try:
        await store.addresses.announce_address(url, owner="test", now=1)
    finally:
        await store.close()


async def test_the_web_app_announces_the_address_it_serves_and_withdraws_it_when_it_stops(tmp_path):
    settings = Settings.from_env(zero_config(tmp_path), host="0.0.0.0", port=5000)
    app = create_app(settings, run_workers=False)
    async with app.router.lifespan_context(app):
        assert await announced(tmp_path) == WEB
    assert await announced(tmp_path) is None


async def test_a_worker_uses_the_announced_address_not_one_built_from_its_own_port(tmp_path):
    environ = zero_config(tmp_path, PORT="5100")
    await announce(tmp_path, WEB)
    settings = await agreed_settings(Settings.from_env(environ), environ, wait=False)
    assert settings.public_url == WEB
    # The simulator mounted in the web process, and callbacks to the web process.
    assert {p.base_url for p in settings.providers.values()} == {f"{WEB}/simulator", f"{WEB}/simulator/fal"}
    assert settings.providers["fal"].keys_url == f"{WEB}/simulator/fal/.well-known/jwks.json"
    async with open_context(settings) as ctx:
        assert ctx.webhook_url("bfl", "job_1").startswith(f"{WEB}/v1/callbacks/bfl/")
        assert ctx.store.public_url == WEB
        assert {a.base_url for a in ctx.adapters.values()} == {f"{WEB}/simulator", f"{WEB}/simulator/fal"}


async def test_tick_with_no_address_to_use_refuses_naming_the_setting(tmp_path):
    environ = zero_config(tmp_path, PORT="5100")
    with pytest.raises(AddressUnknown, match="FLUXHOOK_PUBLIC_URL"):
        await agreed_settings(Settings.from_env(environ), environ, wait=False)


async def test_a_worker_with_no_address_warns_naming_the_setting_and_waits_for_one(tmp_path, caplog):
    environ = zero_config(tmp_path, PORT="5100")
    looks: list[float] = []

    async def sleep(seconds: float) -> None:  # the web process comes up while the worker waits
        looks.append(seconds)
        if len(looks) == 3:
            await announce(tmp_path, WEB)

    with caplog.at_level(logging.WARNING, logger="fluxhook"):
        settings = await agreed_settings(Settings.from_env(environ), environ, wait=True, sleep=sleep)
    assert settings.public_url == WEB
    assert len(looks) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "FLUXHOOK_PUBLIC_URL is not set" in warnings[0]


async def test_a_configured_public_url_wins_over_any_announcement(tmp_path):
    environ = zero_config(tmp_path, PORT="5100", FLUXHOOK_PUBLIC_URL="https://hooks.example.com")
    await announce(tmp_path, WEB)
    settings = await agreed_settings(Settings.from_env(environ), environ, wait=False)
    assert settings.public_url == "https://hooks.example.com"
    assert settings.public_url_configured


async def test_a_running_worker_follows_a_web_process_that_announces_a_new_address(tmp_path):
    environ = zero_config(tmp_path, PORT="5100")
    async with open_context(Settings.from_env(environ, public_url=WEB), rand=random.Random(1)) as ctx:
        adopt(ctx, Settings.from_env(environ, public_url="http://127.0.0.1:6000"))
        assert ctx.webhook_url("bfl", "job_1").startswith("http://127.0.0.1:6000/v1/callbacks/")
        assert ctx.store.public_url == "http://127.0.0.1:6000"
        assert ctx.adapters["bfl"].base_url == "http://127.0.0.1:6000/simulator"
