"""`fluxhook check`: the effective configuration, secrets masked, and whether it would start.

It reads the settings exactly as `serve` does but creates nothing: the data dir is judged, not
made, and no secret is generated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from service.errors import ConfigError
from service.settings import (
    AWS_VARIABLES,
    SETTINGS,
    Settings,
    base_url_setting,
    data_dir_problem,
    redact_url,
    unknown_variables,
)

MASK = "***"
# AWS's key id is an identifier, but shown next to its secret it is half a credential.
AWS_SECRETS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})


def simulator_variables() -> set[str]:
    from service.simulator.config import ENV_PREFIX, SimulatorConfig

    return {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(SimulatorConfig)}


def environment_warnings(environ: Mapping[str, str]) -> list[str]:
    # The simulator's knobs are looked up only when some variable is not a setting: every
    # `fluxhook tick` runs this, and the simulator's config costs ~3 ms to import.
    if not unknown_variables(environ, set()):
        return []
    return unknown_variables(environ, simulator_variables())


def report(
    environ: Mapping[str, str], *, host: str | None = None, port: int | None = None
) -> tuple[list[str], list[str], list[str]]:
    """(lines describing the configuration, warnings, errors); no errors means it would start."""
    from service.simulator.config import ENV_PREFIX, KnobError, SimulatorConfig

    errors: list[str] = []
    settings: Settings | None = None
    try:
        settings = Settings.parse(environ, host=host, port=port)
        if settings.simulator:
            SimulatorConfig.from_env(environ)
    except ConfigError as exc:
        errors.append(str(exc))
    except KnobError as exc:
        errors.append(f"{ENV_PREFIX}{exc.knob.upper()}: {exc.message}")
    if settings is not None and settings.needs_data_dir:
        problem = data_dir_problem(settings.data_dir)
        if problem:
            errors.append(problem)
    lines = [_line(doc.name, doc.default, doc.secret, environ, settings) for doc in SETTINGS]
    lines += [f"{name} = {MASK if name in AWS_SECRETS else environ[name]}"
              for name in sorted(AWS_VARIABLES & set(environ))]
    if settings is not None:
        lines += _derived(settings)
    warnings = environment_warnings(environ) + (settings.warnings() if settings else [])
    return lines, warnings, errors


def _line(name: str, default: str, secret: bool, environ: Mapping[str, str],
          settings: Settings | None) -> str:
    raw = (environ.get(name) or "").strip()
    if name == "FLUXHOOK_DATABASE_URL":
        raw = redact_url(raw)
    elif secret and raw:
        raw = MASK
    effective = _effective(name, settings)
    if raw:
        return f"{name} = {raw}"
    return f"{name} = {effective or default}  (default)"


def _effective(name: str, settings: Settings | None) -> str | None:
    """What an unset setting resolves to, where that differs from its documented default."""
    if settings is None:
        return None
    resolved = {
        "FLUXHOOK_DATA_DIR": str(settings.data_dir),
        "FLUXHOOK_PUBLIC_URL": settings.public_url,
        "FLUXHOOK_HOST": settings.host,
        "FLUXHOOK_PORT": str(settings.port),
        "FLUXHOOK_SIMULATOR": "on" if settings.simulator else "off",
    }
    for provider in settings.providers.values():
        resolved[base_url_setting(provider.name)] = provider.base_url
        if provider.keys_url:
            resolved[f"{provider.name.upper()}_JWKS_URL"] = provider.keys_url
    return resolved.get(name)


def _derived(settings: Settings) -> list[str]:
    store = redact_url(settings.database_url) if settings.uses_postgres else str(settings.db_path)
    providers = ", ".join(
        f"{p.name} ({'simulated' if p.simulated else 'key set'})" for p in settings.providers.values()
    ) or "none"
    return [
        "",
        f"store: {store}",
        f"blobs: {settings.blob_location}",
        f"providers: {providers}",
    ]
