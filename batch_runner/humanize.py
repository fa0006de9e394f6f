"""Numbers as a person reads them in a terminal."""

from __future__ import annotations

import json
from typing import Any


def money(amount: float) -> str:
    """A total in dollars and cents."""
    return f"${amount:,.2f}"


def size(n_bytes: float) -> str:
    """A size in bytes as a person reads it: 512 KB, 3.2 GB."""
    value = float(n_bytes)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit in ("bytes", "KB") else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def price(amount: float) -> str:
    """A unit price, to the tenth of a cent where it has one: $0.063, not $0.06."""
    text = f"{amount:,.4f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def clip(value: Any, width: int) -> str:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, tuple):
        value = " / ".join(clip(v, width) for v in value)
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[dict[str, Any]], columns: list[str], widths: dict[str, int] | None = None) -> str:
    widths = widths or {}
    cells = [[clip(row.get(c, ""), widths.get(c, 40)) for c in columns] for row in rows]
    sizes = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(sizes[i]) for i, c in enumerate(columns)).rstrip()]
    lines += ["  ".join(r[i].ljust(sizes[i]) for i in range(len(columns))).rstrip() for r in cells]
    return "\n".join(lines)
