"""The HTML report: one static page that works from file://, its data embedded as JSON.

Images come first: a live X/Y/Z grid (any parameter or metadata column as rows, columns or
pages; a cell with several items shows them all), a lightbox with the full image and its whole
recipe (←/→, Esc), filters (a blank value is a value), paging that reaches every item, failed
and pending items marked, winner picks kept in localStorage and downloaded as CSV or JSON,
and `--compare OTHER`: a second run's items matched to this run's, side by side. The page's
markup and script are batch_runner/results/templates/viewer.html and viewer.js.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from batch_runner import humanize
from batch_runner.api import spec as api_spec
from batch_runner.results.ocr import TEXT_COLUMNS
from batch_runner.results.report import Layout, make_thumbs, palette_label, palette_members, zipped_axes
from batch_runner.results.summaries import RunResults, meta_columns
from batch_runner.store.output_dir import write_atomic

RUN, PAIR = "run", "pair"
STATE = ["status", "attempts", "http_status", "error", "latency_s", "cost_usd", "seed_value", "image_path"]
TEXT = list(TEXT_COLUMNS)  # the report's text check (results/ocr.py), where it ran
TEXT_LABELS = {"true": "text right", "false": "text wrong"}
MAX_FILTER_VALUES = 200
ZIP_JOIN = "+"  # a zipped axis is named as `plan` names it: prompt+negative_prompt


@dataclass
class _Side:
    results: RunResults
    label: str  # the run column's value
    uid_prefix: str  # "" for this run, "B:" for the compared one
    thumbs: dict[str, str]
    image_prefix: str  # from report/ to the run's folder, "../" for this run


def _json_value(value: Any) -> Any:
    """A cell as plain JSON: missing values as None, numpy scalars as Python numbers."""
    if isinstance(value, (list, dict)):
        return value
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _run_labels(a: Path, b: Path) -> tuple[str, str]:
    if a.name != b.name:
        return a.name, b.name
    if a.parent.name != b.parent.name:
        return f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}"
    return f"{a.name} (A)", f"{b.name} (B)"


def _key_frame(items: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One string per row of the given columns' values, for matching rows across runs."""
    parts = [items[c].astype("string").fillna("\u2205") if c in items.columns else pd.Series("\u2205", items.index)
             for c in columns]  # fmt: skip
    key = parts[0]
    for part in parts[1:]:
        key = key + "\x1f" + part
    return key


def match_runs(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, str]:
    """Which item of run A each item of run B stands beside: {b item_id: a item_id}.

    First the same item_id; then, among items still unmatched, the same request parameters but
    one (with the metadata both runs share, then without it), then the same prompt, seed and
    style. A key matches only where it is unique on both sides, so no image is paired twice."""
    shared_meta = [c for c in meta_columns(a) if c in set(meta_columns(b))]
    params = [p for p in api_spec.PARAMETERS if p in a.columns or p in b.columns]
    matched = {i: i for i in set(a.item_id) & set(b.item_id)}
    stages = [[p for p in params if p != left_out] + shared_meta for left_out in params]
    stages += [[p for p in params if p != left_out] for left_out in params]
    stages.append(["prompt", "seed", "style_type"])
    progress = True
    while progress:  # a match can make another key unique, so go round until nothing changes
        progress = False
        for columns in stages:
            rest_a = a[~a.item_id.isin(set(matched.values()))]
            rest_b = b[~b.item_id.isin(set(matched))]
            if rest_a.empty or rest_b.empty:
                return matched
            keys_a, keys_b = _key_frame(rest_a, columns), _key_frame(rest_b, columns)
            unique_a = keys_a[~keys_a.duplicated(keep=False)]
            unique_b = keys_b[~keys_b.duplicated(keep=False)]
            by_key = dict(zip(unique_a.values, rest_a.loc[unique_a.index, "item_id"], strict=True))
            for key, b_id in zip(unique_b.values, rest_b.loc[unique_b.index, "item_id"], strict=True):
                if key in by_key:
                    matched[b_id] = by_key[key]
                    progress = True
    return matched


def _describe(row: dict, axes: list[str]) -> str:
    """An item in a few words: its prompt, then the other varying values."""
    parts = [str(row["prompt"])] if "prompt" in axes and row.get("prompt") is not None else []
    for axis in axes:
        if axis != "prompt" and row.get(axis) is not None:
            value = palette_label(row[axis]) if axis == "color_palette" else row[axis]
            parts.append(f"{axis}={value}")
    return " · ".join(parts) or str(row["item_id"])


def _zipped_layout(layout: dict[str, Any], groups: list[list[str]], axes: list[str]) -> dict[str, Any]:
    """The default grid with each zipped group as its one axis, and no axis shown twice."""
    name = {column: ZIP_JOIN.join(group) for group in groups for column in group}
    shown: list[str | None] = []
    for slot in ("rows", "cols", "page"):
        value = layout[slot]
        value = name.get(value, value) if value else value
        if value in shown:
            free = [a for a in axes if a not in shown and a not in name and a != value]
            value = ("style_type" if "style_type" in free else free[0]) if free else None
        shown.append(value)
    return dict(zip(("rows", "cols", "page"), shown, strict=True))


def build_data(sides: list[_Side], layout: Layout, key: str, title: str) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict (items as rows of a field list)."""
    compare = len(sides) > 1
    columns: list[str] = []
    for side in sides:
        items = side.results.items
        columns += [c for c in [*api_spec.PARAMETERS, *meta_columns(items)] if c in items.columns and c not in columns]
    axes: list[str] = []
    for side in sides:
        axes += [a for a in side.results.axes if a not in axes]
    if compare:
        for column in columns:  # a parameter that differs between the runs is an axis too
            values = set()
            for side in sides:
                if column in side.results.items.columns:
                    values |= set(side.results.items[column].dropna().astype(str))
            if len(values) > 1 and column not in axes:
                axes.append(column)
        axes = [RUN, PAIR, *axes]
    zipped = [] if compare else zipped_axes(sides[0].results.items, axes)
    zip_names = [ZIP_JOIN.join(group) for group in zipped]
    axes = [a for a in axes if not any(a in group for group in zipped)] + zip_names
    fields = ["uid", "item_id", *([RUN, PAIR] if compare else []), *columns, *zip_names, *STATE, *TEXT, "thumb",
              "image"]  # fmt: skip
    labels: dict[str, dict[str, str]] = {}
    swatches: dict[str, list] = {}
    rows: list[list[Any]] = []
    pairs = match_runs(sides[0].results.items, sides[1].results.items) if compare else {}
    for n, side in enumerate(sides):
        items = side.results.items
        present = [c for c in columns if c in items.columns]
        frame = items[["item_id", *present, *STATE, *[c for c in TEXT if c in items.columns]]]
        for record in frame.to_dict("records"):
            item_id = record["item_id"]
            row = {c: _json_value(record.get(c)) for c in ["item_id", *columns, *STATE, *TEXT]}
            for group, name in zip(zipped, zip_names, strict=True):
                row[name] = " · ".join(
                    palette_label(row[c]) if c == "color_palette" else "(none)" if row[c] is None else str(row[c])
                    for c in group
                )  # fmt: skip
            row["uid"] = side.uid_prefix + item_id
            row["thumb"] = side.thumbs.get(item_id)
            row["image"] = side.image_prefix + row["image_path"] if row["image_path"] else None
            if compare:
                row[RUN] = side.label
                partner = item_id if n == 0 else pairs.get(item_id)
                row[PAIR] = partner if partner is not None else row["uid"]
                if n == 0 or partner is None:
                    labels.setdefault(PAIR, {})[row[PAIR]] = _describe(row, [a for a in axes if a in columns])
            palette = row.get("color_palette")
            if isinstance(palette, str) and palette not in labels.get("color_palette", {}):
                labels.setdefault("color_palette", {})[palette] = palette_label(palette)
                members = palette_members(palette)
                if members:
                    swatches[palette] = [[h, w] for h, w in members]
            rows.append([row.get(f) for f in fields])
    filters = ["status"]
    if any(r[fields.index("text_ok")] is not None for r in rows):
        filters.append("text_ok")
        labels["text_ok"] = TEXT_LABELS
    for axis in axes:
        if axis == PAIR:
            continue
        distinct = {r[fields.index(axis)] for r in rows}
        if len(distinct) <= MAX_FILTER_VALUES:
            filters.append(axis)
    if compare:
        layout_data = {"rows": PAIR, "cols": RUN, "page": None}
    else:
        layout_data = {"rows": layout.rows, "cols": layout.cols, "page": layout.group[0] if layout.group else None}
        layout_data = _zipped_layout(layout_data, zipped, axes)
    return {
        "title": title,
        "key": key,
        "fields": fields,
        "columns": columns,
        "axes": axes,
        "zipped": {name: group for name, group in zip(zip_names, zipped, strict=True)},
        "filters": filters,
        "layout": layout_data,
        "labels": labels,
        "swatches": swatches,
        "runs": [side.label for side in sides],
        "items": rows,
    }


def _table_html(frame: pd.DataFrame, caption: str) -> str:
    if frame.empty:
        return f"<h3>{html.escape(caption)}</h3><p class=muted>none</p>"
    return f"<h3>{html.escape(caption)}</h3>" + frame.to_html(index=False, border=0, classes="summary", na_rep="—")


def _template(name: str) -> str:
    return (resources.files("batch_runner.results") / "templates" / name).read_text(encoding="utf-8")


def _stats(results: RunResults) -> dict[str, Any]:
    totals = {m: v for m, v in zip(results.totals.metric, results.totals.value, strict=True)}
    p50, p95 = totals.get("latency_p50_s"), totals.get("latency_p95_s")
    return {
        "items": int(totals["items"]),
        "succeeded": int(totals["succeeded"]),
        "failed": int(totals["failed"]),
        "pending": int(totals["pending"]) + int(totals["sent"]),
        "spend": humanize.money(float(totals.get("spend_usd") or 0)),
        "latency": f"{'—' if p50 is None else p50} / {'—' if p95 is None else p95} s",
        "retries": int(totals["retries"]),
        "limited": int(totals["rate_limited_429s"]),
    }


def _verdict_html(table: pd.DataFrame | None) -> tuple[str, str]:
    """The verdict's lines for the first screen (only axes with text checked or picks), and its
    whole table for the summary."""
    if table is None or table.empty:
        return "", ""
    from batch_runner.results.verdict import sentences

    lines = "".join(f"<li>{html.escape(line)}</li>" for line in sentences(table))
    strip = f'<ul id="verdict" class="verdict">{lines}</ul>' if lines else ""
    return strip, _table_html(table, "Verdict per axis value (text accuracy and pick rate: 95% Wilson intervals)")


def html_report(
    results: RunResults,
    to: Path,
    sheets: list[Path],
    layout: Layout,
    compare: RunResults | None = None,
    verdict: pd.DataFrame | None = None,
) -> Path:
    """Write to/index.html (and the thumbnails it shows under to/thumbs); returns its path."""
    sides = [_Side(results, results.path.name, "", make_thumbs(results, to / "thumbs"), "../")]
    key = str(results.path.resolve())
    if compare is not None:
        label_a, label_b = _run_labels(results.path.resolve(), compare.path.resolve())
        sides[0].label = label_a
        digest = hashlib.sha1(str(compare.path.resolve()).encode()).hexdigest()[:10]
        folder = to / "thumbs" / f"compare-{digest}"
        thumbs = {k: f"thumbs/{v}" for k, v in make_thumbs(compare, folder).items()}
        prefix = os.path.relpath(compare.path.resolve(), to.resolve()).replace(os.sep, "/") + "/"
        sides.append(_Side(compare, label_b, "B:", thumbs, prefix))
        key += "|compare:" + str(compare.path.resolve())
    title = results.path.name + (f" vs {compare.path.name}" if compare is not None else "")
    data = build_data(sides, layout, key, title)
    payload = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
    # No "<" at all in the JSON (nor ">" or "&"): "</script>" cannot close the block, and "<!--<script>"
    # cannot put the HTML parser in its double-escaped state, which would swallow the page.
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    stats = _stats(results)
    cards = "".join(
        f'<div class="card">{html.escape(name)}<b>{html.escape(str(value))}</b></div>'
        for name, value in [
            ("items", stats["items"]),
            ("succeeded", stats["succeeded"]),
            ("failed", stats["failed"]),
            ("pending", stats["pending"]),
            ("spent", stats["spend"]),
            ("latency p50 / p95", stats["latency"]),
            ("retries", stats["retries"]),
            ("429s", stats["limited"]),
        ]
    )
    strip, verdict_table = _verdict_html(verdict)
    summary = "".join(
        [
            verdict_table,
            _table_html(results.by_status, "Items by status"),
            _table_html(results.spend_by_axis, "Spend per axis value"),
            _table_html(results.latency, "Latency of successful requests (seconds)"),
            _table_html(results.failures, "Failure reasons"),
        ]
    )
    sheet_tags = "\n".join(
        f'<figure><a href="sheets/{p.name}"><img src="sheets/{p.name}" alt="{html.escape(p.stem)}" '
        f'loading="lazy"></a><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in sheets
    )
    line = (
        f"{stats['items']} items · {stats['succeeded']} succeeded · {stats['failed']} failed · "
        f"{stats['pending']} pending · {stats['spend']} spent"
    )
    if compare is not None:
        other = _stats(compare)
        line += f" — compared with {compare.path.name}: {other['items']} items, {other['succeeded']} succeeded"
    replacements = {
        "__TITLE__": html.escape(title),
        "__STATLINE__": html.escape(line),
        "__CARDS__": cards,
        "__VERDICT__": strip,
        "__SUMMARY__": summary,
        "__SHEETS__": sheet_tags or "<p class=muted>no contact sheets</p>",
        "__SHEET_COUNT__": str(len(sheets)),
        "__SCRIPT__": _template("viewer.js"),
        "__DATA__": payload,
    }
    # One pass, so a marker inside a value (a failure reason, say) is left as it is.
    page = re.sub("|".join(map(re.escape, replacements)), lambda m: replacements[m.group(0)], _template("viewer.html"))
    index = to / "index.html"
    write_atomic(index, page.encode("utf-8"))
    return index
