"""Deterministic stand-in pictures: a pure function of (prompt, seed, size, format)."""

from __future__ import annotations

import hashlib
import io
import random
import re

from PIL import Image, ImageDraw, ImageFont

# Pillow format name and Content-Type per output format; "jpg" is Apiframe's spelling.
_FORMATS = {
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
}

_ASPECT = re.compile(r"^(\d{1,3}):(\d{1,3})$")


def render_image(*, prompt: str, seed: int, width: int, height: int, fmt: str) -> tuple[bytes, str]:
    """Draw a picture of exactly width x height, encoded as fmt; return (bytes, content type).

    The same arguments always give the same bytes: colours and shapes come from a hash of the
    prompt and seed, so two tasks with different prompts are visibly different images. Takes a
    few tens of milliseconds at 1440x1440, so async callers run it in a worker thread.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}")
    return _encode(_draw(prompt, seed, width, height), fmt)


def render_edit(
    *, kind: str, image: bytes, mask: bytes | None, margins: tuple[int, int, int, int],
    prompt: str, seed: int, width: int, height: int, fmt: str,
) -> tuple[bytes, str]:
    """A fill or expand result of width x height: the input picture with a drawn one around it.

    fill: the drawing shows where the mask is white (or, without a mask, where the picture is
    transparent); the picture is kept elsewhere. expand: the picture sits inside the margins
    (top, bottom, left, right), the drawing fills them. When the output was made smaller than
    asked (a render budget), picture, mask and margins shrink with it. Deterministic, like
    `render_image`.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}")
    drawn = _draw(prompt, seed, width, height)
    with Image.open(io.BytesIO(image)) as opened:
        source = opened.convert("RGBA")
    top, _bottom, left, right = margins
    scale = width / (source.width + left + right)
    if kind == "expand":
        inner = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
        drawn.paste(source.convert("RGB").resize(inner), (round(left * scale), round(top * scale)))
        return _encode(drawn, fmt)
    if mask is not None:
        with Image.open(io.BytesIO(mask)) as opened:
            repaint = opened.convert("L").resize((width, height))
    else:
        repaint = Image.eval(source.getchannel("A"), lambda alpha: 255 - alpha).resize((width, height))
    kept = source.convert("RGB").resize((width, height))
    return _encode(Image.composite(drawn, kept, repaint), fmt)


def _draw(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    # A private generator seeded from the digest: the picture depends on nothing else.
    shapes = random.Random(digest)

    top, bottom = _colour(digest, 0), _colour(digest, 3)
    # linear_gradient is a 256x256 ramp; resizing it is far cheaper than drawing per row.
    ramp = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    picture = Image.composite(
        Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), ramp
    )

    draw = ImageDraw.Draw(picture)
    for i in range(6):
        w = shapes.randint(width // 8 + 1, width // 2 + 1)
        h = shapes.randint(height // 8 + 1, height // 2 + 1)
        x, y = shapes.randint(-w // 3, width - 1), shapes.randint(-h // 3, height - 1)
        box = (x, y, x + w, y + h)
        colour = _colour(digest, 6 + 3 * i)
        if i % 2:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour, outline=(255, 255, 255))
    _draw_caption(draw, prompt, seed, width, height)
    return picture


def _encode(picture: Image.Image, fmt: str) -> tuple[bytes, str]:
    pil_format, content_type = _FORMATS[fmt]
    out = io.BytesIO()
    if pil_format == "PNG":
        picture.save(out, "PNG", compress_level=1)
    elif pil_format == "JPEG":
        picture.save(out, "JPEG", quality=85)
    else:
        picture.save(out, "WEBP", quality=80, method=0)
    return out.getvalue(), content_type


def size_for_aspect_ratio(ratio: str, *, long_side: int = 512) -> tuple[int, int]:
    """Width and height for "W:H" with the long side at long_side, rounded to multiples of 16.

    The real models make about one megapixel; the simulator keeps pictures small so tests and
    the demo stay fast. Raises ValueError for text that is not a positive "W:H".
    """
    match = _ASPECT.match(ratio)
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise ValueError(f"aspect ratio must look like '16:9', got {ratio!r}")
    w, h = int(match[1]), int(match[2])
    scale = long_side / max(w, h)
    return max(16, round(w * scale / 16) * 16), max(16, round(h * scale / 16) * 16)


def aspect_ratio_within(ratio: str, *, widest: float = 21 / 9) -> bool:
    """True when "W:H" parses and lies between 1:widest and widest:1 (BFL: 21:9 to 9:21)."""
    match = _ASPECT.match(ratio)
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        return False
    value = int(match[1]) / int(match[2])
    return 1 / widest - 1e-9 <= value <= widest + 1e-9


def _colour(digest: bytes, offset: int) -> tuple[int, int, int]:
    r, g, b = (digest[(offset + k) % len(digest)] for k in range(3))
    return r, g, b


def _draw_caption(draw: ImageDraw.ImageDraw, prompt: str, seed: int, width: int, height: int) -> None:
    text = f"{prompt[:60]}  #{seed}"
    size = max(8, min(width, height) // 24)
    font = ImageFont.load_default(size=size)
    margin = max(2, size // 2)
    box = draw.textbbox((margin, margin), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((margin, margin), text, fill=(255, 255, 255), font=font)
