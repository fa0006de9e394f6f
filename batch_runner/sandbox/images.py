"""Placeholder images: the requested size, deterministic, and legible on a contact sheet."""

from __future__ import annotations

import colorsys
import io
import json
import random
import textwrap
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw

from batch_runner.fonts import font

_STYLE_HUES = {"GENERAL": 0.58, "REALISTIC": 0.08, "DESIGN": 0.83, "RENDER_3D": 0.45, "ANIME": 0.95}


def render(params: dict[str, Any], seed: int, width: int, height: int) -> Image.Image:
    """A picture whose colours come from the style and seed, with the prompt written on it."""
    style = params.get("style_type", "GENERAL")
    rng = random.Random(f"{seed}:{params.get('prompt', '')}")
    hue = (_STYLE_HUES.get(style, 0.0) + rng.uniform(-0.06, 0.06)) % 1.0
    background = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.35))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        r = rng.randint(width // 12, width // 4)
        x, y = rng.randint(0, width), rng.randint(0, height)
        shade = tuple(int(c * 255) for c in colorsys.hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1, 0.6, 0.55))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)

    margin = width // 16
    big = font(max(12, width // 18))
    small = font(max(10, width // 30))
    big_size, small_size = _size(big), _size(small)
    chars = max(10, int((width - 2 * margin) / (big_size * 0.6)))
    lines = textwrap.wrap(str(params.get("prompt", "")), chars)[:8]
    y = margin
    for line in lines:
        draw.text((margin, y), line, font=big, fill=(255, 255, 255))
        y += int(big_size * 1.25)
    footer = [f"style {style}", f"seed {seed}", f"{width}x{height}", "sandbox placeholder"]
    y = height - margin - len(footer) * int(small_size * 1.3)
    for line in footer:
        draw.text((margin, y), line, font=small, fill=(235, 235, 235))
        y += int(small_size * 1.3)
    return image


@lru_cache(maxsize=64)
def _encoded(params_json: str, seed: int, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    render(json.loads(params_json), seed, width, height).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def jpeg(params: dict[str, Any], seed: int, width: int, height: int) -> bytes:
    """The image as JPEG bytes, as the real API sends them; repeats are served from a cache."""
    return _encoded(json.dumps(params, sort_keys=True), seed, width, height)


def _size(font_: Any) -> float:
    """A font's size in pixels; Pillow's built-in bitmap font (no TrueType found) has no .size."""
    return float(getattr(font_, "size", 11))
