"""One font for everything drawn: DejaVu Sans where the system has it, else Pillow's own.

Pillow's bundled font lacks many glyphs (í, ×, most non-Latin scripts); DejaVu covers far
more of what prompts contain. Debian installs it with fonts-dejavu-core.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/Library/Fonts/DejaVuSans.ttf"),
)


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _CANDIDATES:
        if path.exists():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def drawable(text: str) -> str:
    """text with line and paragraph breaks and control characters (U+2029, U+0085, \\r, ...) as
    spaces: raqm's layout fails on several of them, and a label is drawn on one line anyway."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
