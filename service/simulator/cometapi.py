"""CometAPI's Flux proxy: BFL's protocol under /flux/v1, Bearer auth, CometAPI's error envelope.

Source: apidoc.cometapi.com flux-generate-image, flux-query and errors/error-codes-handling
(providers.md section b). CometAPI documents no callback format, so callbacks are BFL's,
signed the same way: the likeliest reading is that it passes webhook_url/secret through.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.bfl import Flavour, provider_routes
from service.simulator.wire import Dialect, bearer_token

# CometAPI's `code` per neutral reason. Its docs show "invalid_request" and ""; the rest are
# UNCONFIRMED guesses in the same style.
_CODES = {
    "unauthenticated": "invalid_api_key",
    "forbidden": "invalid_api_key",
    "rate_limited": "rate_limit_exceeded",
    "unavailable": "",
    "credits": "insufficient_quota",
    "invalid": "invalid_request",
    "not_found": "model_not_found",
    "too_large": "invalid_request",
}


def error_body(message: str, code: str) -> dict[str, Any]:
    """CometAPI's error envelope."""
    return {"error": {"message": message, "type": "comet_api_error", "param": "", "code": code}}


def _error(status: int, reason: str, message: str) -> Response:
    return JSONResponse(error_body(message, _CODES.get(reason, "")), status_code=status)


def _validation_error(errors: list[dict[str, Any]]) -> Response:
    # CometAPI answers 400 for validation ("do not retry"), flattening BFL's detail list.
    text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse(error_body(text, "invalid_request"), status_code=400)


def routes() -> list[Route]:
    """POST /flux/v1/{model} and GET /flux/v1/get_result, auth by Authorization: Bearer."""
    dialect = Dialect(protocol="cometapi", read_key=bearer_token, error=_error)
    return provider_routes(Flavour(dialect=dialect, prefix="/flux/v1", validation_error=_validation_error))
