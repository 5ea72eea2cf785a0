"""Settings: one frozen object, read once from the environment at the edge.

Every setting is declared once in `SETTINGS` (name, default, meaning); the README's table is
checked against it by a test, so none goes undocumented.
"""

from __future__ import annotations

import difflib
import math
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from service.errors import ConfigError
from service.urls import is_loopback_host

SIMULATOR_MOUNT = "/simulator"


@dataclass(frozen=True)
class SettingDoc:
    name: str
    default: str
    meaning: str
    secret: bool = False  # `fluxhook check` shows it masked


SETTINGS: tuple[SettingDoc, ...] = (
    SettingDoc("FLUXHOOK_DATA_DIR", "./data", "Where the SQLite database, images and signing key live."),
    SettingDoc("FLUXHOOK_PUBLIC_URL", "(the web's own address)", "Base URL providers call back and clients fetch outputs from. Unset: `fluxhook serve` uses `http://127.0.0.1:<port>` and announces it in the database; `worker` and `tick` use the announced URL, never one built from their own `PORT` (until one is announced a worker waits, submitting nothing, and `tick` exits 2)."),
    SettingDoc("FLUXHOOK_HOST", "127.0.0.1", "Address `fluxhook serve` listens on (`--host` overrides)."),
    SettingDoc("FLUXHOOK_PORT", "8000", "Port `fluxhook serve` listens on (`--port` overrides; `PORT` also works)."),
    SettingDoc("FLUXHOOK_API_KEY", "(unset: open)", "When set, every `/v1/` route except callbacks needs `Authorization: Bearer <key>`.", secret=True),
    SettingDoc("FLUXHOOK_URL", "(`FLUXHOOK_PUBLIC_URL`, else `http://127.0.0.1:<FLUXHOOK_PORT>`)", "The running fluxhook the command-line client (`fluxhook submit`, `jobs`, `job`, `watch`) talks to (`--url` overrides); it sends `FLUXHOOK_API_KEY` (or `--api-key`) as its bearer token. The server does not read it."),
    SettingDoc("FLUXHOOK_SECRET_KEY", "(created once in the data dir)", "Signs callback tokens. If unset, a random key is created once in `<data dir>/secret_key` and reused.", secret=True),
    SettingDoc("FLUXHOOK_SIMULATOR", "auto", "`on`, `off` or `auto`: mount the embedded provider simulator at `/simulator`. `auto` = on when no provider key is set."),
    SettingDoc("FLUXHOOK_MAX_BODY_BYTES", "1048576", "Largest API request body; larger gets 413."),
    SettingDoc("FLUXHOOK_CALLBACK_MAX_BYTES", "262144", "Largest provider callback body; larger gets 413 and changes nothing."),
    SettingDoc("FLUXHOOK_MAX_OUTPUT_BYTES", "52428800", "Largest output image fluxhook will store."),
    SettingDoc("FLUXHOOK_POLL_GRACE_SECONDS", "15", "How long after submit the fallback poller waits for a callback before polling."),
    SettingDoc("FLUXHOOK_POLL_BASE_SECONDS", "2", "First fallback-poll interval; doubles with jitter on each poll."),
    SettingDoc("FLUXHOOK_POLL_MAX_SECONDS", "30", "Cap on the fallback-poll interval."),
    SettingDoc("FLUXHOOK_JOB_TIMEOUT_SECONDS", "900", "A job with no final provider word this long after creation fails with `timeout`."),
    SettingDoc("FLUXHOOK_NOT_FOUND_GRACE_SECONDS", "60", "A provider's `Task not found` fails the job only this long after submit."),
    SettingDoc("FLUXHOOK_SUBMIT_TIMEOUT_SECONDS", "300", "How long retryable submit failures (429, 5xx, timeouts) are retried before the job fails."),
    SettingDoc("FLUXHOOK_ADOPT_WINDOW_SECONDS", "180", "A submit whose answer was lost (read timeout, crash before the commit) may have created a provider task: for a provider that calls back, fluxhook waits this long after it for the task's callback and adopts the task it names, instead of submitting (and paying) again."),
    SettingDoc("FLUXHOOK_CRASH_AT", "(unset)", "For crash tests only: a comma list of named points (`submit.before_send`, `submit.answered`, `callback.recorded`: a callback durably recorded and not yet acknowledged nor applied, `callback.applying`: inside the transaction applying recorded callbacks, `download.leased`: an applied callback's download leased to this process's worker and not yet started, `notify.leased`: a success's deliveries leased to this process's notifier and not yet sent) where the process kills itself with SIGKILL. Never set it in production."),
    SettingDoc("FLUXHOOK_OUTPUT_WINDOW_SECONDS", "600", "How long output downloads are retried after the provider says ready (BFL URLs live ~10 min)."),
    SettingDoc("FLUXHOOK_RETRY_BASE_SECONDS", "1", "First delay for submit and download retries; doubles with jitter."),
    SettingDoc("FLUXHOOK_RETRY_MAX_SECONDS", "60", "Cap on submit and download retry delays."),
    SettingDoc("FLUXHOOK_HTTP_TIMEOUT_SECONDS", "30", "Timeout for each call to a provider or download."),
    SettingDoc("FLUXHOOK_WORKER_CONCURRENCY", "16", "How many submits, polls and downloads one worker runs at once."),
    SettingDoc("FLUXHOOK_WORKER_IDLE_SECONDS", "0.25", "Longest a worker sleeps before looking for due work it was not woken for: the safety net, since work committed by another process (callbacks received by a separate web process) wakes it at once (PostgreSQL: LISTEN/NOTIFY; SQLite: its WAL file watched). A web process without workers (`serve --no-workers`) looks this often for recorded callbacks no worker has applied."),
    SettingDoc("FLUXHOOK_TASK_LEASE_SECONDS", "120", "A claimed piece of work not finished in this time (a crashed worker) is claimed again."),
    SettingDoc("FLUXHOOK_SHUTDOWN_GRACE_SECONDS", "8", "On SIGTERM/SIGINT the workers stop claiming at once and give work in flight this long to finish; what is left is cancelled and handed back for another process to take at once (8 fits a platform's usual 10 s grace)."),
    SettingDoc("FLUXHOOK_MODE", "workers", "`workers`: background workers submit, poll, download and notify (`fluxhook serve` runs them in-process, or `fluxhook worker` beside `serve --no-workers`). `serverless`: no background work at all (for Cloud Run, AWS Lambda and the like, where a process has CPU only while it answers a request): `POST /v1/jobs` submits before answering, a provider callback is recorded and then its download, stored outputs and notifications are done before the callback is answered, each within `FLUXHOOK_INLINE_BUDGET_SECONDS`; what is left (retries, fallback polls, later deliveries, pruning) is run by `POST /v1/tick` or `fluxhook tick` on a schedule."),
    SettingDoc("FLUXHOOK_INLINE_BUDGET_SECONDS", "20", "Serverless mode: the most a request spends on the work it caused before answering. Work not done by then is handed back as due work for the next tick, never lost; keep it above `FLUXHOOK_HTTP_TIMEOUT_SECONDS` so a submit is rarely cut off in flight, and below the platform's request timeout."),
    SettingDoc("FLUXHOOK_TICK_TOKEN", "(unset: `POST /v1/tick` refuses every call)", "The credential of `POST /v1/tick`: callers send `Authorization: Bearer <token>` (Cloud Scheduler's header, an EventBridge connection, Vercel's `CRON_SECRET`). Its own secret, not the API key, so a scheduler holds no more than the right to run due work.", secret=True),
    SettingDoc("FLUXHOOK_TICK_SECONDS", "50", "The most one tick (`POST /v1/tick`, `fluxhook tick`) spends running due work; what is left stays due for the next. `POST /v1/tick?seconds=N` may ask for less."),
    SettingDoc("FLUXHOOK_RETAIN_EVENTS_SECONDS", "2592000", "Events older than this (30 days) are pruned with their deliveries and delivery attempts, never while a delivery of theirs is still pending. 0 keeps them forever."),
    SettingDoc("FLUXHOOK_RETAIN_CALLBACKS_SECONDS", "2592000", "Received provider callbacks (raw bodies) and answered polls (a job's timeline) older than this are pruned. 0 keeps them forever."),
    SettingDoc("FLUXHOOK_RETAIN_DELIVERY_ATTEMPTS_SECONDS", "2592000", "Delivery attempts (the delivery log's rows) older than this are pruned; each delivery keeps its count and last result. 0 keeps them forever."),
    SettingDoc("FLUXHOOK_RETAIN_IMAGES_SECONDS", "0", "Finished jobs' images are removed this long after the job finished, as `DELETE /v1/jobs/{id}` would (an image another kept job or a live upload shares stays). 0 (the default) keeps them until deleted."),
    SettingDoc("FLUXHOOK_PRUNE_INTERVAL_SECONDS", "3600", "How often `fluxhook worker` (and `serve` with workers) prunes by the retention settings, in batches of 500 rows; `fluxhook tick` prunes on every run."),
    SettingDoc("FLUXHOOK_DATABASE_URL", "(the SQLite file in the data dir)", "Where the store lives: unset, `<data dir>/fluxhook.db` (SQLite, one host); `postgresql://user:pass@host:5432/db` for PostgreSQL, shared by processes on many hosts. The password never reaches a log line."),
    SettingDoc("FLUXHOOK_DATABASE_POOL_SIZE", "10", "PostgreSQL only: connections each process keeps open to the database (its transactions run on them, at most this many at once)."),
    SettingDoc("FLUXHOOK_BLOB_URL", "<data dir>/blobs", "Where output images and uploads are stored: a local directory (a path or `file://` URL), or `s3://bucket/prefix` for S3-compatible object storage (AWS S3, R2, MinIO, GCS's S3 interface) configured by AWS's standard variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`; default `us-east-1`) and `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) for a service other than AWS."),
    SettingDoc("FLUXHOOK_BLOB_REDIRECT", "stream", "How `GET /v1/jobs/{id}/outputs/{i}` and upload URLs serve an image: `stream` passes the bytes through fluxhook; `presigned` answers 307 to a short-lived presigned URL of the object store (with `s3://` only; a local directory always streams)."),
    SettingDoc("FLUXHOOK_BLOB_REDIRECT_SECONDS", "300", "How long a presigned URL from `FLUXHOOK_BLOB_REDIRECT=presigned` stays valid."),
    SettingDoc("FLUXHOOK_SQLITE_SYNCHRONOUS", "FULL", "SQLite `synchronous` pragma: FULL survives power loss, NORMAL only process crashes."),
    SettingDoc("FLUXHOOK_LOG_LEVEL", "info", "Log level: `debug`, `info`, `warning` or `error`."),
    SettingDoc("FLUXHOOK_LOG_FORMAT", "text", "`text`: one readable line per record; `json`: one JSON object per line (`time`, `level`, `logger`, `message`, and `exception` when there is one), for a log collector."),
    SettingDoc("FLUXHOOK_PROVIDER_ORDER", "bfl,cometapi,apiframe,runcomfy,replicate,fal", "Order in which `\"provider\": \"auto\"` tries the configured providers that serve a model; a submit another provider could fix (429, 5xx, timeout, no credits) fails over to the next."),
    SettingDoc("FLUXHOOK_UPLOAD_MAX_BYTES", "10485760", "Largest reference image `POST /v1/uploads` accepts."),
    SettingDoc("FLUXHOOK_UPLOAD_URL_TTL_SECONDS", "86400", "How long a signed upload URL stays fetchable."),
    SettingDoc("FLUXHOOK_WEBHOOK_SECRET", "(created once in the data dir)", "The `whsec_` secret that signs per-job notifications (`webhook_url` on a job). If unset, one is created once in `<data dir>/webhook_secret`; read it at `GET /v1/webhook-secret`.", secret=True),
    SettingDoc("FLUXHOOK_WEBHOOK_RETRY_SCHEDULE", "0,5,300,1800,7200,18000,36000,36000", "Seconds before each delivery attempt (Svix's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h); each retry gets ±20% jitter."),
    SettingDoc("FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS", "15", "Timeout for one delivery attempt."),
    SettingDoc("FLUXHOOK_WEBHOOK_DISABLE_AFTER_SECONDS", "432000", "A subscription failing for longer than this (5 days) is disabled and a `subscription.disabled` event recorded."),
    SettingDoc("FLUXHOOK_WEBHOOK_CONCURRENCY", "32", "How many deliveries one worker sends at once."),
    SettingDoc("FLUXHOOK_WEBHOOK_PER_DESTINATION", "4", "How many deliveries to one destination may be in flight at once, so a slow receiver never delays others."),
    SettingDoc("FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS", "(none)", "Comma list of CIDRs, IPs, host names, `loopback` or `private` that notifications may go to although they are not public addresses (checked on the address actually connected to)."),
    SettingDoc("BFL_API_KEY", "(unset)", "Black Forest Labs API key (`x-key`). A provider with no key is not configured, unless the simulator serves it (mounted, or its base URL is on this machine).", secret=True),
    SettingDoc("BFL_BASE_URL", "https://api.bfl.ai", "BFL API base URL. With the simulator on and no key: `<public URL>/simulator`."),
    SettingDoc("BFL_MAX_ACTIVE_TASKS", "24", "Most jobs active at BFL at once (submitted and without its final word): BFL allows 24 per account (6 for `flux-kontext-max`, a cap the catalog adds) and answers 429 past that. Jobs beyond it wait in fluxhook, in order, and are submitted as slots free up; `\"provider\": \"auto\"` jobs may overflow to the next provider. `0` = no cap."),
    SettingDoc("BFL_OUTPUT_HOSTS", "*.bfl.ai,bfldeliveryprod.blob.core.windows.net", "Hosts BFL outputs may be downloaded from (comma list, `*.` wildcards); the base URL's host is always added."),
    SettingDoc("COMETAPI_API_KEY", "(unset)", "CometAPI key (`Authorization: Bearer`).", secret=True),
    SettingDoc("COMETAPI_BASE_URL", "https://api.cometapi.com", "CometAPI base URL (simulator: `<public URL>/simulator`)."),
    SettingDoc("COMETAPI_MAX_ACTIVE_TASKS", "0", "Most jobs active at CometAPI at once, as for BFL; `0` = no cap (CometAPI documents none)."),
    SettingDoc("COMETAPI_OUTPUT_HOSTS", "*.bfl.ai,bfldeliveryprod.blob.core.windows.net,*.cometapi.com", "Hosts CometAPI outputs may be downloaded from; the base URL's host is always added."),
    SettingDoc("APIFRAME_API_KEY", "(unset)", "Apiframe key (`X-API-Key`); its SHA-256 also verifies Apiframe's callbacks.", secret=True),
    SettingDoc("APIFRAME_BASE_URL", "https://api.apiframe.ai", "Apiframe base URL (simulator: `<public URL>/simulator`)."),
    SettingDoc("APIFRAME_MAX_ACTIVE_TASKS", "0", "Most jobs active at Apiframe at once, as for BFL; `0` = no cap (Apiframe documents none)."),
    SettingDoc("APIFRAME_OUTPUT_HOSTS", "*.apiframe.ai", "Hosts Apiframe outputs may be downloaded from; the base URL's host is always added."),
    SettingDoc("RUNCOMFY_API_TOKEN", "(unset)", "RunComfy token (`Authorization: Bearer`).", secret=True),
    SettingDoc("RUNCOMFY_BASE_URL", "https://model-api.runcomfy.net", "RunComfy Model API base URL (simulator: `<public URL>/simulator`)."),
    SettingDoc("RUNCOMFY_MAX_ACTIVE_TASKS", "0", "Most jobs active at RunComfy at once, as for BFL; `0` = no cap (RunComfy documents none: it queues)."),
    SettingDoc("RUNCOMFY_OUTPUT_HOSTS", "*.runcomfy.net,*.runcomfy.com", "Hosts RunComfy outputs may be downloaded from; the base URL's host is always added."),
    SettingDoc("REPLICATE_API_TOKEN", "(unset)", "Replicate API token (`Authorization: Bearer`).", secret=True),
    SettingDoc("REPLICATE_BASE_URL", "https://api.replicate.com", "Replicate API base URL (simulator: `<public URL>/simulator`)."),
    SettingDoc("REPLICATE_MAX_ACTIVE_TASKS", "0", "Most jobs active at Replicate at once, as for BFL; `0` = no cap (Replicate limits creating predictions to 600 a minute, not how many run)."),
    SettingDoc("REPLICATE_OUTPUT_HOSTS", "replicate.delivery,*.replicate.delivery", "Hosts Replicate outputs may be downloaded from; the base URL's host is always added."),
    SettingDoc("REPLICATE_WEBHOOK_SECRET", "(fetched from Replicate)", "The account's `whsec_` signing secret that Replicate's callbacks are verified with. Unset: fetched once from `GET /v1/webhooks/default/secret`, cached, and fetched again when a callback is signed with another (a rotation). A callback without a valid signature, or stamped more than 5 minutes off, is refused.", secret=True),
    SettingDoc("FAL_KEY", "(unset)", "fal.ai key (`Authorization: Key`).", secret=True),
    SettingDoc("FAL_QUEUE_URL", "https://queue.fal.run", "fal's queue base URL (simulator: `<public URL>/simulator/fal`)."),
    SettingDoc("FAL_JWKS_URL", "https://rest.alpha.fal.ai/.well-known/jwks.json", "Where fal publishes the Ed25519 keys its callbacks are signed with (fetched when first needed, kept 24 h, fetched again for an unknown key). Public implementations use this URL or `https://rest.fal.ai/.well-known/jwks.json`; which is canonical is unconfirmed. Simulator: `<FAL_QUEUE_URL>/.well-known/jwks.json`."),
    SettingDoc("FAL_MAX_ACTIVE_TASKS", "0", "Most jobs active at fal at once, as for BFL; `0` = no cap (fal queues what is over an account's concurrency and never rejects it)."),
    SettingDoc("FAL_OUTPUT_HOSTS", "*.fal.media,fal.media", "Hosts fal outputs may be downloaded from (its CDN, `v3.fal.media`); the base URL's host is always added."),
)


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    base_url: str
    api_key: str = field(repr=False)
    output_hosts: tuple[str, ...]
    simulated: bool = False
    max_active_tasks: int | None = None  # None: no cap
    # The account's callback signing secret, when the provider has one and it is set
    # (REPLICATE_WEBHOOK_SECRET); None: the adapter fetches it.
    signing_secret: str | None = field(default=None, repr=False)
    keys_url: str | None = None  # where account-wide callback keys are published (fal's JWKS)

    def __repr__(self) -> str:
        return (
            f"ProviderSettings(name={self.name!r}, base_url={self.base_url!r}, "
            f"api_key='***', output_hosts={self.output_hosts!r}, simulated={self.simulated}, "
            f"max_active_tasks={self.max_active_tasks}, keys_url={self.keys_url!r})"
        )


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    public_url: str
    host: str
    port: int
    api_key: str | None = field(repr=False)
    secret_key: str = field(repr=False)
    simulator: bool
    providers: Mapping[str, ProviderSettings]
    provider_order: tuple[str, ...] = ("bfl", "cometapi", "apiframe", "runcomfy", "replicate", "fal")
    # False: public_url was built from this process's own host and port, which is right only
    # for `fluxhook serve`; workers adopt the address the web process announces (service/address.py).
    public_url_configured: bool = False
    upload_max_bytes: int = 10_485_760
    upload_url_ttl_s: float = 86_400.0
    webhook_secret: str = field(default="", repr=False)
    webhook_retry_schedule: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_timeout_s: float = 15.0
    webhook_disable_after_s: float = 432_000.0
    webhook_concurrency: int = 32
    webhook_per_destination: int = 4
    allow_private_destinations: str = ""
    max_body_bytes: int = 1_048_576
    callback_max_bytes: int = 262_144
    max_output_bytes: int = 52_428_800
    poll_grace_s: float = 15.0
    poll_base_s: float = 2.0
    poll_max_s: float = 30.0
    job_timeout_s: float = 900.0
    not_found_grace_s: float = 60.0
    submit_timeout_s: float = 300.0
    adopt_window_s: float = 180.0
    crash_at: frozenset[str] = frozenset()
    output_window_s: float = 600.0
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    http_timeout_s: float = 30.0
    worker_concurrency: int = 16
    worker_idle_s: float = 0.25
    task_lease_s: float = 120.0
    shutdown_grace_s: float = 8.0
    serverless: bool = False  # FLUXHOOK_MODE=serverless: no background workers (service/inline.py)
    inline_budget_s: float = 20.0
    tick_token: str | None = field(default=None, repr=False)
    tick_s: float = 50.0
    retain_events_s: float = 2_592_000.0
    retain_callbacks_s: float = 2_592_000.0
    retain_delivery_attempts_s: float = 2_592_000.0
    retain_images_s: float = 0.0
    prune_interval_s: float = 3600.0
    sqlite_synchronous: str = "FULL"
    database_url: str = field(default="", repr=False)  # "": SQLite at db_path
    database_pool_size: int = 10
    log_level: str = "info"
    log_format: str = "text"
    blob_url: str = ""  # "": `<data dir>/blobs`
    blob_redirect: str = "stream"
    blob_redirect_s: float = 300.0
    aws: Mapping[str, str] = field(default_factory=dict, repr=False)  # AWS_* for an s3:// blob URL

    def warnings(self) -> list[str]:
        """Settings that work but probably not as meant; logged at start-up."""
        found = []
        real = [p.name for p in self.providers.values() if not p.simulated]
        parts = urlsplit(self.public_url)
        if real and (parts.scheme != "https" or is_loopback_host(parts.hostname or "")):
            found.append(
                f"FLUXHOOK_PUBLIC_URL is {self.public_url}: {', '.join(real)} cannot call it back "
                "(providers need a public https URL; BFL will not call http endpoints), so those "
                "jobs finish only by the fallback poller"
            )
        if not self.providers:
            found.append("no provider is configured: set a provider key or FLUXHOOK_SIMULATOR=on")
        if self.api_key is None and self.host not in ("127.0.0.1", "localhost", "::1"):
            found.append(f"FLUXHOOK_API_KEY is not set and fluxhook listens on {self.host}: the API is open")
        if self.serverless and self.tick_token is None:
            found.append(
                "FLUXHOOK_MODE is serverless and FLUXHOOK_TICK_TOKEN is not set: only `fluxhook tick` "
                "can run retries, fallback polls and later deliveries; schedule it, or set the token "
                "and schedule POST /v1/tick"
            )
        return found

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fluxhook.db"

    @property
    def uses_postgres(self) -> bool:
        return bool(self.database_url)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def blob_location(self) -> str:
        return self.blob_url or str(self.blob_dir)

    def __repr__(self) -> str:  # secrets never reach a log line
        return (
            f"Settings(data_dir={str(self.data_dir)!r}, public_url={self.public_url!r}, "
            f"simulator={self.simulator}, providers={sorted(self.providers)!r}, "
            f"api_key={'***' if self.api_key else None}, secret_key='***', "
            f"database_url={redact_url(self.database_url)!r})"
        )

    @property
    def needs_data_dir(self) -> bool:
        """Whether anything lives in the data dir: a kept secret, the SQLite file or the blobs."""
        return not (self.secret_key and self.webhook_secret and self.uses_postgres and self.blob_url)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        host: str | None = None,
        port: int | None = None,
        public_url: str | None = None,
    ) -> Settings:
        """Every setting read from `environ` and checked (`parse`), with the data dir prepared."""
        return cls.parse(environ, host=host, port=port, public_url=public_url).prepared()

    @classmethod
    def parse(
        cls,
        environ: Mapping[str, str],
        *,
        host: str | None = None,
        port: int | None = None,
        public_url: str | None = None,
    ) -> Settings:
        """Read every setting from `environ` (tests pass a dict) and check it; creates nothing.

        A bad value raises ConfigError naming the setting. A secret kept in the data dir is ""
        until `prepared()` loads it. `public_url` is the address a web process announced, used
        when FLUXHOOK_PUBLIC_URL is not set; without either, the public URL is this process's
        own `host` and `port`.
        """
        env = _Env(environ)
        data_dir = Path(env.text("FLUXHOOK_DATA_DIR", "./data")).resolve()
        host = host or env.text("FLUXHOOK_HOST", "127.0.0.1")
        if port is None:
            port = env.integer("FLUXHOOK_PORT", env.integer("PORT", 8000, minimum=1, maximum=65535),
                               minimum=1, maximum=65535)
        elif not 1 <= port <= 65535:
            raise ConfigError(f"--port must be from 1 to 65535, got {port}")
        local_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        configured = env.text("FLUXHOOK_PUBLIC_URL", "")
        public_url = (configured or public_url or f"http://{local_host}:{port}").rstrip("/")
        _check_url("FLUXHOOK_PUBLIC_URL", public_url)

        simulator_mode = _choice("FLUXHOOK_SIMULATOR", env.text("FLUXHOOK_SIMULATOR", "auto"),
                                 ("auto", "on", "off"))
        any_key = any(env.text(spec.key_var, "") for spec in _PROVIDER_SPECS.values())
        simulator = simulator_mode == "on" or (simulator_mode == "auto" and not any_key)

        found = {name: _provider_settings(name, env, public_url, simulator) for name in PROVIDER_NAMES}
        providers = {name: p for name, p in found.items() if p is not None}
        order = env.items("FLUXHOOK_PROVIDER_ORDER", list(PROVIDER_NAMES))
        unknown = [name for name in order if name not in PROVIDER_NAMES]
        if unknown:
            raise ConfigError(f"FLUXHOOK_PROVIDER_ORDER names unknown providers: {', '.join(unknown)}")
        log_level, log_format = log_settings(environ)
        webhook_secret = env.text("FLUXHOOK_WEBHOOK_SECRET", "")
        if webhook_secret:
            _check_webhook_secret("FLUXHOOK_WEBHOOK_SECRET", webhook_secret)
        settings = cls(
            data_dir=data_dir,
            public_url=public_url,
            host=host,
            port=port,
            api_key=env.text("FLUXHOOK_API_KEY", "") or None,
            secret_key=env.text("FLUXHOOK_SECRET_KEY", ""),
            simulator=simulator,
            providers=providers,
            provider_order=tuple(dict.fromkeys([*order, *PROVIDER_NAMES])),
            public_url_configured=bool(configured),
            upload_max_bytes=env.integer("FLUXHOOK_UPLOAD_MAX_BYTES", 10_485_760, minimum=1),
            upload_url_ttl_s=env.number("FLUXHOOK_UPLOAD_URL_TTL_SECONDS", 86_400.0, positive=True),
            webhook_secret=webhook_secret,
            webhook_retry_schedule=_schedule(env.items(
                "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE", ["0", "5", "300", "1800", "7200", "18000", "36000", "36000"])),
            webhook_timeout_s=env.number("FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS", 15.0, positive=True),
            webhook_disable_after_s=env.number("FLUXHOOK_WEBHOOK_DISABLE_AFTER_SECONDS", 432_000.0,
                                               positive=True),
            webhook_concurrency=env.integer("FLUXHOOK_WEBHOOK_CONCURRENCY", 32, minimum=1),
            webhook_per_destination=env.integer("FLUXHOOK_WEBHOOK_PER_DESTINATION", 4, minimum=1),
            allow_private_destinations=_destinations(env.text("FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS", "")),
            max_body_bytes=env.integer("FLUXHOOK_MAX_BODY_BYTES", 1_048_576, minimum=1),
            callback_max_bytes=env.integer("FLUXHOOK_CALLBACK_MAX_BYTES", 262_144, minimum=1),
            max_output_bytes=env.integer("FLUXHOOK_MAX_OUTPUT_BYTES", 52_428_800, minimum=1),
            poll_grace_s=env.number("FLUXHOOK_POLL_GRACE_SECONDS", 15.0),
            poll_base_s=env.number("FLUXHOOK_POLL_BASE_SECONDS", 2.0, positive=True),
            poll_max_s=env.number("FLUXHOOK_POLL_MAX_SECONDS", 30.0, positive=True),
            job_timeout_s=env.number("FLUXHOOK_JOB_TIMEOUT_SECONDS", 900.0, positive=True),
            not_found_grace_s=env.number("FLUXHOOK_NOT_FOUND_GRACE_SECONDS", 60.0),
            submit_timeout_s=env.number("FLUXHOOK_SUBMIT_TIMEOUT_SECONDS", 300.0),
            adopt_window_s=env.number("FLUXHOOK_ADOPT_WINDOW_SECONDS", 180.0),
            crash_at=_crash_points(env.items("FLUXHOOK_CRASH_AT", [])),
            output_window_s=env.number("FLUXHOOK_OUTPUT_WINDOW_SECONDS", 600.0, positive=True),
            retry_base_s=env.number("FLUXHOOK_RETRY_BASE_SECONDS", 1.0, positive=True),
            retry_max_s=env.number("FLUXHOOK_RETRY_MAX_SECONDS", 60.0, positive=True),
            http_timeout_s=env.number("FLUXHOOK_HTTP_TIMEOUT_SECONDS", 30.0, positive=True),
            worker_concurrency=env.integer("FLUXHOOK_WORKER_CONCURRENCY", 16, minimum=1),
            worker_idle_s=env.number("FLUXHOOK_WORKER_IDLE_SECONDS", 0.25, positive=True),
            task_lease_s=env.number("FLUXHOOK_TASK_LEASE_SECONDS", 120.0, positive=True),
            shutdown_grace_s=env.number("FLUXHOOK_SHUTDOWN_GRACE_SECONDS", 8.0),
            serverless=_choice("FLUXHOOK_MODE", env.text("FLUXHOOK_MODE", "workers"),
                               ("workers", "serverless")) == "serverless",
            inline_budget_s=env.number("FLUXHOOK_INLINE_BUDGET_SECONDS", 20.0, positive=True),
            tick_token=env.text("FLUXHOOK_TICK_TOKEN", "") or None,
            tick_s=env.number("FLUXHOOK_TICK_SECONDS", 50.0, positive=True),
            retain_events_s=env.number("FLUXHOOK_RETAIN_EVENTS_SECONDS", 2_592_000.0),
            retain_callbacks_s=env.number("FLUXHOOK_RETAIN_CALLBACKS_SECONDS", 2_592_000.0),
            retain_delivery_attempts_s=env.number("FLUXHOOK_RETAIN_DELIVERY_ATTEMPTS_SECONDS", 2_592_000.0),
            retain_images_s=env.number("FLUXHOOK_RETAIN_IMAGES_SECONDS", 0.0),
            prune_interval_s=env.number("FLUXHOOK_PRUNE_INTERVAL_SECONDS", 3600.0, positive=True),
            sqlite_synchronous=_choice("FLUXHOOK_SQLITE_SYNCHRONOUS",
                                       env.text("FLUXHOOK_SQLITE_SYNCHRONOUS", "FULL"),
                                       ("OFF", "NORMAL", "FULL", "EXTRA"), upper=True),
            database_url=_database_url(env.text("FLUXHOOK_DATABASE_URL", "")),
            database_pool_size=env.integer("FLUXHOOK_DATABASE_POOL_SIZE", 10, minimum=1),
            log_level=log_level,
            log_format=log_format,
            blob_url=_blob_url(env.text("FLUXHOOK_BLOB_URL", "")),
            blob_redirect=_choice("FLUXHOOK_BLOB_REDIRECT", env.text("FLUXHOOK_BLOB_REDIRECT", "stream"),
                                  ("stream", "presigned")),
            # SigV4 presigned URLs live at most 7 days.
            blob_redirect_s=env.number("FLUXHOOK_BLOB_REDIRECT_SECONDS", 300.0, positive=True,
                                       maximum=604_800.0),
            aws={name: value for name, value in environ.items() if name in AWS_VARIABLES},
        )
        _within_cap("FLUXHOOK_POLL_BASE_SECONDS", settings.poll_base_s,
                    "FLUXHOOK_POLL_MAX_SECONDS", settings.poll_max_s)
        _within_cap("FLUXHOOK_RETRY_BASE_SECONDS", settings.retry_base_s,
                    "FLUXHOOK_RETRY_MAX_SECONDS", settings.retry_max_s)
        return settings

    def prepared(self) -> Settings:
        """These settings with the data dir created and writable, and the secrets kept there
        loaded (created once). Raises ConfigError naming FLUXHOOK_DATA_DIR when it cannot be."""
        if not self.needs_data_dir:
            return self
        from service.webhook_signing import new_secret

        prepare_data_dir(self.data_dir)
        try:
            secret_key = self.secret_key or load_or_create_secret_key(self.data_dir)
            webhook_secret = self.webhook_secret or load_or_create_secret_key(
                self.data_dir, name="webhook_secret", make=new_secret)
        except OSError as exc:
            raise ConfigError(f"FLUXHOOK_DATA_DIR: cannot keep secrets in {self.data_dir}: "
                              f"{exc.strerror or exc}") from None
        if not self.webhook_secret:
            _check_webhook_secret(f"{self.data_dir / 'webhook_secret'}", webhook_secret)
        return replace(self, secret_key=secret_key, webhook_secret=webhook_secret)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
CRASH_POINTS = frozenset({"submit.before_send", "submit.answered", "callback.recorded", "callback.applying",
                          "download.leased", "notify.leased"})


def prepare_data_dir(data_dir: Path) -> None:
    """Create `data_dir` if needed and prove it writable; ConfigError naming the setting if not."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"FLUXHOOK_DATA_DIR: cannot create {data_dir}: {exc.strerror or exc}") from None
    probe = data_dir / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"FLUXHOOK_DATA_DIR: cannot write in {data_dir}: {exc.strerror or exc}") from None


def data_dir_problem(data_dir: Path) -> str | None:
    """Why `data_dir` could not be created or written, judged leaving nothing behind: a probe
    file in the nearest directory that exists (permission bits alone miss a read-only mount)."""
    path = data_dir
    while not path.exists() and path.parent != path:
        path = path.parent
    verb = "write in" if path == data_dir else "create"
    if not path.is_dir():
        return f"FLUXHOOK_DATA_DIR: cannot {verb} {data_dir}: {path} is not a directory"
    import tempfile  # only `fluxhook check` asks: it imports shutil, bz2 and lzma (cold start)

    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"FLUXHOOK_DATA_DIR: cannot {verb} {data_dir}: {exc.strerror or exc}"
    return None


AWS_VARIABLES = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
    "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
})


def _blob_url(value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme == "s3" and not urlsplit(value).netloc:
        raise ConfigError("FLUXHOOK_BLOB_URL: s3:// needs a bucket (s3://bucket/prefix)")
    if scheme not in ("", "file", "s3"):
        raise ConfigError("FLUXHOOK_BLOB_URL must be a directory, a file:// URL or s3://bucket/prefix")
    return value


def _choice(name: str, value: str, allowed: tuple[str, ...], *, upper: bool = False) -> str:
    value = value.upper() if upper else value.lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


SIMULATOR_API_KEY = "simulator-key"  # the simulator accepts any non-empty key; this one is public

PROVIDER_NAMES = ("bfl", "cometapi", "apiframe", "runcomfy", "replicate", "fal")


@dataclass(frozen=True)
class _ProviderSpec:
    prefix: str
    key_var: str
    default_base: str
    default_hosts: tuple[str, ...]
    default_max_active: int = 0  # what the provider documents; 0: nothing documented, no cap
    signing_var: str | None = None  # the account's callback signing secret, if it has one
    base_var: str = ""  # the base URL's variable when not `<prefix>_BASE_URL`
    simulator_path: str = ""  # where the simulator speaks this protocol, under its mount
    keys_default: str | None = None  # published callback keys (`<prefix>_JWKS_URL`)


_PROVIDER_SPECS = {
    "bfl": _ProviderSpec("BFL", "BFL_API_KEY", "https://api.bfl.ai",
                         ("*.bfl.ai", "bfldeliveryprod.blob.core.windows.net"),
                         # help.bfl.ai "What is the concurrency limit for the API?" (providers.md a.5)
                         default_max_active=24),
    "cometapi": _ProviderSpec("COMETAPI", "COMETAPI_API_KEY", "https://api.cometapi.com",
                              ("*.bfl.ai", "bfldeliveryprod.blob.core.windows.net", "*.cometapi.com")),
    "apiframe": _ProviderSpec("APIFRAME", "APIFRAME_API_KEY", "https://api.apiframe.ai", ("*.apiframe.ai",)),
    "runcomfy": _ProviderSpec("RUNCOMFY", "RUNCOMFY_API_TOKEN", "https://model-api.runcomfy.net",
                              ("*.runcomfy.net", "*.runcomfy.com")),
    # Outputs are served from replicate.delivery and its subdomains (pbxt., xezq.).
    "replicate": _ProviderSpec("REPLICATE", "REPLICATE_API_TOKEN", "https://api.replicate.com",
                               ("replicate.delivery", "*.replicate.delivery"),
                               signing_var="REPLICATE_WEBHOOK_SECRET"),
    "fal": _ProviderSpec("FAL", "FAL_KEY", "https://queue.fal.run", ("*.fal.media", "fal.media"),
                         base_var="FAL_QUEUE_URL", simulator_path="/fal",
                         keys_default="https://rest.alpha.fal.ai/.well-known/jwks.json"),
}


def base_url_setting(provider: str) -> str:
    """The variable that sets a provider's base URL (`BFL_BASE_URL`, fal's `FAL_QUEUE_URL`)."""
    spec = _PROVIDER_SPECS[provider]
    return spec.base_var or f"{spec.prefix}_BASE_URL"


def _provider_settings(
    name: str, env: _Env, public_url: str, simulator: bool
) -> ProviderSettings | None:
    spec = _PROVIDER_SPECS[name]
    key = env.text(spec.key_var, "")
    default_base = spec.default_base
    simulated = simulator and not key
    if simulated:
        default_base = public_url + SIMULATOR_MOUNT + spec.simulator_path
        key = SIMULATOR_API_KEY
    base_var = base_url_setting(name)
    base_url = env.text(base_var, default_base).rstrip("/")
    _check_url(base_var, base_url)
    if not key and is_loopback_host(urlsplit(base_url).hostname or ""):
        # A base URL on this machine is a stand-in (`fluxhook simulator`), which needs no key.
        key, simulated = SIMULATOR_API_KEY, True
    if not key:
        return None
    hosts = env.items(f"{spec.prefix}_OUTPUT_HOSTS", list(spec.default_hosts))
    base_host = urlsplit(base_url).hostname or ""
    max_active = env.integer(f"{spec.prefix}_MAX_ACTIVE_TASKS", spec.default_max_active, minimum=0)
    signing_secret = env.text(spec.signing_var, "") if spec.signing_var else ""
    if signing_secret:
        _check_provider_secret(spec.signing_var or "", signing_secret)
    return ProviderSettings(
        name=name,
        base_url=base_url,
        api_key=key,
        output_hosts=tuple(dict.fromkeys([*hosts, base_host])),
        simulated=simulated,
        max_active_tasks=max_active or None,
        signing_secret=signing_secret or None,
        keys_url=_keys_url(spec, env, base_url, simulated),
    )


def _keys_url(spec: _ProviderSpec, env: _Env, base_url: str, simulated: bool) -> str | None:
    if spec.keys_default is None:
        return None
    # The simulator serves its JWKS beside its queue, wherever that is.
    default = f"{base_url}/.well-known/jwks.json" if simulated else spec.keys_default
    url = env.text(f"{spec.prefix}_JWKS_URL", default)
    _check_url(f"{spec.prefix}_JWKS_URL", url)
    return url


def _within_cap(name: str, value: float, cap_name: str, cap: float) -> None:
    if value > cap:
        raise ConfigError(f"{name} ({value:g}) must not be above its cap {cap_name} ({cap:g})")


def _check_webhook_secret(source: str, secret: str) -> None:
    from service.webhook_signing import secret_key

    try:
        secret_key(secret)
    except ConfigError:
        raise ConfigError(f"{source} must look like whsec_<base64 of 24-64 bytes>") from None


def _check_provider_secret(name: str, secret: str) -> None:
    from service.webhook_signing import decode_secret

    try:
        decode_secret(secret)
    except ConfigError:
        raise ConfigError(f"{name} must look like whsec_<base64>") from None


def _destinations(value: str) -> str:
    from service.egress import EgressPolicy

    try:
        EgressPolicy.from_setting(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None  # the message names the setting
    return value


def _crash_points(names: list[str]) -> frozenset[str]:
    unknown = sorted(set(names) - CRASH_POINTS)
    if unknown:
        raise ConfigError(f"FLUXHOOK_CRASH_AT names unknown points: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(CRASH_POINTS))})")
    return frozenset(names)


def _schedule(items: list[str]) -> tuple[float, ...]:
    try:
        delays = tuple(float(item) for item in items)
    except ValueError:
        raise ConfigError("FLUXHOOK_WEBHOOK_RETRY_SCHEDULE must be a comma list of seconds") from None
    if not delays or any(d < 0 for d in delays):
        raise ConfigError("FLUXHOOK_WEBHOOK_RETRY_SCHEDULE needs at least one non-negative delay")
    return delays


def load_or_create_secret_key(
    data_dir: Path, *, name: str = "secret_key", make: Callable[[], str] | None = None
) -> str:
    """A secret kept in the data dir: created once, then reused on every restart."""
    path = data_dir / name
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = make() if make else secrets.token_urlsafe(32)
    # A name of its own: processes starting together must not write, link or remove each other's.
    tmp = path.with_name(f"{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _check_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")


def _database_url(value: str) -> str:
    if value and urlsplit(value).scheme not in ("postgresql", "postgres"):
        # The value may hold a password: the message names only the scheme.
        raise ConfigError(
            "FLUXHOOK_DATABASE_URL must be a postgresql:// URL (unset: SQLite in the data dir), "
            f"not a {urlsplit(value).scheme or 'schemeless'} one"
        )
    return value


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, fit for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        value = self._environ.get(name)
        return default if value is None or value.strip() == "" else value.strip()

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {value}")
        return value

    def number(
        self, name: str, default: float, *, positive: bool = False, maximum: float | None = None
    ) -> float:
        """Seconds and the like: finite, never negative; with `positive`, never 0 either."""
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {raw!r}")
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {value:g}")
        if positive and value == 0:
            raise ConfigError(f"{name} must be more than 0")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum:g}, got {value:g}")
        return value

    def items(self, name: str, default: list[str]) -> list[str]:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        return [item.strip() for item in raw.split(",") if item.strip()]


# FLUXHOOK_* variables read outside `SETTINGS`: the demo's directory and the test suite's server.
OTHER_VARIABLES = frozenset({"FLUXHOOK_DEMO_DIR", "FLUXHOOK_TEST_DATABASE_URL"})


def unknown_variables(environ: Mapping[str, str], also_known: Iterable[str] = ()) -> list[str]:
    """A warning for each FLUXHOOK_* variable fluxhook does not read, naming the closest known
    one: a misspelt setting is otherwise silently ignored."""
    known = {s.name for s in SETTINGS} | OTHER_VARIABLES | set(also_known)
    # Compared without the prefix every name shares, which would make anything look close.
    tails = {name.removeprefix("FLUXHOOK_"): name for name in sorted(known)}
    found = []
    for name in sorted(environ):
        if not name.startswith("FLUXHOOK_") or name in known:
            continue
        close = difflib.get_close_matches(name.removeprefix("FLUXHOOK_"), tails, n=1, cutoff=0.6)
        hint = f" (did you mean {tails[close[0]]}?)" if close else ""
        found.append(f"{name} is not a fluxhook setting{hint}; it is ignored")
    return found


def log_settings(environ: Mapping[str, str]) -> tuple[str, str]:
    """FLUXHOOK_LOG_LEVEL and FLUXHOOK_LOG_FORMAT alone, for a process that reads no other setting."""
    env = _Env(environ)
    return (_choice("FLUXHOOK_LOG_LEVEL", env.text("FLUXHOOK_LOG_LEVEL", "info"), LOG_LEVELS),
            _choice("FLUXHOOK_LOG_FORMAT", env.text("FLUXHOOK_LOG_FORMAT", "text"), LOG_FORMATS))
