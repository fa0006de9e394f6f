"""Datasets from a run, in shapes trainers take as they are: a Hugging Face imagefolder, or
WebDataset tar shards.

Only succeeded items are exported. Every record has one fixed, typed shape (SCHEMA): a column
that is empty everywhere is still a string or an integer, and a palette is always
{name, members}, so Arrow-based loaders never meet a null type or two struct shapes. Exporting
again adds only what is new: the imagefolder's metadata.parquet is rewritten with the new rows,
and WebDataset gains new shards while finished shards are never rewritten. Every file lands by
atomic rename, so an interrupted export leaves no half-written shard or image behind; shards are
streamed to disk, so memory stays flat whatever the shard size. Each export writes a dataset
card (README.md with Hugging Face front matter) saying what is in it and how it was made.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batch_runner import __version__
from batch_runner.api import spec as api_spec
from batch_runner.results.summaries import SUCCEEDED, RunResults, meta_columns
from batch_runner.store.output_dir import OutputDir, _replace_durably, fsync_dir, write_atomic

_PALETTE = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("members", pa.list_(pa.struct([("color_hex", pa.string()), ("color_weight", pa.float64())]))),
    ]
)
_PARAM_TYPES = {"seed": pa.int64(), "color_palette": _PALETTE}


@dataclass(frozen=True)
class ExportResult:
    added: int
    skipped: int
    files: list[Path]


def schema(results: RunResults) -> pa.Schema:
    """Every exported record's fields and types: ids, the prompt as `text`, every request
    parameter, the job's metadata columns (text), and the seed the server used."""
    fields = [pa.field("item_id", pa.string()), pa.field("text", pa.string())]
    fields += [pa.field(p, _PARAM_TYPES.get(p, pa.string())) for p in api_spec.PARAMETERS]
    fields += [pa.field(m, pa.string()) for m in meta_columns(results.items)]
    fields.append(pa.field("seed_value", pa.int64()))
    return pa.schema(fields)


def _palette(value: Any) -> dict[str, Any] | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    data = json.loads(value) if isinstance(value, str) else value
    members = [
        {"color_hex": m.get("color_hex"), "color_weight": m.get("color_weight")} for m in data.get("members") or []
    ]
    return {"name": data.get("name"), "members": members}


def _plain(value: Any, kind: pa.DataType) -> Any:
    if value is None or (not isinstance(value, (str, dict, list)) and pd.isna(value)):
        return None
    return int(value) if pa.types.is_integer(kind) else str(value)


def _samples(results: RunResults, fields: pa.Schema) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """(item_id, image file, typed record) for each succeeded item."""
    items = results.items
    ok = items[(items.status == SUCCEEDED) & items.image_path.notna()]
    for row in ok.to_dict("records"):
        record: dict[str, Any] = {}
        for field in fields:
            if field.name == "text":
                record["text"] = row.get("prompt")
            elif field.name == "color_palette":
                record[field.name] = _palette(row.get("color_palette"))
            else:
                record[field.name] = _plain(row.get(field.name), field.type)
        yield row["item_id"], results.path / row["image_path"], record


# ---------------------------------------------------------------------------------- imagefolder


def to_imagefolder(results: RunResults, to: Path) -> ExportResult:
    """DIR/images/ and DIR/metadata.parquet (typed: `datasets` reads the types as they are)."""
    images = to / "images"
    images.mkdir(parents=True, exist_ok=True)
    fields = schema(results)
    metadata = to / "metadata.parquet"
    old = pq.read_table(metadata) if metadata.exists() else None
    legacy = to / "metadata.jsonl"  # what earlier versions wrote: folded in, then replaced
    old_lines = []
    if legacy.exists():
        old_lines = [json.loads(line) for line in legacy.read_text("utf-8").splitlines() if line.strip()]
    have = set(old.column("item_id").to_pylist()) if old is not None else set()
    have |= {line["item_id"] for line in old_lines}
    rows, files, skipped = [], [], 0
    for item_id, source, record in _samples(results, fields):
        if item_id in have:
            skipped += 1
            continue
        target = images / source.name
        _replace_durably(target, source.read_bytes())
        rows.append({"file_name": f"images/{source.name}", **record})
        files.append(target)
    if files:
        fsync_dir(images)  # the copies' renames, before metadata.parquet lists them
    table_schema = pa.schema([pa.field("file_name", pa.string()), *fields])
    if rows or old_lines or not metadata.exists():
        tables = [pa.Table.from_pylist(_conform(old_lines, table_schema), schema=table_schema)] if old_lines else []
        if old is not None:
            tables.append(old.select(table_schema.names).cast(table_schema) if _covers(old, table_schema) else old)
        tables.append(pa.Table.from_pylist(rows, schema=table_schema))
        _write_parquet(metadata, pa.concat_tables(tables, promote_options="permissive"))
        legacy.unlink(missing_ok=True)
    total = len(have) + len(rows)
    _write_card(to, results, fields, "imagefolder", total)
    return ExportResult(len(rows), skipped, files)


def _conform(lines: list[dict[str, Any]], table_schema: pa.Schema) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        row = {name: line.get(name) for name in table_schema.names}
        row["color_palette"] = _palette(line.get("color_palette"))
        out.append(row)
    return out


def _covers(table: pa.Table, table_schema: pa.Schema) -> bool:
    return set(table_schema.names) <= set(table.column_names)


def _write_parquet(path: Path, table: pa.Table) -> None:
    # Encoded in memory, which holds the table already: the file is smaller than the table.
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomic(path, buffer.getvalue().to_pybytes())


# ---------------------------------------------------------------------------------- webdataset


def _exported_keys(to: Path) -> tuple[set[str], int]:
    keys: set[str] = set()
    shards = sorted(to.glob("shard-*.tar"))
    for shard in shards:
        with tarfile.open(shard) as tar:
            keys.update(name.split(".", 1)[0] for name in tar.getnames())
    next_index = max((int(s.stem.split("-")[1]) for s in shards), default=-1) + 1
    return keys, next_index


def _add(tar: tarfile.TarFile, name: str, size: int, data: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # the same samples make the same shard
    tar.addfile(info, data)


class _Shard:
    """One tar shard streamed to a .partial file, then fsynced and renamed into place."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0

    def add(self, item_id: str, source: Path, record: dict[str, Any]) -> None:
        # The keys trainers look for: the image, the caption as .txt (OpenCLIP, img2dataset),
        # and every parameter as .json.
        with open(source, "rb") as image:
            _add(self._tar, f"{item_id}{source.suffix}", os.fstat(image.fileno()).st_size, image)
        caption = (record.get("text") or "").encode("utf-8")
        _add(self._tar, f"{item_id}.txt", len(caption), _Bytes(caption))
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        _add(self._tar, f"{item_id}.json", len(data), _Bytes(data))
        self.samples += 1

    def close(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path


class _Bytes:
    def __init__(self, data: bytes):
        self._view = memoryview(data)

    def read(self, n: int = -1) -> bytes:
        chunk, self._view = (self._view, self._view[len(self._view) :]) if n < 0 else (self._view[:n], self._view[n:])
        return bytes(chunk)


def to_webdataset(results: RunResults, to: Path, shard_size: int = 1000) -> ExportResult:
    """Tar shards of <item_id>.<ext>, <item_id>.txt and <item_id>.json, shard_size samples each."""
    to.mkdir(parents=True, exist_ok=True)
    have, index = _exported_keys(to)
    fields = schema(results)
    files: list[Path] = []
    skipped = added = 0
    shard: _Shard | None = None
    for item_id, source, record in _samples(results, fields):
        if item_id in have:
            skipped += 1
            continue
        if shard is None:
            shard = _Shard(to / f"shard-{index:06d}.tar")
            index += 1
        shard.add(item_id, source, record)
        added += 1
        if shard.samples >= shard_size:
            files.append(shard.close())
            shard = None
    if shard is not None:
        files.append(shard.close())
    _write_card(to, results, fields, "webdataset", len(have) + added)
    return ExportResult(added, skipped, files)


# ---------------------------------------------------------------------------------- dataset card


def _feature(field: pa.Field, indent: str) -> list[str]:
    """One field as Hugging Face `dataset_info.features` YAML."""
    kind = field.type
    lines = [f"{indent}- name: {field.name}"]
    if pa.types.is_struct(kind):
        lines.append(f"{indent}  struct:")
        for child in kind:
            lines += _feature(child, indent + "  ")
    elif pa.types.is_list(kind):
        lines.append(f"{indent}  list:")
        for child in kind.value_type:
            lines += _feature(child, indent + "  ")
    else:
        lines.append(f"{indent}  dtype: {_DTYPES.get(str(kind), 'string')}")
    return lines


_DTYPES = {"int64": "int64", "double": "float64", "string": "string"}


def _runs(folder: Path) -> list[dict[str, Any]]:
    try:
        lines = OutputDir(folder).runs.read_text("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


def _write_card(to: Path, results: RunResults, fields: pa.Schema, kind: str, samples: int) -> None:
    jobs = sorted({str(run["job"]) for run in _runs(results.path) if run.get("job")})
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    size = next((label for bound, label in bounds if samples < bound), "1M<n<10M")
    image_field = ["  - name: image", "    dtype: image"] if kind == "imagefolder" else []
    front = [
        "---",
        "license: other  # set the licence under which you publish these images",
        "task_categories:",
        "- text-to-image",
        "tags:",
        "- synthetic",
        "- batch-runner",
        f"size_categories:\n- {size}",
        "dataset_info:",
        "  features:",
        *image_field,
        *[line for field in fields for line in _feature(field, "  ")],
        "---",
    ]
    body = f"""
# {results.path.name}

{samples:,} images generated with Segmind's Ideogram Turbo text-to-image API by
[batch-runner](https://pypi.org/project/batch-runner/) {__version__}{f" (job {', '.join(jobs)})" if jobs else ""}.
Exported as {
        "a Hugging Face imagefolder (`images/`, `metadata.parquet`)"
        if kind == "imagefolder"
        else "WebDataset shards (`shard-*.tar`: `<id>.jpg`, `<id>.txt` caption, `<id>.json` parameters)"
    }
on {datetime.now(timezone.utc).strftime("%Y-%m-%d")}.

- `text` is the exact prompt sent; every request parameter and the job's metadata columns are
  kept, and `seed_value` is the seed the server used. Each image also carries its recipe (XMP
  or PNG text) and the IPTC digital source type `trainedAlgorithmicMedia`.
- The images are AI-generated. Check the provider's terms before you publish or train on them.
"""
    write_atomic(to / "README.md", ("\n".join(front) + "\n" + body).encode("utf-8"))
