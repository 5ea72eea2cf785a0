"""fluxhook's unified parameter vocabulary, as JSON Schema builders shared by every provider."""

from __future__ import annotations

from typing import Any

Spec = dict[str, Any]

# Every parameter name a model may accept, in the order `GET /v1/models` lists them. Provider
# adapters translate these to native names (BFL's `input_image`, Apiframe's `fluxParams`, ...).
VOCABULARY = (
    "prompt", "image_url", "image_prompt", "image_prompt_strength", "aspect_ratio", "width",
    "height", "steps", "guidance", "interval", "seed", "safety_tolerance", "prompt_upsampling",
    "raw", "go_fast", "output_format", "output_quality",
    # BFL's multi-reference inputs (input_image_2 ... input_image_8), fill's mask, expand's margins.
    *(f"image_url_{n}" for n in range(2, 9)), "mask_url", "top", "bottom", "left", "right",
)

# BFL's OpenAPI gives the prompt and the seed no bounds. These keep absurd values out before a
# provider is paid; they are fluxhook's assumption, not a provider's rule.
PROMPT_MAX_LENGTH = 10_000
SEED_MAXIMUM = 2**32 - 1
URL_MAX_LENGTH = 2083  # BFL's bound on its own URL fields (webhook_url)

RATIO_PATTERN = "^[1-9][0-9]*:[1-9][0-9]*$"


def _spec(kind: str, description: str, **rules: Any) -> Spec:
    spec: Spec = {"type": kind, "description": description}
    spec.update((k, v) for k, v in rules.items() if v is not None)
    return spec


def prompt(max_length: int = PROMPT_MAX_LENGTH) -> Spec:
    return _spec("string", "Text description of the image.", minLength=1, maxLength=max_length)


def image_url(*, https_only: bool = False) -> Spec:
    if https_only:
        return _spec("string", "Public HTTPS URL of the image to edit.", format="uri",
                     maxLength=URL_MAX_LENGTH, pattern="^https://")
    return _spec("string", "URL of the image to edit.", format="uri", maxLength=URL_MAX_LENGTH)


def reference_image(n: int) -> Spec:
    """`image_url_<n>`: one more reference image after `image_url` (BFL's `input_image_<n>`)."""
    return _spec("string", f"URL of reference image {n}, after image_url.", format="uri",
                 maxLength=URL_MAX_LENGTH)


def reference_images(count: int) -> dict[str, Spec]:
    """`image_url_2` ... `image_url_<count>`."""
    return {f"image_url_{n}": reference_image(n) for n in range(2, count + 1)}


def mask_url() -> Spec:
    return _spec("string", "URL of a black-and-white mask the size of the image: white areas are "
                 "repainted, black ones kept.", format="uri", maxLength=URL_MAX_LENGTH)


def margin(which: str, *, maximum: int) -> Spec:
    return _spec("integer", f"Pixels to add at the {which} of the image.", minimum=0,
                 maximum=maximum, default=0)


def image_prompt() -> Spec:
    return _spec("string", "URL of a reference image that guides style or content.",
                 format="uri", maxLength=URL_MAX_LENGTH)


def image_prompt_strength(default: float, *, multiple_of: float | None = None) -> Spec:
    return _spec("number", "How closely to follow the reference image (0-1).",
                 minimum=0, maximum=1, multipleOf=multiple_of, default=default)


def aspect_ratio_range(default: str | None = None) -> Spec:
    # BFL takes any W:H between 21:9 and 9:21; the pattern checks the form, BFL the range.
    return _spec("string", "Aspect ratio W:H between 21:9 and 9:21.", pattern=RATIO_PATTERN,
                 default=default)


def aspect_ratio_enum(values: tuple[str, ...], default: str | None = None) -> Spec:
    return _spec("string", "Aspect ratio W:H.", enum=list(values), default=default)


def side(which: str, *, minimum: int, maximum: int | None = None, multiple_of: int | None = None,
         default: int | None = None) -> Spec:
    return _spec("integer", f"{which.capitalize()} of the image in pixels.", minimum=minimum,
                 maximum=maximum, multipleOf=multiple_of, default=default)


def steps(*, minimum: int, maximum: int, default: int) -> Spec:
    return _spec("integer", "Number of diffusion steps; more is slower and more detailed.",
                 minimum=minimum, maximum=maximum, default=default)


def guidance(*, minimum: float, maximum: float, default: float,
             multiple_of: float | None = None) -> Spec:
    return _spec("number", "Guidance scale: higher follows the prompt more closely.",
                 minimum=minimum, maximum=maximum, multipleOf=multiple_of, default=default)


def interval(*, minimum: int, maximum: int, default: int) -> Spec:
    return _spec("integer", "Diversity interval: higher varies more, following the prompt less.",
                 minimum=minimum, maximum=maximum, default=default)


def seed() -> Spec:
    return _spec("integer", "Seed for reproducible output; omit for a random one.",
                 minimum=0, maximum=SEED_MAXIMUM)


def safety_tolerance(maximum: int) -> Spec:
    return _spec("integer", f"Moderation tolerance, 0 (strictest) to {maximum} (most permissive).",
                 minimum=0, maximum=maximum, default=2)


def prompt_upsampling(default: bool = False) -> Spec:
    return _spec("boolean", "Let the model rewrite the prompt for more detail.", default=default)


def raw() -> Spec:
    return _spec("boolean", "Less processed, more natural-looking images.", default=False)


def go_fast() -> Spec:
    return _spec("boolean", "Trade some quality for speed.", default=False)


def output_format(formats: tuple[str, ...], default: str) -> Spec:
    return _spec("string", "File format of the output image.", enum=list(formats), default=default)


def output_quality(default: int) -> Spec:
    return _spec("integer", "Compression quality of the output image (0-100).",
                 minimum=0, maximum=100, default=default)
