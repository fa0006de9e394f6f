"""What a job will do and cost, computed by streaming its items once."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import api_spec
from .errors import UsageError
from .items import Deduplicated, Item
from .manifest import Job
from .settings import Settings


@dataclass
class Plan:
    job: Job
    settings: Settings
    items: int
    expanded: int
    duplicates: int
    first: list[Item] = field(default_factory=list)

    @property
    def estimated_cost(self) -> float:
        return self.items * self.settings.price_per_image

    @property
    def estimated_seconds(self) -> float:
        return estimate_seconds(self.items, self.settings)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job.name,
            "source": str(self.job.source),
            "items": self.items,
            "expanded": self.expanded,
            "duplicates": self.duplicates,
            "axes": [
                {"name": a.name, "count": a.count, "sample": [_jsonable(v) for v in a.sample], "capped": a.capped}
                for a in self.job.axes
            ],
            "price_per_image": self.settings.price_per_image,
            "estimated_cost_usd": round(self.estimated_cost, 6),
            "estimated_duration_s": round(self.estimated_seconds, 1),
            "concurrency": self.settings.concurrency,
            "rpm": self.settings.rpm,
            "max_cost": self.settings.max_cost,
            "first_items": [item.row() for item in self.first],
        }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def estimate_seconds(items: int, settings: Settings, latency_s: float = api_spec.TYPICAL_LATENCY_S) -> float:
    """Time for items requests: the pool's pace, or the rate limit when that is slower."""
    per_second = settings.concurrency / latency_s
    if settings.rpm:
        per_second = min(per_second, settings.rpm / 60)
    return items / per_second


def build_plan(job: Job, settings: Settings, on_item: Callable[[Item], None] | None = None, first: int = 5) -> Plan:
    unique = Deduplicated(job.iter_items())
    count = 0
    head: list[Item] = []
    for item in unique:
        count += 1
        if len(head) < first:
            head.append(item)
        if on_item is not None:
            on_item(item)
    return Plan(job, settings, count, count + unique.duplicates, unique.duplicates, head)


class ItemsWriter:
    """Every expanded item to CSV or JSONL (chosen by extension), one row per item."""

    def __init__(self, path: Path, job: Job):
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".jsonl", ".tsv"):
            raise UsageError(f"--items {path}: use a .csv, .tsv or .jsonl file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._jsonl = suffix == ".jsonl"
        if not self._jsonl:
            columns = ["item_id", *job.param_columns, *job.meta_columns]
            delimiter = "\t" if suffix == ".tsv" else ","
            self._csv = csv.DictWriter(self._file, columns, delimiter=delimiter, extrasaction="ignore")
            self._csv.writeheader()

    def __call__(self, item: Item) -> None:
        row = item.row()
        if self._jsonl:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        if isinstance(row.get("color_palette"), dict):
            row["color_palette"] = json.dumps(row["color_palette"], sort_keys=True)
        self._csv.writerow(row)

    def close(self) -> None:
        self._file.close()
