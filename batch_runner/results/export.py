"""Datasets from a run, in shapes trainers take as they are: a Hugging Face imagefolder, or
WebDataset tar shards.

Only succeeded items are exported. Every record has one fixed, typed shape (SCHEMA): a column
that is empty everywhere is still a string or an integer, and a palette is always
{name, members}, so Arrow-based loaders never meet a null type or two struct shapes. Exporting
again adds only what is new: the imagefolder's metadata.parquet is rewritten with the new rows
(the union of every export's columns), and WebDataset gains new shards while finished shards are
never rewritten; each finished shard has a stats file, and sizes.json counts the samples for
OpenCLIP. Every file lands by atomic rename, so an interrupted export leaves no half-written
shard or image behind; shards are written one image at a time, so memory stays flat whatever the
shard size. Each export writes a dataset card (results/dataset_card.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from batch_runner.api import spec as api_spec
from batch_runner.results import dataset_card
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
    notes: list[str] = dataclass_field(default_factory=list)  # what the export found wrong and set right


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
    """DIR/images/ and DIR/metadata.parquet (typed: `datasets` reads the types as they are).

    Exporting another output into the same folder takes the union of the columns: rows from an
    output without a metadata column get an empty cell, and earlier rows keep every value."""
    images = to / "images"
    images.mkdir(parents=True, exist_ok=True)
    metadata = to / "metadata.parquet"
    old = pq.read_table(metadata) if metadata.exists() else None
    legacy = to / "metadata.jsonl"  # what earlier versions wrote: folded in, then replaced
    old_lines = []
    if legacy.exists():
        old_lines = [json.loads(line) for line in legacy.read_text("utf-8").splitlines() if line.strip()]
    fields = schema(results)
    table_schema = pa.schema([pa.field("file_name", pa.string()), *fields])
    if old is not None:
        table_schema = pa.unify_schemas([table_schema, old.schema.remove_metadata()], promote_options="permissive")
    extra = [name for line in old_lines for name in line if name not in table_schema.names]
    for name in dict.fromkeys(extra):  # legacy lines' own columns: text, as metadata is
        table_schema = table_schema.append(pa.field(name, pa.string()))
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
    if rows or old_lines or old is None or old.schema.remove_metadata() != table_schema:
        tables = [pa.Table.from_pylist(_conform(old_lines, table_schema), schema=table_schema)] if old_lines else []
        if old is not None:
            tables.append(_with_columns(old, table_schema))
        tables.append(pa.Table.from_pylist(rows, schema=table_schema))
        _write_parquet(metadata, pa.concat_tables(tables).replace_schema_metadata(_pandas_metadata(table_schema)))
        legacy.unlink(missing_ok=True)
    total = len(have) + len(rows)
    record_fields = pa.schema([f for f in table_schema if f.name != "file_name"])
    dataset_card.write(to, _card(results, to, "imagefolder", total, []), record_fields)
    return ExportResult(len(rows), skipped, files)


def _conform(lines: list[dict[str, Any]], table_schema: pa.Schema) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        row = {name: line.get(name) for name in table_schema.names}
        row["color_palette"] = _palette(line.get("color_palette"))
        out.append(row)
    return out


def _with_columns(table: pa.Table, table_schema: pa.Schema) -> pa.Table:
    """table with every column of table_schema, in its order: a missing one is all empty."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in table_schema
    ]
    return pa.Table.from_arrays(columns, schema=table_schema)


def _pandas_metadata(table_schema: pa.Schema) -> dict[bytes, bytes]:
    """Parquet metadata that makes pandas read integer columns as nullable Int64 (an empty cell
    stays <NA>, not a float64 NaN), as `batch_runner.load()` gives them."""
    dtypes = {f.name: "Int64" if pa.types.is_integer(f.type) else "object" for f in table_schema}
    empty = pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in dtypes.items()})
    return {b"pandas": pa.Schema.from_pandas(empty, preserve_index=False).metadata[b"pandas"]}


def _write_parquet(path: Path, table: pa.Table) -> None:
    # Encoded in memory, which holds the table already: the file is smaller than the table.
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomic(path, buffer.getvalue().to_pybytes())


# ---------------------------------------------------------------------------------- webdataset

# img2dataset's per-sample fields, which training loaders and filters read from each .json.
_IMG2DATASET = [
    pa.field("key", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("sha256", pa.string()),
]
SIZES = "sizes.json"  # what OpenCLIP's get_dataset_size() reads: samples per shard, by file name


def _stats_path(shard: Path) -> Path:
    return shard.with_name(f"{shard.stem}_stats.json")


@dataclass
class _Shards:
    """What a WebDataset folder holds already: finished shards' samples, keys and columns."""

    keys: set[str]
    sizes: dict[str, int]
    meta: list[str]
    extensions: set[str]
    next_index: int
    notes: list[str]


def _read_shards(to: Path) -> _Shards:
    """Finished shards are those whose stats file matches them. A shard without one (written by
    an earlier version, or by a crash between the shard's rename and its stats) is read through:
    whole, it gets its stats now; broken, it is set aside and its samples are exported again."""
    found = _Shards(set(), {}, [], set(), 0, [])
    meta: dict[str, None] = {}
    for shard in sorted(to.glob("shard-*.tar")):
        index = int(shard.stem.split("-")[1])
        found.next_index = max(found.next_index, index + 1)
        stats = _load_stats(shard)
        if stats is None:
            stats = _stats_from_tar(shard)
            if stats is None:
                aside = shard.with_name(shard.name + ".broken")
                os.replace(shard, aside)
                note = f"{shard} is not a whole tar file: moved to {aside.name}; its samples go in new shards"
                found.notes.append(note)
                continue
            write_atomic(_stats_path(shard), json.dumps(stats, indent=1).encode())
        found.keys.update(stats["keys"])
        found.sizes[shard.name] = int(stats["count"])
        meta.update(dict.fromkeys(stats.get("meta_columns", [])))
        found.extensions.update(stats.get("image_extensions", []))
    found.meta = list(meta)
    return found


def _load_stats(shard: Path) -> dict[str, Any] | None:
    try:
        stats = json.loads(_stats_path(shard).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stats, dict) or stats.get("bytes") != shard.stat().st_size or "keys" not in stats:
        return None
    return stats


def _stats_from_tar(shard: Path) -> dict[str, Any] | None:
    fixed = {f.name for f in _IMG2DATASET} | {"item_id", "text", "seed_value", *api_spec.PARAMETERS}
    keys: dict[str, None] = {}
    extensions: set[str] = set()
    meta: dict[str, None] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                keys[key] = None
                if ext == "json":
                    data = tar.extractfile(member)
                    record = json.load(data) if data else {}
                    meta.update(dict.fromkeys(k for k in record if k not in fixed))
                elif ext != "txt":
                    extensions.add(ext)
    except (OSError, tarfile.TarError, ValueError, EOFError):
        return None
    return _stats(shard, list(keys), list(meta), extensions, _sha256_file(shard))


def _stats(shard: Path, keys: list[str], meta: list[str], extensions: set[str], digest: str) -> dict[str, Any]:
    # img2dataset's stats fields (count, successes), plus what tells a finished shard from a
    # broken one (its size and sha256) and what the dataset card needs (columns, extensions).
    return {
        "shard": shard.name,
        "count": len(keys),
        "successes": len(keys),
        "bytes": shard.stat().st_size,
        "sha256": digest,
        "meta_columns": meta,
        "image_extensions": sorted(extensions),
        "keys": keys,
    }


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same samples make the same shard
    tar.addfile(info, io.BytesIO(data))


class _Hashing(io.RawIOBase):
    """A file that hashes what is written to it: the shard's sha256 without reading it again."""

    def __init__(self, file: Any):
        self.file = file
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


class _Shard:
    """One tar shard streamed to a .partial file, then fsynced and renamed into place, and
    then its stats file (which marks it finished)."""

    def __init__(self, path: Path, meta: list[str]):
        self.path = path
        self.meta = meta
        self.tmp = path.with_name(f".{path.name}.partial")
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()
        self._hashing = _Hashing(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        self.keys: list[str] = []
        self.extensions: set[str] = set()

    def add(self, item_id: str, source: Path, record: dict[str, Any]) -> None:
        # The keys trainers look for: the image, the caption as .txt (OpenCLIP, img2dataset),
        # and every parameter as .json, with img2dataset's key/caption/width/height/sha256.
        image = source.read_bytes()  # one image at a time: memory stays flat
        with Image.open(io.BytesIO(image)) as opened:
            width, height = opened.size
        record = {
            **record,
            "key": item_id,
            "caption": record.get("text"),
            "width": width,
            "height": height,
            "sha256": hashlib.sha256(image).hexdigest(),
        }
        extension = source.suffix.lstrip(".")
        _add(self._tar, f"{item_id}.{extension}", image)
        _add(self._tar, f"{item_id}.txt", (record.get("text") or "").encode("utf-8"))
        _add(self._tar, f"{item_id}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
        self.keys.append(item_id)
        self.extensions.add(extension)

    def close(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        stats = _stats(self.path, self.keys, self.meta, self.extensions, self._hashing.digest.hexdigest())
        write_atomic(_stats_path(self.path), json.dumps(stats, indent=1).encode())
        return self.path


def to_webdataset(results: RunResults, to: Path, shard_size: int = 1000) -> ExportResult:
    """Tar shards of <item_id>.<ext>, <item_id>.txt and <item_id>.json, shard_size samples each,
    a stats file per finished shard, and sizes.json for OpenCLIP's loader."""
    to.mkdir(parents=True, exist_ok=True)
    shards = _read_shards(to)
    fields = schema(results)
    meta = meta_columns(results.items)
    files: list[Path] = []
    skipped = added = 0
    index = shards.next_index
    shard: _Shard | None = None
    for item_id, source, record in _samples(results, fields):
        if item_id in shards.keys:
            skipped += 1
            continue
        if shard is None:
            shard = _Shard(to / f"shard-{index:06d}.tar", meta)
            index += 1
        shard.add(item_id, source, record)
        added += 1
        if len(shard.keys) >= shard_size:
            files.append(_finish(shard, shards))
            shard = None
    if shard is not None:
        files.append(_finish(shard, shards))
    write_atomic(to / SIZES, json.dumps(shards.sizes, indent=1, sort_keys=True).encode())
    # The card's json struct is the union of every shard's columns, so that each shard loads.
    union = pa.schema([*fields, *(pa.field(m, pa.string()) for m in shards.meta if m not in fields.names)])
    record = pa.schema([*union, *_IMG2DATASET])
    card = _card(results, to, "webdataset", len(shards.keys) + added, sorted(shards.extensions) or ["jpg"])
    dataset_card.write(to, card, record)
    return ExportResult(added, skipped, files, shards.notes)


def _finish(shard: _Shard, shards: _Shards) -> Path:
    path = shard.close()
    shards.sizes[path.name] = len(shard.keys)
    shards.extensions |= shard.extensions
    shards.meta += [m for m in shard.meta if m not in shards.meta]
    return path


# ---------------------------------------------------------------------------------- dataset card


def _runs(folder: Path) -> list[dict[str, Any]]:
    try:
        lines = OutputDir(folder).runs.read_text("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


def _card(results: RunResults, to: Path, kind: str, samples: int, extensions: list[str]) -> dataset_card.Card:
    runs = _runs(results.path)
    jobs = sorted({str(run["job"]) for run in runs if run.get("job")})
    return dataset_card.Card(
        title=to.resolve().name,
        kind=kind,
        samples=samples,
        jobs=jobs,
        sandbox=any(run.get("sandbox") for run in runs),
        image_extensions=extensions,
    )
