"""Fold the journal into manifest.parquet and metadata.jsonl, and read a run's results back.

The journal is the truth; these files are views of it, rewritten whole and swapped in
atomically, so a reader never meets a half-written Parquet file. Rows stream into Parquet
row groups, so a million-item manifest never sits in memory as one DataFrame.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import api_spec
from .items import Item
from .journal import ItemState, Replay, replay
from .output_dir import OutputDir, fsync_dir, write_atomic

STATE_FIELDS: list[tuple[str, pa.DataType]] = [
    ("status", pa.string()),
    ("attempts", pa.int64()),
    ("http_status", pa.int64()),
    ("error", pa.string()),
    ("latency_s", pa.float64()),
    ("cost_usd", pa.float64()),
    ("remaining_credits", pa.float64()),
    ("seed_value", pa.int64()),
    ("request_id", pa.string()),
    ("image_path", pa.string()),
    ("first_sent_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("rate_limited", pa.int64()),
    ("unanswered", pa.int64()),
    ("in_plan", pa.bool_()),
]
STATE_COLUMNS = [name for name, _ in STATE_FIELDS]
_PARAM_TYPES = {"seed": pa.int64()}
_BATCH = 50_000


def schema(meta_columns: list[str]) -> pa.Schema:
    fields = [pa.field("item_id", pa.string())]
    fields += [pa.field(p, _PARAM_TYPES.get(p, pa.string())) for p in api_spec.PARAMETERS]
    fields += [pa.field(m, pa.string()) for m in meta_columns]
    fields += [pa.field(name, kind) for name, kind in STATE_FIELDS]
    return pa.schema(fields)


def _timestamp(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, timezone.utc) if epoch else None


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


def manifest_rows(items: Iterable[Item], journal: Replay, meta_columns: list[str]) -> Iterator[dict[str, Any]]:
    """One row per planned item, then rows for journaled items the plan no longer has:
    a result that was paid for stays on record even if the manifest dropped its item."""
    planned: set[str] = set()
    for item in items:
        planned.add(item.item_id)
        yield _row(item.row(), journal.items.get(item.item_id), True, meta_columns)
    for item_id, state in journal.items.items():
        if item_id not in planned:
            yield _row({**state.row, "item_id": item_id}, state, False, meta_columns)


def _metadata_line(row: dict[str, Any], meta_columns: list[str]) -> str:
    # Hugging Face imagefolder: file_name relative to this file, then any columns.
    record = {"file_name": row["image_path"], "item_id": row["item_id"], "text": row["prompt"]}
    record.update({p: row[p] for p in api_spec.PARAMETERS})
    record.update({m: row[m] for m in meta_columns})
    record["seed_value"] = row["seed_value"]
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_manifest(out: OutputDir, items: Iterable[Item], journal: Replay, meta_columns: list[str]) -> int:
    """Rewrite manifest.parquet and metadata.jsonl from the plan and the journal; returns rows."""
    table_schema = schema(meta_columns)
    tmp = out.manifest.with_name(f".{out.manifest.name}.partial")
    metadata = io.StringIO()
    count = 0
    with pq.ParquetWriter(tmp, table_schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in manifest_rows(items, journal, meta_columns):
            batch.append(row)
            if row["status"] == "succeeded" and row["image_path"]:
                metadata.write(_metadata_line(row, meta_columns))
            if len(batch) >= _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=table_schema))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=table_schema))
            count += len(batch)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out.manifest)
    fsync_dir(out.path)
    write_atomic(out.metadata, metadata.getvalue().encode("utf-8"))
    return count


def current_frame(out: OutputDir, journal: Replay | None = None) -> pd.DataFrame:
    """The manifest as of now: the last manifest.parquet with the journal's newer news on top."""
    journal = journal or replay(out.journal)
    if out.manifest.exists():
        frame = pd.read_parquet(out.manifest)
    else:
        frame = pd.DataFrame({"item_id": pd.Series(dtype="string")})
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


def summarize(out: OutputDir, price_per_image: float | None = None) -> dict[str, Any]:
    """Counts by status, spend and what is left: what `batch-runner status` prints.

    `spent_usd` is what answers confirmed; `possibly_billed_usd` values every attempt that got
    no answer (a timeout, a cut connection, a crash between send and answer) at the price of
    an image, since the API cannot say whether it charged them. Together they are the most
    the invoice can show."""
    journal = replay(out.journal)
    price = price_per_image or journal.price or api_spec.PRICE_PER_IMAGE
    frame = current_frame(out, journal)
    counts = {s: 0 for s in ("succeeded", "failed", "pending", "sent")}
    if "status" in frame.columns:
        for status, n in frame["status"].fillna("pending").value_counts().items():
            counts[str(status)] = int(n)
    left = counts["pending"] + counts["sent"]
    runs = journal.runs
    return {
        "output": str(out.path),
        "job": runs[-1].get("job") if runs else None,
        "items": int(len(frame)),
        "counts": counts,
        "spent_usd": round(journal.spent, 6),
        "possibly_billed_usd": round(journal.unanswered * price, 6),
        "left": left,
        "left_estimated_cost_usd": round(left * price, 6),
        "unanswered_attempts": journal.unanswered,
        "rate_limited": sum(s.rate_limited for s in journal.items.values()),
        "runs": len(runs),
        "last_run_at": _timestamp(runs[-1].get("at")).isoformat(timespec="seconds").replace("+00:00", "Z")
        if runs
        else None,
        "sandbox": bool(runs and runs[-1].get("sandbox")),
        "torn_journal_lines": journal.torn_lines,
    }
