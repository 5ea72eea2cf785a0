"""The simulator's knobs: one frozen value, parsed from env text or from PATCHed JSON."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "FLUXHOOK_SIM_"


class KnobError(ValueError):
    """A knob name is unknown or its value is out of range; `knob` names the culprit."""

    def __init__(self, knob: str, message: str) -> None:
        super().__init__(f"{knob}: {message}")
        self.knob = knob
        self.message = message


def _knob(default: Any, kind: str, *choices: str) -> Any:
    # The kind drives both parsers (env text, JSON) and the range check, so a new knob needs
    # exactly one line here and cannot be accepted by one parser and rejected by the other.
    return field(default=default, metadata={"kind": kind, "choices": choices})


@dataclass(frozen=True)
class SimulatorConfig:
    """Behaviour knobs of the embedded provider simulator.

    Frozen: change it at runtime with ``PATCH /_sim/config`` or ``Simulator.update_config``,
    which swap in a new value, so a request never sees half an update. Rates are fractions in
    [0, 1]; durations are seconds. A task's fate is drawn from these at submit time.
    """

    # Time from submit until the task is terminal, uniform in [lo, hi].
    latency_s: tuple[float, float] = _knob((0.2, 0.8), "range")
    # Fraction of tasks that end in failure (BFL "Error", Apiframe FAILED, RunComfy failed).
    failure_rate: float = _knob(0.0, "rate")
    # Fraction moderated: BFL/CometAPI half "Request Moderated", half "Content Moderated";
    # Apiframe and RunComfy have no moderated state, so there it is a content-policy failure.
    moderation_rate: float = _knob(0.0, "rate")
    # Fraction of tasks whose terminal callback is never sent (progress events still are).
    callback_drop_rate: float = _knob(0.0, "rate")
    # Fraction of tasks whose terminal callback is delivered twice, byte for byte.
    callback_duplicate_rate: float = _knob(0.0, "rate")
    # Fraction of tasks whose callbacks carry no signature header at all.
    unsigned_callback_rate: float = _knob(0.0, "rate")
    # Replicate (Standard Webhooks) and fal (ED25519): fraction of tasks whose terminal
    # callback, validly signed, is also sent to another task's webhook URL (a captured callback
    # replayed for another job: refused, changing nothing).
    replayed_callback_rate: float = _knob(0.0, "rate")
    # Replicate and fal: fraction of tasks whose callbacks carry a timestamp 6 minutes old
    # (validly signed over it), as a replay captured earlier would.
    stale_callback_rate: float = _knob(0.0, "rate")
    # fal: which Ed25519 key signs callbacks; change it to rotate the key (the JWKS at
    # /fal/.well-known/jwks.json then holds only the new one).
    fal_key_generation: int = _knob(0, "count")
    # Extra delay before each callback is sent, uniform in [lo, hi].
    callback_delay_s: tuple[float, float] = _knob((0.0, 0.0), "range")
    # Waits before each retry after a non-2xx answer or a connection failure; BFL's skill docs
    # say 1 s, 5 s, 30 s and then the webhook is abandoned.
    callback_retry_delays_s: tuple[float, ...] = _knob((1.0, 5.0, 30.0), "delays")
    # Fractions of submits / status-or-result polls answered 429 (with Retry-After) or 503.
    submit_429_rate: float = _knob(0.0, "rate")
    submit_5xx_rate: float = _knob(0.0, "rate")
    poll_429_rate: float = _knob(0.0, "rate")
    poll_5xx_rate: float = _knob(0.0, "rate")
    # Account-wide limit on active tasks (submitted, not yet terminal) per provider protocol;
    # past it a submit is answered 429 with Retry-After, as BFL does past its 24. 0 = no limit.
    max_active_tasks: int = _knob(0, "count")
    # Value of the Retry-After header on 429s (injected or past max_active_tasks), in seconds.
    retry_after_s: int = _knob(1, "count")
    # Image URLs answer 404 once this long has passed since the task became ready (BFL: 10 min).
    delivery_url_ttl_s: float = _knob(600.0, "seconds")
    # Delay before image bytes are served, to keep downloads in flight.
    download_delay_s: float = _knob(0.0, "seconds")
    # When set, any other key gets 403; a missing key is always 401. None accepts any key.
    api_key: str | None = _knob(None, "secret")
    # BFL/CometAPI: when False and webhook_url is given, submit answers the OpenAPI
    # AsyncWebhookResponse {"id","status","webhook_url"} without polling_url.
    include_polling_url_with_webhook: bool = _knob(True, "bool")
    # Submits are refused: 402 (BFL, CometAPI, Apiframe) or 400 code 400002 (RunComfy).
    insufficient_credits: bool = _knob(False, "bool")
    # Apiframe `result`: a URL string (docs-v2) or {"images": [url]} (older docs).
    apiframe_result_shape: str = _knob("string", "choice", "string", "images")
    # Apiframe X-Webhook-Signature encoding; the docs do not say which.
    apiframe_signature_encoding: str = _knob("hex", "choice", "hex", "base64")
    # Apiframe HMAC key: the hex text of sha256(api_key), or its raw 32-byte digest.
    apiframe_signature_key: str = _knob("hex", "choice", "hex", "raw")
    # RunComfy `output`: {"image": url} or {"images": [url]}.
    runcomfy_result_shape: str = _knob("image", "choice", "image", "images")
    # Seed for the default random.Random when the app is not given one.
    seed: int | None = _knob(None, "optional_int")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                # Python callers naturally pass lists; keep the value hashable and immutable.
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            _check(f.name, f.metadata, value)

    def __repr__(self) -> str:
        # Only the knobs that differ from the defaults, and never the API key in clear.
        public = self.to_public()
        shown = [
            f"{f.name}={public[f.name]!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"SimulatorConfig({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SimulatorConfig:
        """Build a config from ``FLUXHOOK_SIM_<KNOB>`` variables, e.g. FLUXHOOK_SIM_FAILURE_RATE.

        Ranges and delay lists are comma-separated ("0.2,0.8"); booleans take 1/0/true/false;
        an empty API_KEY or SEED means None. Other variables, including unknown FLUXHOOK_SIM_*
        ones, are ignored because the rest of fluxhook may use the prefix for its own settings.
        """
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                changes[f.name] = _from_text(f.name, f.metadata, raw.strip())
        return cls(**changes)

    def with_changes(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Return a copy with knobs replaced from JSON values; raise KnobError naming a bad knob."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in fields:
                raise KnobError(name, "unknown knob")
            parsed[name] = _from_json(name, fields[name].metadata, value)
        return dataclasses.replace(self, **parsed)

    def to_public(self) -> dict[str, Any]:
        """The knobs as JSON-ready values, with the API key masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["kind"] == "secret":
                value = None if value is None else "***"
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_text(name: str, meta: Mapping[str, Any], raw: str) -> Any:
    kind = meta["kind"]
    try:
        if kind in ("rate", "seconds"):
            return float(raw)
        if kind == "count":
            return int(raw)
        if kind == "range":
            parts = [float(p) for p in raw.split(",")]
            return (parts[0], parts[-1]) if len(parts) in (1, 2) else tuple(parts)
        if kind == "delays":
            return tuple(float(p) for p in raw.split(",") if p.strip())
        if kind == "optional_int":
            return int(raw) if raw else None
    except ValueError as exc:
        raise KnobError(name, f"cannot parse {raw!r}") from exc
    if kind == "bool":
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise KnobError(name, f"expected true or false, got {raw!r}")
    if kind == "secret":
        return raw or None
    return raw


def _from_json(name: str, meta: Mapping[str, Any], value: Any) -> Any:
    kind = meta["kind"]
    number = (int, float)
    if kind in ("rate", "seconds") and isinstance(value, number) and not isinstance(value, bool):
        return float(value)
    if kind in ("range", "delays") and isinstance(value, list):
        if all(isinstance(v, number) and not isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value)
    if kind in ("count", "optional_int") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "optional_int" and value is None:
        return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "secret" and (value is None or isinstance(value, str)):
        return value or None
    if kind == "choice" and isinstance(value, str):
        return value
    raise KnobError(name, f"wrong type for a {kind} knob: {value!r}")


def _check(name: str, meta: Mapping[str, Any], value: Any) -> None:
    kind = meta["kind"]
    if kind == "rate" and not 0.0 <= value <= 1.0:
        raise KnobError(name, f"must be between 0 and 1, got {value}")
    if kind == "seconds" and not (math.isfinite(value) and value >= 0):
        raise KnobError(name, f"must be a non-negative number of seconds, got {value}")
    if kind == "count" and value < 0:
        raise KnobError(name, f"must be >= 0, got {value}")
    if kind == "range" and not (len(value) == 2 and 0 <= value[0] <= value[1]):
        raise KnobError(name, f"must be two seconds values with 0 <= lo <= hi, got {value}")
    if kind == "delays" and any(not (math.isfinite(v) and v >= 0) for v in value):
        raise KnobError(name, f"delays must be non-negative, got {value}")
    if kind == "choice" and value not in meta["choices"]:
        raise KnobError(name, f"must be one of {', '.join(meta['choices'])}, got {value!r}")
