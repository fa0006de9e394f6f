"""A run's results as pandas DataFrames: the items, and the summaries a sweep is judged by.

>>> import batch_runner
>>> results = batch_runner.load("outputs/quickstart")
>>> results.spend_by_axis.query("axis == 'style_type'")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from batch_runner.api import spec as api_spec
from batch_runner.results.ocr import TEXT_COLUMNS, attach
from batch_runner.store.fold import STATE_COLUMNS, current_frame
from batch_runner.store.journal import ItemStatus
from batch_runner.store.output_dir import OutputDir

# Statuses as the items table holds them (text); finished ones first, as the summaries list them.
SUCCEEDED, FAILED, PENDING = ItemStatus.SUCCEEDED.value, ItemStatus.FAILED.value, ItemStatus.PENDING.value
FINISHED = (SUCCEEDED, FAILED)
STATUSES = (*FINISHED, *(status.value for status in ItemStatus if status.value not in FINISHED))


@dataclass
class RunResults:
    """An output folder's results as pandas DataFrames: one row per item, and its summaries."""

    path: Path
    items: pd.DataFrame  # one row per item, as in manifest.parquet (with the journal's latest)
    axes: list[str]  # parameters and metadata columns that vary across the items
    totals: pd.DataFrame  # metric, value
    by_status: pd.DataFrame  # status, items
    spend_by_axis: pd.DataFrame  # axis, value, items, succeeded, failed, spend_usd
    latency: pd.DataFrame  # scope, n, p50_s, p95_s, mean_s
    failures: pd.DataFrame  # reason, items

    def tables(self) -> dict[str, pd.DataFrame]:
        """The summaries by name, as `report --csv` writes them."""
        return {
            "totals": self.totals,
            "by_status": self.by_status,
            "spend_by_axis": self.spend_by_axis,
            "latency": self.latency,
            "failures": self.failures,
        }


def meta_columns(frame: pd.DataFrame) -> list[str]:
    fixed = {"item_id", *api_spec.PARAMETERS, *STATE_COLUMNS, *TEXT_COLUMNS}
    return [c for c in frame.columns if c not in fixed]


def varying_axes(frame: pd.DataFrame) -> list[str]:
    candidates = [*api_spec.PARAMETERS, *meta_columns(frame)]
    return [c for c in candidates if c in frame.columns and frame[c].nunique(dropna=True) > 1]


def load(path: str | Path) -> RunResults:
    """Everything a results folder knows, as DataFrames."""
    out = OutputDir(Path(path))
    if not out.exists():
        raise FileNotFoundError(f"{path}: no run found (no journal.jsonl or manifest.parquet)")
    items = attach(_typed(current_frame(out)), out.path)  # the report's text check, where it ran
    axes = varying_axes(items)
    return RunResults(
        path=out.path,
        items=items,
        axes=axes,
        totals=_totals(items),
        by_status=_by_status(items),
        spend_by_axis=_spend_by_axis(items, axes),
        latency=_latency(items, axes),
        failures=_failures(items),
    )


def _typed(items: pd.DataFrame) -> pd.DataFrame:
    """Real dtypes, whatever the journal's newer news made object columns: UTC datetimes,
    nullable integers, floats, strings (a column empty everywhere keeps its type too)."""
    items["status"] = items["status"].fillna(PENDING)
    for column in ("cost_usd", "latency_s", "remaining_credits"):
        items[column] = pd.to_numeric(items[column], errors="coerce").astype("float64")
    for column in ("attempts", "rate_limited", "unanswered"):
        items[column] = pd.to_numeric(items[column], errors="coerce").fillna(0).astype("int64")
    for column in ("http_status", "seed", "seed_value"):
        if column in items:
            items[column] = pd.to_numeric(items[column], errors="coerce").astype("Int64")
    for column in ("first_sent_at", "finished_at"):
        items[column] = pd.to_datetime(items[column], utc=True, errors="coerce")
    if "in_plan" in items:
        items["in_plan"] = items["in_plan"].astype("boolean")
    return items


def _totals(items: pd.DataFrame) -> pd.DataFrame:
    finished = items[items.status.isin(FINISHED)]
    ok = items[items.status == SUCCEEDED].latency_s.dropna()
    rows = [
        ("items", len(items)),
        *[(status, int((items.status == status).sum())) for status in STATUSES],
        ("spend_usd", round(float(items.cost_usd.fillna(0).sum()), 6)),
        ("attempts", int(items.attempts.sum())),
        ("retries", int((finished.attempts - 1).clip(lower=0).sum())),
        ("rate_limited_429s", int(items.rate_limited.sum())),
        ("unanswered_attempts", int(items.unanswered.sum())),
        ("latency_p50_s", round(float(ok.quantile(0.5)), 3) if len(ok) else None),
        ("latency_p95_s", round(float(ok.quantile(0.95)), 3) if len(ok) else None),
    ]
    return pd.DataFrame({"metric": [m for m, _ in rows], "value": pd.Series([v for _, v in rows], dtype=object)})


def _by_status(items: pd.DataFrame) -> pd.DataFrame:
    counts = items.status.value_counts()
    return pd.DataFrame({"status": list(STATUSES), "items": [int(counts.get(s, 0)) for s in STATUSES]})


def _spend_by_axis(items: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    frames = []
    for axis in axes:
        grouped = items.groupby(items[axis].astype("string").fillna("(none)"), sort=False)
        frame = pd.DataFrame(
            {
                "items": grouped.size(),
                "succeeded": grouped.status.apply(lambda s: int((s == SUCCEEDED).sum())),
                "failed": grouped.status.apply(lambda s: int((s == FAILED).sum())),
                "spend_usd": grouped.cost_usd.sum().round(6),
            }
        ).reset_index(names="value")
        frame.insert(0, "axis", axis)
        frames.append(frame)
    columns = ["axis", "value", "items", "succeeded", "failed", "spend_usd"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _latency(items: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    ok = items[(items.status == SUCCEEDED) & items.latency_s.notna()]
    rows = [_latency_row("all", ok.latency_s)]
    for axis in axes:
        if ok[axis].nunique() <= 20:
            for value, group in ok.groupby(ok[axis].astype("string"), sort=False):
                rows.append(_latency_row(f"{axis}={value}", group.latency_s))
    return pd.DataFrame(rows, columns=["scope", "n", "p50_s", "p95_s", "mean_s"])


def _latency_row(scope: str, values: pd.Series) -> tuple:
    if not len(values):
        return (scope, 0, None, None, None)
    return (
        scope,
        int(len(values)),
        round(float(values.quantile(0.5)), 3),
        round(float(values.quantile(0.95)), 3),
        round(float(values.mean()), 3),
    )


def _failures(items: pd.DataFrame) -> pd.DataFrame:
    failed = items[items.status == FAILED]
    counts = failed.error.fillna("(no message)").value_counts()
    return pd.DataFrame({"reason": counts.index.astype(str), "items": counts.values.astype(int)})
