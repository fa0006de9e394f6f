"""What a job will do and cost, computed by streaming its items once."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from batch_runner.api import spec as api_spec
from batch_runner.errors import OptionError
from batch_runner.job.items import Deduplicated, Item
from batch_runner.job.manifest import Job
from batch_runner.settings import Settings


@dataclass
class Plan:
    """What a job will do and cost, spending nothing: items, duplicates, settings, estimates."""

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
        """At --rpm when it is known, else at the fastest plan (the range is estimated_range)."""
        return estimate_seconds(self.items, self.settings)

    @property
    def estimated_range(self) -> tuple[float, float]:
        """(fastest, slowest): at the key's --rpm, or across the plans' 5 to 1000 RPM when unknown."""
        if self.settings.rpm:
            seconds = estimate_seconds(self.items, self.settings)
            return seconds, seconds
        fastest, slowest = max(PLAN_RPMS), min(PLAN_RPMS)
        return (
            estimate_seconds(self.items, self.settings, rpm=fastest),
            estimate_seconds(self.items, self.settings, rpm=slowest),
        )

    @property
    def items_in_budget(self) -> int | None:
        """How many items max_cost pays for at the price per image, when that is fewer than all."""
        if self.settings.max_cost is None:
            return None
        fit = math.floor(self.settings.max_cost / self.settings.price_per_image + 1e-9)
        return fit if fit < self.items else None

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
            "renamed_columns": dict(self.job.renamed),
            "price_per_image": self.settings.price_per_image,
            "estimated_cost_usd": round(self.estimated_cost, 6),
            "estimated_duration_s": round(self.estimated_seconds, 1),
            "estimated_duration_range_s": [round(s, 1) for s in self.estimated_range],
            "rate_limit_known": self.settings.rpm is not None,
            "latency_s": api_spec.TYPICAL_LATENCY_S,
            "concurrency": self.settings.concurrency,
            "rpm": self.settings.rpm,
            "max_cost": self.settings.max_cost,
            "items_in_budget": self.items_in_budget,
            "columns": {cell: use for cell, use in self.job.column_use},
            "expanded_rows": list(self.job.expansions),
            "notes": list(self.job.notes),
            "first_items": [item.row() for item in self.first],
        }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# The per-minute limits Segmind's plans are listed with (docs/segmind-ideogram-turbo-api.md).
PLAN_RPMS = (5, 50, 60, 120, 500, 1000)


def estimate_seconds(
    items: int, settings: Settings, latency_s: float = api_spec.TYPICAL_LATENCY_S, rpm: float | None = None
) -> float:
    """Wall time for items requests, by the pacer's model (Little's law): sends go out at the rate
    limit, at most `concurrency` are in flight, and each takes latency_s to come back. So the
    last answer comes one latency after the last send, and never sooner than the rounds of
    `concurrency` requests allow. rpm overrides settings.rpm; with neither, the fastest plan."""
    if items <= 0:
        return 0.0
    rate_rpm = rpm or settings.rpm or max(PLAN_RPMS)
    paced = (items - 1) * 60 / rate_rpm + latency_s
    rounds = math.ceil(items / settings.concurrency) * latency_s
    return max(paced, rounds)


def timeout_warning(
    timeout_s: float, per_image_s: float = api_spec.TYPICAL_LATENCY_S, setting: str = "timeout"
) -> str | None:
    """A warning when the timeout is shorter than the endpoint takes to make an image: each
    attempt would give up before its answer, and each may still be billed."""
    if timeout_s >= per_image_s:
        return None
    return (
        f"{setting} {timeout_s:g} s is shorter than the ~{per_image_s:g} s an image takes at this endpoint, so "
        f"attempts may give up before their answer and still be billed; use {setting} {math.ceil(per_image_s * 3)} "
        "or more (the default is 120)"
    )


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
            raise OptionError("items", f"{path}: use a .csv, .tsv or .jsonl file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._path = path
        self._jsonl = suffix == ".jsonl"
        self._tsv = suffix == ".tsv"
        self._columns = ["item_id", *job.param_columns, *job.meta_columns]
        if self._tsv:
            # A TSV has no quoting (IANA text/tab-separated-values): cells are written as they are,
            # so the file reads back exactly, as batch-runner reads TSV files.
            self._write_tsv(self._columns)
        elif not self._jsonl:
            self._csv = csv.DictWriter(self._file, self._columns, extrasaction="ignore")
            self._csv.writeheader()

    def __call__(self, item: Item) -> None:
        row = item.row()
        if self._jsonl:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        if isinstance(row.get("color_palette"), dict):
            row["color_palette"] = json.dumps(row["color_palette"], sort_keys=True)
        if self._tsv:
            self._write_tsv(["" if row.get(c) is None else str(row[c]) for c in self._columns])
            return
        self._csv.writerow(row)

    def _write_tsv(self, cells: list[str]) -> None:
        for column, cell in zip(self._columns, cells, strict=True):
            if any(c in cell for c in "\t\r\n"):
                raise OptionError(
                    "items",
                    f"{self._path}: a {column} value holds a tab or a line break, which a TSV cannot; "
                    "write a .csv or .jsonl file instead",
                )
        self._file.write("\t".join(cells) + "\n")

    def close(self) -> None:
        self._file.close()
