"""Items: one request each, named by a stable id derived from exactly what is sent."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# Columns the tool itself writes beside a job's metadata columns: item_id and the state columns
# of manifest.parquet (store.fold.STATE_COLUMNS; a test keeps the two equal), and file_name and
# text of an imagefolder export's metadata.parquet. Kept here, not in store/, so that `plan`
# never imports pandas. A metadata column with one of these names is renamed meta_<name>.
OUTPUT_COLUMNS = (
    "item_id",
    "status",
    "attempts",
    "http_status",
    "error",
    "latency_s",
    "cost_usd",
    "remaining_credits",
    "seed_value",
    "request_id",
    "image_path",
    "first_sent_at",
    "finished_at",
    "rate_limited",
    "unanswered",
    "in_plan",
    "file_name",
    "text",
)


@dataclass(frozen=True, slots=True)
class Item:
    """One image to generate: its id (a hash of its request), its API parameters and its metadata."""

    item_id: str
    params: dict[str, Any]
    meta: dict[str, Any]

    def row(self) -> dict[str, Any]:
        """Flat columns: item_id, the request parameters, then the metadata."""
        return {"item_id": self.item_id, **self.params, **self.meta}


def request_json(params: dict[str, Any]) -> str:
    """The canonical text of a request body: key order and spacing never change an id."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def item_id_for(params: dict[str, Any]) -> str:
    # 64 bits of SHA-256: a collision among 10^6 items has odds around 1 in 3.7·10^7.
    return hashlib.sha256(request_json(params).encode()).hexdigest()[:16]


def make_item(params: dict[str, Any], meta: dict[str, Any]) -> Item:
    return Item(item_id_for(params), params, meta)


class Deduplicated:
    """Iterate items once each; the count of dropped duplicates is known afterwards."""

    def __init__(self, items: Iterable[Item]):
        self._items = items
        self.duplicates = 0

    def __iter__(self) -> Iterator[Item]:
        # Ints of the id's 64 bits take about half the memory of the hex strings.
        seen: set[int] = set()
        for item in self._items:
            key = int(item.item_id, 16)
            if key in seen:
                self.duplicates += 1
                continue
            seen.add(key)
            yield item
