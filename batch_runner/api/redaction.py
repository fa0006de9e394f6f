"""Keep the API key out of everything the runner stores or shows, fragments included.

A server that echoes its request (a proxy's error page, a debug header, a request id made from
the headers) can hand the key back anywhere, and a message cut at 200 characters can cut the
key in two. So every run of FRAGMENT or more consecutive characters of the key is replaced,
wherever it stands; redacting before cutting is then a matter of order, not of luck.
"""

from __future__ import annotations

from typing import Any

REDACTED = "[redacted]"
FRAGMENT = 8  # characters of the key in a row that count as a leak


def redact(text: str, key: str | None) -> str:
    """`text` with every run of FRAGMENT+ characters of `key` replaced by REDACTED."""
    if not key or not text:
        return text
    width = min(FRAGMENT, len(key))
    if width < 4:
        return text  # too short to tell from ordinary text: a key this short is refused elsewhere
    spans = _spans(text, key, width)
    if not spans:
        return text
    parts, at = [], 0
    for start, end in spans:
        parts.append(text[at:start])
        parts.append(REDACTED)
        at = end
    parts.append(text[at:])
    return "".join(parts)


def _spans(text: str, key: str, width: int) -> list[tuple[int, int]]:
    """Merged [start, end) ranges of text covered by some width-long piece of key."""
    covered: list[tuple[int, int]] = []
    for piece in {key[i : i + width] for i in range(len(key) - width + 1)}:
        start = text.find(piece)
        while start >= 0:
            covered.append((start, start + width))
            start = text.find(piece, start + 1)
    covered.sort()
    merged: list[tuple[int, int]] = []
    for start, end in covered:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def holds_key(text: str, key: str | None) -> bool:
    return redact(text, key) != text


def redact_value(value: Any, key: str | None) -> Any:
    """A server-supplied value as it may be stored: strings redacted, containers walked."""
    if isinstance(value, str):
        return redact(value, key)
    if isinstance(value, dict):
        return {redact(str(k), key): redact_value(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, key) for v in value]
    return value


def cut(text: str, key: str | None, limit: int) -> str:
    """Redact, then cut to `limit` characters: never the other way round."""
    return redact(text, key)[:limit]
