"""Settings: defaults, validation that names the variable, warnings, secrets kept once."""

from __future__ import annotations

import pytest

from service.errors import ConfigError
from service.settings import Settings


def make(tmp_path, **env):
    return Settings.from_env({"FLUXHOOK_DATA_DIR": str(tmp_path), **env})


def test_with_nothing_set_every_provider_is_the_mounted_simulator(tmp_path):
    settings = make(tmp_path)
    assert settings.simulator
    # fal's queue has its own prefix in the simulator (its paths are model ids), and its JWKS beside it.
    assert {p.base_url for p in settings.providers.values()} == {
        "http://127.0.0.1:8000/simulator", "http://127.0.0.1:8000/simulator/fal"}
    assert settings.providers["fal"].keys_url == "http://127.0.0.1:8000/simulator/fal/.well-known/jwks.json"
    assert settings.warnings() == []


def test_fal_takes_its_queue_and_jwks_urls_from_their_own_settings(tmp_path):
    settings = make(tmp_path, FAL_KEY="k", FAL_QUEUE_URL="https://queue.example/", FLUXHOOK_SIMULATOR="off")
    fal = settings.providers["fal"]
    assert (fal.base_url, fal.keys_url) == ("https://queue.example", "https://rest.alpha.fal.ai/.well-known/jwks.json")
    other = make(tmp_path, FAL_KEY="k", FAL_JWKS_URL="https://rest.fal.ai/.well-known/jwks.json")
    assert other.providers["fal"].keys_url == "https://rest.fal.ai/.well-known/jwks.json"
    with pytest.raises(ConfigError, match="FAL_JWKS_URL"):
        make(tmp_path, FAL_KEY="k", FAL_JWKS_URL="not a url")


def test_signing_keys_are_created_once_and_kept(tmp_path):
    first, second = make(tmp_path), make(tmp_path)
    assert first.secret_key == second.secret_key and len(first.secret_key) >= 32
    assert first.webhook_secret == second.webhook_secret and first.webhook_secret.startswith("whsec_")
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_a_real_key_without_a_public_https_url_is_warned_about(tmp_path):
    settings = make(tmp_path, BFL_API_KEY="k")
    assert not settings.simulator and list(settings.providers) == ["bfl"]
    [warning] = settings.warnings()
    assert "fallback poller" in warning and "bfl" in warning
    assert make(tmp_path, BFL_API_KEY="k", FLUXHOOK_PUBLIC_URL="https://hooks.example.com").warnings() == []


def test_an_open_api_on_a_public_interface_is_warned_about(tmp_path):
    settings = Settings.from_env({"FLUXHOOK_DATA_DIR": str(tmp_path)}, host="0.0.0.0")
    assert any("FLUXHOOK_API_KEY" in w for w in settings.warnings())


@pytest.mark.parametrize(("name", "value"), [
    ("FLUXHOOK_PORT", "eighty"), ("FLUXHOOK_POLL_GRACE_SECONDS", "-1"), ("FLUXHOOK_PUBLIC_URL", "ftp://x"),
    ("FLUXHOOK_SIMULATOR", "maybe"), ("FLUXHOOK_SQLITE_SYNCHRONOUS", "SOMETIMES"),
    ("FLUXHOOK_PROVIDER_ORDER", "bfl,midjourney"), ("FLUXHOOK_WEBHOOK_SECRET", "not-whsec"),
    ("FLUXHOOK_WEBHOOK_RETRY_SCHEDULE", "0,soon"), ("BFL_BASE_URL", "api.bfl.ai"),
    ("BFL_MAX_ACTIVE_TASKS", "-1"), ("RUNCOMFY_MAX_ACTIVE_TASKS", "many"),
    ("FLUXHOOK_BLOB_URL", "gs://bucket/images"), ("FLUXHOOK_BLOB_URL", "s3:///no-bucket"),
    ("FLUXHOOK_BLOB_REDIRECT", "sometimes"), ("FLUXHOOK_MODE", "lambda"),
    ("FLUXHOOK_INLINE_BUDGET_SECONDS", "0"), ("FLUXHOOK_TICK_SECONDS", "nan"),
])
def test_a_malformed_setting_fails_fast_naming_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        make(tmp_path, **{name: value})


def test_active_task_caps_default_to_what_each_provider_documents(tmp_path):
    settings = make(tmp_path)  # every provider simulated
    caps = {name: p.max_active_tasks for name, p in settings.providers.items()}
    assert caps == {"bfl": 24, "cometapi": None, "apiframe": None, "runcomfy": None, "replicate": None,
                    "fal": None}
    changed = make(tmp_path, BFL_MAX_ACTIVE_TASKS="0", APIFRAME_MAX_ACTIVE_TASKS="3")
    assert changed.providers["bfl"].max_active_tasks is None  # 0: no cap
    assert changed.providers["apiframe"].max_active_tasks == 3


def test_secrets_never_show_in_the_settings_repr(tmp_path):
    settings = make(tmp_path, FLUXHOOK_API_KEY="api-secret", BFL_API_KEY="bfl-secret",
                    FLUXHOOK_PUBLIC_URL="https://hooks.example.com", FLUXHOOK_BLOB_URL="s3://b/p",
                    AWS_SECRET_ACCESS_KEY="aws-secret", AWS_SESSION_TOKEN="aws-token",
                    FLUXHOOK_TICK_TOKEN="tick-secret")
    assert settings.aws["AWS_SECRET_ACCESS_KEY"] == "aws-secret"  # kept, for the blob store
    text = repr(settings) + repr(dict(settings.providers))
    for secret in ("api-secret", "bfl-secret", "aws-secret", "aws-token", "tick-secret",
                   settings.secret_key, settings.webhook_secret):
        assert secret not in text


def test_a_provider_without_a_key_is_configured_only_when_a_local_stand_in_serves_it(tmp_path):
    settings = make(tmp_path, BFL_API_KEY="k", COMETAPI_BASE_URL="http://127.0.0.1:8100",
                    APIFRAME_BASE_URL="https://api.apiframe.ai")
    assert set(settings.providers) == {"bfl", "cometapi"}
    assert settings.providers["cometapi"].simulated and not settings.providers["bfl"].simulated


def test_processes_starting_together_all_get_the_one_secret_created_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from service.settings import load_or_create_secret_key

    for round_ in range(5):
        data_dir = tmp_path / f"data{round_}"
        with ThreadPoolExecutor(max_workers=12) as pool:
            keys = list(pool.map(lambda d: load_or_create_secret_key(d, name="webhook_secret"),
                                 [data_dir] * 24))
        assert len(set(keys)) == 1
        assert (data_dir / "webhook_secret").read_text() == keys[0]
        assert [p.name for p in data_dir.iterdir()] == ["webhook_secret"]  # no temp file left


def test_the_store_is_the_sqlite_file_in_the_data_dir_unless_a_database_url_is_set(tmp_path):
    assert not make(tmp_path).uses_postgres
    settings = make(tmp_path, FLUXHOOK_DATABASE_URL="postgresql://app:pw@db.internal:5432/fluxhook",
                    FLUXHOOK_DATABASE_POOL_SIZE="4")
    assert settings.uses_postgres
    assert settings.database_url == "postgresql://app:pw@db.internal:5432/fluxhook"
    assert settings.database_pool_size == 4


def test_the_database_password_never_shows_in_the_settings_repr(tmp_path):
    settings = make(tmp_path, FLUXHOOK_DATABASE_URL="postgresql://app:hunter2-pw@db.internal/fluxhook")
    assert "hunter2-pw" not in repr(settings)
    assert "postgresql://app:***@db.internal/fluxhook" in repr(settings)


def test_a_database_url_that_is_not_postgresql_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(ConfigError, match="FLUXHOOK_DATABASE_URL") as refused:
        make(tmp_path, FLUXHOOK_DATABASE_URL="mysql://app:hunter2-pw@db/fluxhook")
    assert "hunter2-pw" not in str(refused.value)


def test_serverless_mode_without_a_tick_token_is_warned_about(tmp_path):
    settings = make(tmp_path, FLUXHOOK_MODE="serverless")
    assert settings.serverless and settings.tick_token is None
    assert any("FLUXHOOK_TICK_TOKEN" in w for w in settings.warnings())
    assert make(tmp_path, FLUXHOOK_MODE="serverless", FLUXHOOK_TICK_TOKEN="t").warnings() == []
    assert not make(tmp_path).serverless  # workers, unless asked


@pytest.mark.parametrize(("name", "value"), [
    ("FLUXHOOK_LOG_LEVEL", "loud"), ("FLUXHOOK_LOG_FORMAT", "xml"), ("FLUXHOOK_WORKER_CONCURRENCY", "0"),
    ("FLUXHOOK_WEBHOOK_CONCURRENCY", "0"), ("FLUXHOOK_PRUNE_INTERVAL_SECONDS", "0"),
    ("FLUXHOOK_HTTP_TIMEOUT_SECONDS", "inf"), ("FLUXHOOK_JOB_TIMEOUT_SECONDS", "0"),
    ("FLUXHOOK_UPLOAD_MAX_BYTES", "0"), ("FLUXHOOK_PORT", "0"), ("PORT", "65536"),
    ("FLUXHOOK_CRASH_AT", "everywhere"), ("FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS", "10.0.0.1/8"),
])
def test_a_value_out_of_its_range_fails_fast_naming_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        make(tmp_path, **{name: value})


def test_zero_is_accepted_where_it_means_something(tmp_path):
    settings = make(tmp_path, FLUXHOOK_POLL_GRACE_SECONDS="0", FLUXHOOK_RETAIN_EVENTS_SECONDS="0",
                    FLUXHOOK_SHUTDOWN_GRACE_SECONDS="0", BFL_MAX_ACTIVE_TASKS="0")
    assert (settings.poll_grace_s, settings.retain_events_s, settings.shutdown_grace_s) == (0, 0, 0)


def test_parsing_creates_nothing_and_preparing_makes_the_data_dir_and_its_secrets(tmp_path):
    data = tmp_path / "data"
    parsed = Settings.parse({"FLUXHOOK_DATA_DIR": str(data)})
    assert not data.exists() and parsed.secret_key == ""
    prepared = parsed.prepared()
    assert prepared.secret_key == (data / "secret_key").read_text()
    assert prepared.webhook_secret == (data / "webhook_secret").read_text()


def test_with_everything_elsewhere_the_data_dir_is_not_needed(tmp_path):
    data = tmp_path / "data"
    settings = Settings.from_env({
        "FLUXHOOK_DATA_DIR": str(data), "FLUXHOOK_SECRET_KEY": "k", "FLUXHOOK_BLOB_URL": "s3://b/p",
        "FLUXHOOK_WEBHOOK_SECRET": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
        "FLUXHOOK_DATABASE_URL": "postgresql://app@db/fluxhook"})
    assert not settings.needs_data_dir and not data.exists()


def test_a_data_dir_under_a_file_is_refused_naming_the_setting(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="FLUXHOOK_DATA_DIR: cannot create"):
        make(tmp_path / "file" / "data")


def test_an_unknown_fluxhook_variable_is_named_with_the_closest_known_one():
    from service.settings import unknown_variables

    found = unknown_variables({"FLUXHOOK_POLL_BASE_SECOND": "1", "FLUXHOOK_ZZZ": "1", "FLUXHOOK_PORT": "1",
                               "FLUXHOOK_SIM_SEED": "1", "HOME": "/root"}, also_known=["FLUXHOOK_SIM_SEED"])
    assert found == [
        "FLUXHOOK_POLL_BASE_SECOND is not a fluxhook setting (did you mean FLUXHOOK_POLL_BASE_SECONDS?); "
        "it is ignored",
        "FLUXHOOK_ZZZ is not a fluxhook setting; it is ignored",
    ]
