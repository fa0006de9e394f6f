"""Datasets from a run: a Hugging Face imagefolder, or WebDataset tar shards.

Only succeeded items are exported. Exporting again adds only what is new: an imagefolder
keeps its metadata.jsonl and gains lines, and WebDataset gains new shards while finished
shards are never rewritten. Every file lands by atomic rename, so an interrupted export
leaves no half-written shard or image behind.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import api_spec
from .output_dir import write_atomic
from .summaries import RunResults, meta_columns


@dataclass(frozen=True)
class ExportResult:
    added: int
    skipped: int
    files: list[Path]


def _samples(results: RunResults) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """(item_id, image file, JSON-ready record) for each succeeded item."""
    items = results.items
    ok = items[(items.status == "succeeded") & items.image_path.notna()]
    columns = [c for c in [*api_spec.PARAMETERS, *meta_columns(items)] if c in items.columns]
    for row in ok.to_dict("records"):
        record: dict[str, Any] = {"item_id": row["item_id"], "text": row.get("prompt")}
        for column in columns:
            value = row.get(column)
            if value is None or (isinstance(value, float) and pd.isna(value)):
                record[column] = None
            elif column == "color_palette" and isinstance(value, str):
                record[column] = json.loads(value)
            else:
                record[column] = value.item() if hasattr(value, "item") else value
        seed_value = row.get("seed_value")
        record["seed_value"] = None if pd.isna(seed_value) else int(seed_value)
        yield row["item_id"], results.path / row["image_path"], record


def to_imagefolder(results: RunResults, to: Path) -> ExportResult:
    images = to / "images"
    images.mkdir(parents=True, exist_ok=True)
    metadata = to / "metadata.jsonl"
    existing = metadata.read_text(encoding="utf-8") if metadata.exists() else ""
    have = {json.loads(line)["item_id"] for line in existing.splitlines() if line.strip()}
    lines, files, skipped = [], [], 0
    for item_id, source, record in _samples(results):
        if item_id in have:
            skipped += 1
            continue
        target = images / source.name
        tmp = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
        lines.append(json.dumps({"file_name": f"images/{source.name}", **record}, ensure_ascii=False) + "\n")
        files.append(target)
    if lines:
        write_atomic(metadata, (existing + "".join(lines)).encode("utf-8"))
    return ExportResult(len(lines), skipped, files)


def _exported_keys(to: Path) -> tuple[set[str], int]:
    keys: set[str] = set()
    shards = sorted(to.glob("shard-*.tar"))
    for shard in shards:
        with tarfile.open(shard) as tar:
            keys.update(name.split(".", 1)[0] for name in tar.getnames())
    next_index = max((int(s.stem.split("-")[1]) for s in shards), default=-1) + 1
    return keys, next_index


def to_webdataset(results: RunResults, to: Path, shard_size: int = 1000) -> ExportResult:
    """Tar shards of <item_id>.<ext> + <item_id>.json, shard_size samples each."""
    to.mkdir(parents=True, exist_ok=True)
    have, index = _exported_keys(to)
    pending: list[tuple[str, Path, dict]] = []
    files: list[Path] = []
    skipped = added = 0

    def flush() -> None:
        nonlocal index
        if not pending:
            return
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for item_id, source, record in pending:
                for name, data in (
                    (f"{item_id}{source.suffix}", source.read_bytes()),
                    (f"{item_id}.json", json.dumps(record, ensure_ascii=False).encode("utf-8")),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mtime = 0  # the same samples make the same shard
                    tar.addfile(info, io.BytesIO(data))
        path = to / f"shard-{index:06d}.tar"
        write_atomic(path, buffer.getvalue())
        files.append(path)
        index += 1
        pending.clear()

    for sample in _samples(results):
        if sample[0] in have:
            skipped += 1
            continue
        pending.append(sample)
        added += 1
        if len(pending) >= shard_size:
            flush()
    flush()
    return ExportResult(added, skipped, files)
