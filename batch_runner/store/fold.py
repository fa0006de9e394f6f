"""Fold the journal into manifest.parquet and metadata.jsonl, and read a run's results back.

The journal is the truth; these files are views of it, rewritten whole and swapped in
atomically, so a reader never meets a half-written Parquet file. Rows stream into Parquet
row groups, so a million-item manifest never sits in memory as one DataFrame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_runner.api import spec as api_spec
from batch_runner.job.items import Item
from batch_runner.store.journal import ItemState, ItemStatus, Replay
from batch_runner.store.ledger import SCHEMA as LEDGER_SCHEMA
from batch_runner.store.ledger import Ledger
from batch_runner.store.ledger import load as load_ledger
from batch_runner.store.output_dir import OutputDir, fsync_dir

# Paths are local paths: without an explicit filesystem pyarrow reads "nightly:v2/..." as a URI
# with the scheme "nightly" and fails, after the images were bought.
LOCAL = pafs.LocalFileSystem()


def local_path(path: os.PathLike[str] | str) -> str:
    """The path as pyarrow must get it with LOCAL: absolute (a relative "nightly:v2/x" is still
    parsed as a URI, filesystem or not)."""
    return os.path.abspath(path)


# The manifest's state columns are the ledger's, in its order: times become timestamps (the
# ledger keeps epoch seconds), its internals stay out, and in_plan is the manifest's own.
_TIMES = {"first_sent_at", "finished_at"}
_LEDGER_ONLY = {"item_id", "open_attempt", "row", "submitted_at"}
STATE_FIELDS: list[tuple[str, pa.DataType]] = [
    (f.name, pa.timestamp("ms", tz="UTC") if f.name in _TIMES else f.type)
    for f in LEDGER_SCHEMA
    if f.name not in _LEDGER_ONLY
] + [("in_plan", pa.bool_())]
STATE_COLUMNS = [name for name, _ in STATE_FIELDS]
_PARAM_TYPES = {"seed": pa.int64()}
_BATCH = 10_000  # plan items per chunk and Parquet row group: their objects are the fold's memory


def schema(meta_columns: list[str]) -> pa.Schema:
    fields = [pa.field("item_id", pa.string())]
    fields += [pa.field(p, _PARAM_TYPES.get(p, pa.string())) for p in api_spec.PARAMETERS]
    fields += [pa.field(m, pa.string()) for m in meta_columns]
    fields += [pa.field(name, kind) for name, kind in STATE_FIELDS]
    return pa.schema(fields)


def _timestamp(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, timezone.utc) if epoch else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def _row(base: dict[str, Any], state: ItemState | None, in_plan: bool, meta_columns: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"item_id": base["item_id"]}
    for p in api_spec.PARAMETERS:
        value = base.get(p)
        row[p] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
    for m in meta_columns:
        value = base.get(m)
        row[m] = None if value is None else str(value)
    s = state or ItemState()
    row.update(
        status=s.status,
        attempts=s.attempts,
        http_status=s.http_status,
        error=s.error,
        latency_s=s.latency_s,
        cost_usd=round(s.cost_usd, 6),
        remaining_credits=s.remaining_credits,
        seed_value=s.seed_value,
        request_id=s.request_id,
        image_path=s.image_path,
        first_sent_at=_timestamp(s.first_sent_at),
        finished_at=_timestamp(s.finished_at),
        rate_limited=s.rate_limited,
        unanswered=s.unanswered,
        in_plan=in_plan,
    )
    return row


_encode = json.JSONEncoder(ensure_ascii=False).encode


def _metadata_lines(table: pa.Table, meta_columns: list[str]) -> str:
    """metadata.jsonl's lines for the finished rows of a manifest chunk (Hugging Face
    imagefolder: file_name relative to this file, then any columns). Only the columns a line
    needs become Python objects; the state columns (timestamps above all) stay in Arrow."""
    succeeded = pc.equal(table.column("status"), ItemStatus.SUCCEEDED.value)
    done = pc.and_(succeeded, pc.is_valid(table.column("image_path"))).fill_null(False)
    rows = table.filter(done)
    if not len(rows):
        return ""
    keys = ["file_name", "item_id", "text", *api_spec.PARAMETERS, *meta_columns, "seed_value"]
    sources = ["image_path", "item_id", "prompt", *api_spec.PARAMETERS, *meta_columns, "seed_value"]
    columns = [rows.column(name).to_pylist() for name in sources]
    return "".join(_encode(dict(zip(keys, values, strict=True))) + "\n" for values in zip(*columns, strict=True))


def _param(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def _plan_chunk(
    items: list[Item], ledger: Ledger, meta_columns: list[str], table_schema: pa.Schema, seen: np.ndarray
) -> pa.Table:
    """Manifest rows for a chunk of planned items: parameters from the plan, state from the ledger."""
    ids = [item.item_id for item in items]
    positions = ledger.positions(ids)
    seen[positions[positions >= 0]] = True
    columns: dict[str, Any] = {"item_id": pa.array(ids, pa.string())}
    for p in api_spec.PARAMETERS:
        columns[p] = pa.array([_param(item.params.get(p)) for item in items], table_schema.field(p).type)
    for m in meta_columns:
        columns[m] = pa.array([None if (v := item.meta.get(m)) is None else str(v) for item in items], pa.string())
    columns.update(ledger.columns(positions))
    columns["in_plan"] = pa.array(np.ones(len(items), dtype=bool))
    return pa.table([columns[f.name] for f in table_schema], schema=table_schema)


def manifest_stamp(ledger: Ledger, plan_digest: str) -> dict[bytes, bytes]:
    """What a manifest reflects: the ledger's last item event and the plan. Equal stamps, equal
    manifests, so a run with nothing to do need not rewrite it."""
    return {b"batch_runner.manifest": json.dumps({"ledger": ledger.stamp(), "plan": plan_digest}).encode()}


def manifest_is_current(out: OutputDir, stamp: dict[bytes, bytes]) -> bool:
    try:
        metadata = pq.read_schema(local_path(out.manifest), filesystem=LOCAL).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    key = next(iter(stamp))
    return metadata.get(key) == stamp[key] and out.metadata.exists()


def write_manifest(
    out: OutputDir,
    items: Iterable[Item],
    journal: Ledger,
    meta_columns: list[str],
    stamp: dict[bytes, bytes] | None = None,
) -> int:
    """Rewrite manifest.parquet and metadata.jsonl from the plan and the ledger; returns rows.

    Columnar a chunk at a time: memory holds one chunk of the plan, whatever the job's size."""
    table_schema = schema(meta_columns)
    if stamp:
        table_schema = table_schema.with_metadata(stamp)
    tmp = out.manifest.with_name(f".{out.manifest.name}.partial")
    meta_tmp = out.metadata.with_name(f".{out.metadata.name}.partial")
    seen = journal.new_seen()
    count = 0
    writing = pq.ParquetWriter(local_path(tmp), table_schema, filesystem=LOCAL)
    with writing as writer, open(meta_tmp, "w", encoding="utf-8") as metadata:

        def put(table: pa.Table) -> None:
            nonlocal count
            writer.write_table(table)
            count += len(table)
            metadata.write(_metadata_lines(table, meta_columns))
            journal.release_pages()  # the ledger's columns this chunk read: flat memory at any size

        chunk: list[Item] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= _BATCH:
                put(_plan_chunk(chunk, journal, meta_columns, table_schema, seen))
                chunk = []
        if chunk:
            put(_plan_chunk(chunk, journal, meta_columns, table_schema, seen))
        # A result that was paid for stays on record even if the manifest dropped its item.
        rows: list[dict[str, Any]] = []
        for item_id, state in journal.not_in(seen):
            rows.append(_row({**state.row, "item_id": item_id}, state, False, meta_columns))
            if len(rows) >= _BATCH:
                put(pa.Table.from_pylist(rows, schema=table_schema))
                rows = []
        if rows or count == 0:
            put(pa.Table.from_pylist(rows, schema=table_schema))
        metadata.flush()
        os.fsync(metadata.fileno())
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(meta_tmp, out.metadata)
    os.replace(tmp, out.manifest)
    fsync_dir(out.path)
    return count


def current_frame(out: OutputDir, journal: Ledger | Replay | None = None) -> pd.DataFrame:
    """The manifest as of now: the last manifest.parquet with the journal's newer news on top."""
    journal = load_ledger(out) if journal is None else journal
    table = _read_manifest(out)
    if table is not None:
        frame = table.to_pandas()
    else:
        # No manifest yet, or one a crash or a user broke: the journal's rows, in its columns.
        frame = schema([]).empty_table().to_pandas()
    meta_columns = [c for c in frame.columns if c not in {"item_id", *api_spec.PARAMETERS, *STATE_COLUMNS}]
    if not journal.items:
        return frame
    fresh = pd.DataFrame(
        [_row({**s.row, "item_id": i}, s, True, meta_columns) for i, s in journal.items.items()]
    ).set_index("item_id")
    frame = frame.set_index("item_id")
    known = fresh.index.intersection(frame.index)
    for column in STATE_COLUMNS:
        if column == "in_plan":
            continue
        if column not in frame.columns:
            frame[column] = None
        frame[column] = frame[column].astype(object)
        frame.loc[known, column] = fresh.loc[known, column].astype(object).values
    new = fresh.loc[fresh.index.difference(frame.index)].copy()
    if len(new):
        new["in_plan"] = False
        frame = pd.concat([frame, new[[c for c in frame.columns if c in new.columns]]])
    return frame.reset_index()


def _read_manifest(out: OutputDir) -> pa.Table | None:
    if not out.manifest.exists():
        return None
    try:
        return pq.read_table(local_path(out.manifest), filesystem=LOCAL)
    except (OSError, pa.ArrowException, ValueError):
        return None


def summarize(out: OutputDir, price_per_image: float | None = None) -> dict[str, Any]:
    """Counts by status, spend and what is left: what `batch-runner status` prints.

    `spent_usd` is what answers confirmed; `possibly_billed_usd` values every attempt that got
    no answer (a timeout, a cut connection, a crash between send and answer) at the price of
    an image, since the API cannot say whether it charged them. Together they are the most
    the invoice can show."""
    journal = load_ledger(out)
    price = max(price_per_image or journal.price or api_spec.PRICE_PER_IMAGE, journal.max_cost)
    counts = {s.value: 0 for s in (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.PENDING, ItemStatus.SENT)}
    items = len(journal)
    # The manifest's rows the journal has no news of, plus every item the journal names:
    # counted column by column, never a row object per item.
    manifest = _read_manifest_columns(out, ["item_id", "status"])
    if manifest is not None:
        unknown = journal.positions(manifest.column("item_id")) < 0
        statuses = manifest.column("status").filter(pa.array(unknown)).fill_null(ItemStatus.PENDING.value)
        for entry in pc.value_counts(statuses).to_pylist():
            counts[str(entry["values"])] = counts.get(str(entry["values"]), 0) + int(entry["counts"])
        items += int(unknown.sum())
    for status, n in journal.status_counts().items():
        counts[status] = counts.get(status, 0) + n
    left = counts[ItemStatus.PENDING.value] + counts[ItemStatus.SENT.value]
    runs = journal.runs
    return {
        "output": str(out.path),
        "job": runs[-1].get("job") if runs else None,
        "items": items,
        "counts": counts,
        "spent_usd": round(journal.spent, 6),
        # A v2 job left on the server is billed when it completes: possibly billed until collected.
        "possibly_billed_usd": round((journal.unanswered + journal.on_server) * price, 6),
        "left": left,
        "left_estimated_cost_usd": round(left * price, 6),
        "unanswered_attempts": journal.unanswered,
        "jobs_on_server": journal.on_server,
        "rate_limited": journal.rate_limited,
        "runs": len(runs),
        "last_run_at": _iso(_timestamp(runs[-1].get("at"))) if runs else None,
        "sandbox": bool(runs and runs[-1].get("sandbox")),
        "torn_journal_lines": journal.torn_lines,
        "skipped_journal_lines": journal.bad_lines,
        "manifest_unreadable": manifest is None and out.manifest.exists(),
    }


def _read_manifest_columns(out: OutputDir, columns: list[str]) -> pa.Table | None:
    """manifest.parquet's columns, or None when it is absent or unreadable. It is only a view
    of the journal (rebuilt by the next run): a garbage file must not make the folder unusable."""
    if not out.manifest.exists():
        return None
    try:
        return pq.read_table(local_path(out.manifest), columns=columns, filesystem=LOCAL)
    except (OSError, pa.ArrowException, ValueError):
        return None
