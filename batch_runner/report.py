"""Look rather than read: contact sheets (PNG) and a static HTML report of a run.

Sheets are labelled grids of thumbnails, ROWS × COLS, one set per value of the GROUP axes,
paged so each stays readable. The HTML report embeds its data, so it needs no server and
opens from file://.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

from . import api_spec
from .errors import UsageError
from .fonts import font
from .output_dir import write_atomic
from .summaries import RunResults, meta_columns

CELL = 200
LABEL_W = 280
HEADER_H = 56
TITLE_H = 64
PAD = 8
MAX_ROWS, MAX_COLS = 8, 6
THUMB = 256
_BG, _INK, _MUTED = (250, 250, 248), (30, 30, 30), (120, 120, 120)
_FAILED_BG, _FAILED_INK = (253, 228, 226), (170, 30, 30)


@dataclass(frozen=True)
class Layout:
    rows: str
    cols: str | None
    group: list[str]


def choose_layout(results: RunResults, rows: str | None, cols: str | None, group: Sequence[str] | None) -> Layout:
    """Rows and columns as asked, else prompt × style_type (or whatever varies), and one sheet
    per combination of the remaining varying request parameters."""
    columns = set(results.items.columns) - {"item_id"}
    for name, value in (("--rows", rows), ("--cols", cols), *(("--group", g) for g in group or [])):
        if value is not None and value not in columns:
            usable = ", ".join(sorted(c for c in columns if c in results.axes or c in api_spec.PARAMETERS))
            raise UsageError(f"{name} {value!r} is not a column of this run; use one of: {usable}")
    varying = results.axes
    if rows is None:
        rows = "prompt" if "prompt" in varying or not varying else varying[0]
    if cols is None:
        others = [a for a in varying if a != rows]
        cols = "style_type" if "style_type" in others else (others[0] if others else None)
    if group is None:
        # Metadata (a prompt's Category, a template's vars) rides along with the prompt, so
        # only request parameters count as the remaining axes; --group can name metadata.
        # An axis that decides the rows or columns (prompt decides Category) belongs inside
        # the cells: grouping by it would give one sheet per prompt.
        items = results.items
        group = [
            a
            for a in varying
            if a in api_spec.PARAMETERS
            and a not in (rows, cols)
            and not any(_determines(items, a, shown) for shown in (rows, cols) if shown is not None)
        ]
    return Layout(rows, cols, list(group))


def _determines(items: pd.DataFrame, axis: str, column: str) -> bool:
    """True when each value of axis comes with a single value of column."""
    if column in api_spec.PARAMETERS:
        return False
    pairs = items[[axis, column]].astype("string").fillna("(none)")
    return bool((pairs.groupby(axis)[column].nunique() <= 1).all())


def _label(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "(none)"
    return str(value)


def _slug(values: Sequence[Any]) -> str:
    text = "-".join(_label(v) for v in values) or "all"
    short = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "x"
    return f"{short}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _thumbnail(path: Path, size: int) -> Image.Image | None:
    try:
        image = Image.open(path)
        image.draft("RGB", (size, size))
        image = image.convert("RGB")
        image.thumbnail((size, size))
        return image
    except OSError:
        return None


def _wrap(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width_px: int, font, fill, max_lines: int) -> None:
    chars = max(8, int(width_px / (font.size * 0.6)))
    lines = textwrap.wrap(text, chars)[:max_lines] or [""]
    if len(textwrap.wrap(text, chars)) > max_lines:
        lines[-1] = lines[-1][: max(0, chars - 1)] + "…"
    x, y = xy
    for line in lines:
        draw.text((x, y), line, font=font, fill=fill)
        y += int(font.size * 1.25)


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, box: tuple[int, int], row: pd.Series | None, root: Path):
    x, y = box
    small = font(13)
    if row is None:
        draw.rectangle((x, y, x + CELL, y + CELL), fill=(238, 238, 236))
        draw.text((x + CELL // 2 - 4, y + CELL // 2 - 8), "—", font=small, fill=_MUTED)
        return
    status = row["status"]
    if status == "succeeded" and isinstance(row.get("image_path"), str):
        thumb = _thumbnail(root / row["image_path"], CELL)
        if thumb is not None:
            sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2))
            return
        status, row = "failed", {**row, "error": "image file missing or unreadable"}
    if status == "failed":
        draw.rectangle((x, y, x + CELL, y + CELL), fill=_FAILED_BG, outline=_FAILED_INK, width=2)
        draw.text((x + 8, y + 8), "FAILED", font=font(16), fill=_FAILED_INK)
        _wrap(draw, (x + 8, y + 32), _label(row.get("error")), CELL - 16, small, _FAILED_INK, 9)
        return
    draw.rectangle((x, y, x + CELL, y + CELL), fill=(232, 232, 240))
    draw.text((x + 8, y + 8), status.upper(), font=font(16), fill=_MUTED)


def contact_sheets(results: RunResults, to: Path, layout: Layout) -> list[Path]:
    """Write the sheets as PNG files; returns their paths in order."""
    to.mkdir(parents=True, exist_ok=True)
    for stale in to.glob("sheet-*.png"):  # a new layout replaces the last report's sheets
        stale.unlink()
    items = results.items.copy()
    paths: list[Path] = []
    groups = (
        items.groupby([items[g].astype("string").fillna("(none)") for g in layout.group], sort=False)
        if (layout.group)
        else [((), items)]
    )
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        row_values = list(dict.fromkeys(frame[layout.rows].map(_label)))
        col_values = list(dict.fromkeys(frame[layout.cols].map(_label))) if layout.cols else [""]
        cells: dict[tuple[str, str], pd.Series] = {}
        counts: dict[tuple[str, str], int] = {}
        for _, item in frame.iterrows():
            cell = (_label(item[layout.rows]), _label(item[layout.cols]) if layout.cols else "")
            cells.setdefault(cell, item)  # several items in one cell: the sheet shows the first
            counts[cell] = counts.get(cell, 0) + 1
        pages = [
            (row_values[r : r + MAX_ROWS], col_values[c : c + MAX_COLS])
            for r in range(0, len(row_values), MAX_ROWS)
            for c in range(0, len(col_values), MAX_COLS)
        ]
        title_group = ", ".join(f"{g}={v}" for g, v in zip(layout.group, key, strict=True)) or "all items"
        for number, (page_rows, page_cols) in enumerate(pages, start=1):
            title = f"{results.path.name}: {layout.rows} × {layout.cols or '-'} · {title_group}"
            if len(pages) > 1:
                title += f" · page {number}/{len(pages)}"
            image = _render_page(results.path, title, layout, page_rows, page_cols, cells, counts)
            path = to / f"sheet-{_slug(key)}-p{number:02d}.png"
            buffer = io.BytesIO()
            image.save(buffer, "PNG", optimize=True)
            write_atomic(path, buffer.getvalue())
            paths.append(path)
    return paths


def _render_page(
    root: Path, title: str, layout: Layout, rows: list[str], cols: list[str], cells: dict, counts: dict
) -> Image.Image:
    width = LABEL_W + len(cols) * (CELL + PAD) + PAD
    height = TITLE_H + HEADER_H + len(rows) * (CELL + PAD) + PAD
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    _wrap(draw, (PAD * 2, 14), title, width - 4 * PAD, font(20), _INK, 2)
    for c, col in enumerate(cols):
        x = LABEL_W + c * (CELL + PAD)
        _wrap(draw, (x, TITLE_H + 6), col, CELL, font(15), _INK, 2)
    for r, row_value in enumerate(rows):
        y = TITLE_H + HEADER_H + r * (CELL + PAD)
        _wrap(draw, (PAD * 2, y + 4), row_value, LABEL_W - 4 * PAD, font(15), _INK, 10)
        for c, col in enumerate(cols):
            x = LABEL_W + c * (CELL + PAD)
            _draw_cell(sheet, draw, (x, y), cells.get((row_value, col)), root)
            more = counts.get((row_value, col), 0) - 1
            if more > 0:  # the cell shows one of several items
                badge = f"+{more} more"
                draw.rectangle((x, y + CELL - 22, x + 12 + 8 * len(badge), y + CELL), fill=(30, 30, 30))
                draw.text((x + 6, y + CELL - 19), badge, font=font(13), fill=(255, 255, 255))
    return sheet


# ------------------------------------------------------------------------------------ HTML


def _thumbs(results: RunResults, to: Path) -> dict[str, str]:
    """Small JPEG thumbnails for the table, made once and reused by later reports."""
    to.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    ok = results.items[(results.items.status == "succeeded") & results.items.image_path.notna()]
    for item_id, image_path in zip(ok.item_id, ok.image_path, strict=True):
        target = to / f"{item_id}.jpg"
        if not target.exists():
            thumb = _thumbnail(results.path / image_path, THUMB)
            if thumb is None:
                continue
            buffer = io.BytesIO()
            thumb.save(buffer, "JPEG", quality=80)
            write_atomic(target, buffer.getvalue())
        paths[item_id] = f"thumbs/{item_id}.jpg"
    return paths


def _json_value(value: Any) -> Any:
    """A cell as plain JSON: missing values as None, numpy scalars as Python numbers."""
    if isinstance(value, (list, dict)):
        return value
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _records(results: RunResults, thumbs: dict[str, str]) -> tuple[list[dict], list[str]]:
    shown = [c for c in ["item_id", *api_spec.PARAMETERS, *meta_columns(results.items)] if c in results.items.columns]
    extra = ["status", "attempts", "http_status", "error", "latency_s", "cost_usd", "seed_value", "image_path"]
    records = []
    for row in results.items[shown + extra].itertuples(index=False):
        record = {k: _json_value(v) for k, v in zip(shown + extra, row, strict=True)}
        record["thumb"] = thumbs.get(record["item_id"])
        records.append(record)
    return records, shown


def _table_html(frame: pd.DataFrame, caption: str) -> str:
    if frame.empty:
        return f"<h3>{html.escape(caption)}</h3><p class=muted>none</p>"
    return f"<h3>{html.escape(caption)}</h3>" + frame.to_html(index=False, border=0, classes="summary", na_rep="—")


def html_report(results: RunResults, to: Path, sheets: list[Path]) -> Path:
    thumbs = _thumbs(results, to / "thumbs")
    records, columns = _records(results, thumbs)
    filters = [c for c in ["status", *results.axes] if results.items[c].nunique(dropna=True) <= 200]
    data = json.dumps({"items": records, "columns": columns, "filters": filters}, ensure_ascii=False, default=str)
    data = data.replace("</", "<\\/")  # nothing in the data can close the <script> it sits in
    totals = {m: v for m, v in zip(results.totals.metric, results.totals.value, strict=True)}
    spend = float(totals.get("spend_usd") or 0)
    sheet_tags = "\n".join(
        f'<figure><a href="sheets/{p.name}"><img src="sheets/{p.name}" alt="{html.escape(p.stem)}" '
        f'loading="lazy"></a><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in sheets
    )
    page = _TEMPLATE.format(
        title=html.escape(results.path.name),
        items=int(totals["items"]),
        succeeded=int(totals["succeeded"]),
        failed=int(totals["failed"]),
        pending=int(totals["pending"]) + int(totals["sent"]),
        spend=f"${spend:,.2f}",
        p50=totals.get("latency_p50_s") if totals.get("latency_p50_s") is not None else "—",
        p95=totals.get("latency_p95_s") if totals.get("latency_p95_s") is not None else "—",
        retries=int(totals["retries"]),
        limited=int(totals["rate_limited_429s"]),
        status_table=_table_html(results.by_status, "Items by status"),
        spend_table=_table_html(results.spend_by_axis, "Spend per axis value"),
        latency_table=_table_html(results.latency, "Latency of successful requests (seconds)"),
        failure_table=_table_html(results.failures, "Failure reasons"),
        sheets=sheet_tags or "<p class=muted>no contact sheets</p>",
        data=data,
    )
    index = to / "index.html"
    write_atomic(index, page.encode("utf-8"))
    return index


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · batch-runner report</title>
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafaf8; }}
h1 {{ margin: 0 0 4px; }} .muted {{ color: #777; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 16px; min-width: 110px; }}
.card b {{ display: block; font-size: 22px; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 4px 8px; border-bottom: 1px solid #e4e4e4; text-align: left;
  vertical-align: top; }}
table.summary {{ margin-bottom: 16px; }} details {{ margin: 16px 0; }}
.sheets figure {{ display: inline-block; margin: 0 12px 12px 0; }}
.sheets img {{ max-width: 480px; border: 1px solid #ccc; }}
#filters select, #filters input {{ margin: 0 12px 8px 4px; }}
#items img {{ width: 96px; height: 96px; object-fit: contain; background: #eee; }}
tr.failed td {{ background: #fde4e2; }} tr.pending td, tr.sent td {{ background: #ececf4; }}
.params {{ font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; max-width: 560px; }}
</style></head>
<body>
<h1>{title}</h1><p class="muted">batch-runner report</p>
<div class="cards">
  <div class="card">items<b>{items}</b></div><div class="card">succeeded<b>{succeeded}</b></div>
  <div class="card">failed<b>{failed}</b></div><div class="card">pending<b>{pending}</b></div>
  <div class="card">spent<b>{spend}</b></div><div class="card">latency p50 / p95<b>{p50} / {p95} s</b></div>
  <div class="card">retries<b>{retries}</b></div><div class="card">429s<b>{limited}</b></div>
</div>
<details open><summary><b>Summary</b></summary>
{status_table}{spend_table}{latency_table}{failure_table}
</details>
<details open><summary><b>Contact sheets</b></summary><div class="sheets">{sheets}</div></details>
<h2>Items</h2>
<div id="filters"></div>
<p id="count" class="muted"></p>
<table id="items"><thead><tr><th>image</th><th>status</th><th>parameters</th><th>cost</th><th>latency</th>
</tr></thead><tbody></tbody></table>
<script id="report-data" type="application/json">{data}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const LIMIT = 500;
const filters = {{}};
const box = document.getElementById("filters");
for (const column of DATA.filters) {{
  const values = [...new Set(DATA.items.map(i => i[column] == null ? "(none)" : String(i[column])))].sort();
  const label = document.createElement("label");
  label.textContent = column;
  const select = document.createElement("select");
  select.dataset.column = column;
  select.innerHTML = '<option value="">all</option>' + values.map(v => {{
    const o = document.createElement("option"); o.value = v; o.textContent = v; return o.outerHTML; }}).join("");
  select.addEventListener("change", () => {{ filters[column] = select.value; render(); }});
  label.appendChild(select);
  box.appendChild(label);
}}
const search = document.createElement("input");
search.type = "search"; search.placeholder = "search prompts"; search.id = "search";
search.addEventListener("input", render);
box.appendChild(search);

function cell(text) {{ const td = document.createElement("td"); td.textContent = text; return td; }}

function render() {{
  const needle = search.value.toLowerCase();
  const rows = DATA.items.filter(item => Object.entries(filters).every(([c, v]) =>
      !v || (item[c] == null ? "(none)" : String(item[c])) === v)
    && (!needle || String(item.prompt || "").toLowerCase().includes(needle)));
  const body = document.querySelector("#items tbody");
  body.replaceChildren();
  for (const item of rows.slice(0, LIMIT)) {{
    const tr = document.createElement("tr");
    tr.className = item.status;
    const imageCell = document.createElement("td");
    if (item.thumb) {{
      const a = document.createElement("a"); a.href = "../" + item.image_path;
      const img = document.createElement("img"); img.src = item.thumb; img.loading = "lazy"; img.alt = item.item_id;
      a.appendChild(img); imageCell.appendChild(a);
    }}
    tr.appendChild(imageCell);
    tr.appendChild(cell(item.status + (item.error ? ": " + item.error : "") +
      (item.attempts > 1 ? " (" + item.attempts + " attempts)" : "")));
    const params = {{}};
    for (const c of DATA.columns) if (item[c] != null) params[c] = item[c];
    const p = cell(JSON.stringify(params, null, 1)); p.className = "params"; tr.appendChild(p);
    tr.appendChild(cell(item.cost_usd == null ? "" : "$" + Number(item.cost_usd).toFixed(3)));
    tr.appendChild(cell(item.latency_s == null ? "" : Number(item.latency_s).toFixed(2) + " s"));
    body.appendChild(tr);
  }}
  document.getElementById("count").textContent =
    `showing ${{Math.min(rows.length, LIMIT)}} of ${{rows.length}} matching items (${{DATA.items.length}} in all)`;
}}
render();
</script>
</body></html>
"""


def write_csv(results: RunResults, to: Path) -> list[Path]:
    """The summaries as CSV files, for spreadsheets."""
    to.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in results.tables().items():
        path = to / f"{name}.csv"
        write_atomic(path, frame.to_csv(index=False).encode("utf-8"))
        written.append(path)
    return written
