"""Which variant won: per value of each axis, images, failures, cost, latency, text accuracy with
a 95% Wilson interval, and the share of picks; differences whose intervals do not overlap are
marked (▲ above every other value, ▼ below the best one).

Wilson's interval, not the normal one: it stays inside 0..1 and is honest at 0 or n of n, which
is where small A/B cells live.
"""

from __future__ import annotations

import math

import pandas as pd

from batch_runner.results.picks import Picks
from batch_runner.results.summaries import FAILED, SUCCEEDED, RunResults

MAX_VALUES = 20  # an axis with more values (one per prompt, say) is a list, not a verdict
SENTENCE_VALUES = 8
Z95 = 1.959964
COLUMNS = ["axis", "value", "images", "failed", "cost_usd", "latency_p50_s", "text_checked", "text_ok",
           "text_accuracy", "text_low", "text_high", "text_mark", "picks", "pick_share", "pick_low", "pick_high",
           "pick_mark", "rating_mean"]  # fmt: skip


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for successes out of n (0..1); (nan, nan) when n is 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    return low, 1.0 if successes >= n else min(1.0, centre + half)


def _marks(low: pd.Series, high: pd.Series, rate: pd.Series) -> list[str]:
    """▲ for the value whose interval lies above every other's, ▼ for those wholly below the best."""
    marks = [""] * len(rate)
    known = [i for i in range(len(rate)) if not math.isnan(low.iloc[i])]
    if len(known) < 2:
        return marks
    best = max(known, key=lambda i: rate.iloc[i])
    if all(low.iloc[best] > high.iloc[i] for i in known if i != best):
        marks[best] = "▲"
    for i in known:
        if i != best and high.iloc[i] < low.iloc[best]:
            marks[i] = "▼"
    return marks


def verdict(results: RunResults, picks: Picks | None = None) -> pd.DataFrame:
    """One row per value of each axis with at most MAX_VALUES values."""
    items = results.items
    picked = items.item_id.isin(picks.ids) if picks else pd.Series(False, index=items.index)
    ratings = items.item_id.map(picks.ratings if picks else {}).astype("Float64")
    total_picks = int(picked.sum())
    rows = []
    for axis in results.axes:
        keys = items[axis].astype("string").fillna("(none)")
        if keys.nunique() > MAX_VALUES:
            continue
        block = []
        for value, index in keys.groupby(keys, sort=False).groups.items():
            group = items.loc[index]
            ok = group[group.status == SUCCEEDED]
            checked = group.text_ok.dropna()
            right = int(checked.sum())
            text_low, text_high = wilson(right, len(checked))
            n_picks = int(picked.loc[index].sum())
            pick_low, pick_high = wilson(n_picks, len(ok))
            rated = ratings.loc[index].dropna()
            block.append(
                {
                    "axis": axis,
                    "value": str(value),
                    "images": len(ok),
                    "failed": int((group.status == FAILED).sum()),
                    "cost_usd": round(float(group.cost_usd.fillna(0).sum()), 6),
                    "latency_p50_s": round(float(ok.latency_s.median()), 3) if ok.latency_s.notna().any() else None,
                    "text_checked": len(checked),
                    "text_ok": right,
                    "text_accuracy": right / len(checked) if len(checked) else math.nan,
                    "text_low": text_low,
                    "text_high": text_high,
                    "picks": n_picks,
                    "pick_share": n_picks / total_picks if total_picks else math.nan,
                    "pick_low": pick_low if total_picks else math.nan,
                    "pick_high": pick_high if total_picks else math.nan,
                    "rating_mean": round(float(rated.mean()), 2) if len(rated) else None,
                }
            )
        frame = pd.DataFrame(block)
        frame["text_mark"] = _marks(frame.text_low, frame.text_high, frame.text_accuracy)
        rates = frame.picks / frame.images.where(frame.images > 0)
        frame["pick_mark"] = _marks(frame.pick_low, frame.pick_high, rates.fillna(0))
        rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat(rows, ignore_index=True)[COLUMNS]
    for column in ("text_accuracy", "text_low", "text_high", "pick_share", "pick_low", "pick_high"):
        table[column] = table[column].astype("float64").round(4)
    return table


def _pct(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value * 100:.0f}%"


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:39] + "…"


def sentences(table: pd.DataFrame) -> list[str]:
    """The verdict in words, one line per axis that has text checked or picks."""
    lines = []
    for axis, frame in table.groupby("axis", sort=False):
        if len(frame) > SENTENCE_VALUES:  # a list of every prompt is for the table, not a sentence
            continue
        parts = []
        if frame.text_checked.sum() > 0:
            ranked = frame[frame.text_checked > 0].sort_values("text_accuracy", ascending=False)
            shown = " vs ".join(
                f"{_short(r.value)} {_pct(r.text_accuracy)} [{_pct(r.text_low)}–{_pct(r.text_high)}]"
                for r in ranked.itertuples()
            )
            top = ranked.iloc[0]
            if top.text_mark == "▲":
                parts.append(f"text right most often: {_short(top.value)} ({shown}; the intervals do not overlap)")
            else:
                spread = f"{_pct(ranked.text_accuracy.min())}–{_pct(ranked.text_accuracy.max())}"
                parts.append(f"text accuracy: no clear winner ({len(ranked)} values, {spread}; the intervals overlap)")
        if frame.picks.sum() > 0:
            ranked = frame.sort_values("pick_share", ascending=False)
            shown = ", ".join(f"{_short(r.value)} {int(r.picks)}" for r in ranked.itertuples() if r.picks)
            top = ranked.iloc[0]
            lead = f"most picked: {_short(top.value)}" if top.pick_mark == "▲" else "picks: no clear favourite"
            parts.append(f"{lead} ({shown})")
        if parts:
            lines.append(f"{axis}: " + "; ".join(parts))
    return lines


def text_table(table: pd.DataFrame) -> str:
    """The verdict as aligned text, for the terminal."""
    if table.empty:
        return "(no axis varies)"
    shown = pd.DataFrame(
        {
            "axis": table.axis,
            "value": table.value.str.slice(0, 32),
            "images": table.images,
            "failed": table.failed,
            "cost": table.cost_usd.map(lambda v: f"${v:.2f}"),
            "p50 s": table.latency_p50_s.map(lambda v: "—" if v is None or pd.isna(v) else f"{v:.2f}"),
            "text ok": [
                "—" if not n else f"{k}/{n} {_pct(a)} [{_pct(lo)}–{_pct(hi)}]{(' ' + m) if m else ''}"
                for k, n, a, lo, hi, m in zip(
                    table.text_ok,
                    table.text_checked,
                    table.text_accuracy,
                    table.text_low,
                    table.text_high,
                    table.text_mark,
                    strict=True,
                )  # fmt: skip
            ],
            "picks": [
                "—" if pd.isna(s) else f"{p} ({_pct(s)}){(' ' + m) if m else ''}"
                for p, s, m in zip(table.picks, table.pick_share, table.pick_mark, strict=True)
            ],
        }
    )
    return shown.to_string(index=False)
