"""Placeholder images: the requested size, deterministic, and legible on a contact sheet.

A prompt that quotes text ("a sign that says "OPEN"") gets that text drawn large on a plain band,
as Ideogram would render it, and misspelt at the rate SandboxConfig.misspell sets for the style:
drawn_text() says what was drawn, so a test knows the truth an OCR check must find.
"""

from __future__ import annotations

import colorsys
import io
import json
import random
import textwrap
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw

from batch_runner.api.quoted import quoted_text
from batch_runner.fonts import drawable, font

_STYLE_HUES = {"GENERAL": 0.58, "REALISTIC": 0.08, "DESIGN": 0.83, "RENDER_3D": 0.45, "ANIME": 0.95}
# A misspelling swaps in a letter no OCR confuses with the one it replaces (no I/l/1, O/0, ...).
_SWAPS = "ABDEFGHKMNPRTUWXYZ"


def misspell_rate(style: str, rates: Iterable[tuple[str, float]]) -> float:
    """The share of this style's images whose text is misspelt ("*" is every other style)."""
    table = dict(rates)
    return float(table.get(style, table.get("*", 0.0)))


def drawn_text(params: dict[str, Any], seed: int, rates: Iterable[tuple[str, float]] = ()) -> str | None:
    """The text the image shows: the prompt's quoted text, with one letter wrong in a share of
    the images (the same ones every time: the choice is seeded by the prompt, style and seed)."""
    quoted = quoted_text(params.get("prompt"))
    if not quoted:
        return None
    text = " / ".join(quoted)
    style = str(params.get("style_type", "GENERAL"))
    rng = random.Random(f"misspell:{seed}:{style}:{params.get('prompt', '')}")
    if rng.random() >= misspell_rate(style, rates):
        return text
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    if not letters:
        return text
    at = rng.choice(letters)
    choices = [c for c in _SWAPS if c != text[at].upper()]
    swap = rng.choice(choices)
    return text[:at] + (swap if text[at].isupper() else swap.lower()) + text[at + 1 :]


def render(
    params: dict[str, Any], seed: int, width: int, height: int, rates: Iterable[tuple[str, float]] = ()
) -> Image.Image:
    """A picture whose colours come from the style and seed, with the prompt (or the text it
    quotes) written on it."""
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
    text = drawn_text(params, seed, rates)
    if text is not None:
        _draw_sign(draw, drawable(text), width, height, margin)
    else:
        big = font(max(12, width // 18))
        big_size = _size(big)
        chars = max(10, int((width - 2 * margin) / (big_size * 0.6)))
        y = margin
        for line in textwrap.wrap(drawable(str(params.get("prompt", ""))), chars)[:8]:
            draw.text((margin, y), line, font=big, fill=(255, 255, 255))
            y += int(big_size * 1.25)
    small = font(max(10, width // 30))
    small_size = _size(small)
    footer = [f"style {style}", f"seed {seed}", f"{width}x{height}", "sandbox placeholder"]
    y = height - margin - len(footer) * int(small_size * 1.3)
    for line in footer:
        draw.text((margin, y), line, font=small, fill=(235, 235, 235))
        y += int(small_size * 1.3)
    return image


def _draw_sign(draw: ImageDraw.ImageDraw, text: str, width: int, height: int, margin: int) -> None:
    """The quoted text, dark on a light band across the upper third: plain enough to read back."""
    face = font(max(14, width // 14))
    size = _size(face)
    chars = max(6, int((width - 2 * margin) / (size * 0.62)))
    lines = textwrap.wrap(text, chars)[:6] or [text]
    line_h = int(size * 1.3)
    top = max(margin, height // 5)
    draw.rectangle((0, top - line_h // 2, width, top + len(lines) * line_h + line_h // 2), fill=(246, 244, 236))
    for n, line in enumerate(lines):
        draw.text((margin, top + n * line_h), line, font=face, fill=(20, 20, 20))


@lru_cache(maxsize=64)
def _encoded(params_json: str, seed: int, width: int, height: int, rates: tuple[tuple[str, float], ...]) -> bytes:
    buffer = io.BytesIO()
    render(json.loads(params_json), seed, width, height, rates).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def jpeg(params: dict[str, Any], seed: int, width: int, height: int, rates: Iterable[tuple[str, float]] = ()) -> bytes:
    """The image as JPEG bytes, as the real API sends them; repeats are served from a cache."""
    return _encoded(json.dumps(params, sort_keys=True), seed, width, height, tuple(rates))


def _size(font_: Any) -> float:
    """A font's size in pixels; Pillow's built-in bitmap font (no TrueType found) has no .size."""
    return float(getattr(font_, "size", 11))
