"""Look rather than read: contact sheets (PNG) and a static HTML report of a run.

Sheets are labelled grids of thumbnails, ROWS × COLS, one set per value of the GROUP axes,
paged so each stays readable; a cell holding several items shows them all (small multiples),
and a page with nothing finished on it is not drawn. Thumbnails are made once, in parallel,
and reused by later reports and by the sheets. The HTML page itself (a live grid, lightbox,
filters, picks and run comparison) is batch_runner/results/viewer.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import textwrap
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

from batch_runner.api import spec as api_spec
from batch_runner.errors import OptionError
from batch_runner.fonts import drawable, font
from batch_runner.results.summaries import FAILED, FINISHED, SUCCEEDED, RunResults
from batch_runner.store.output_dir import _replace_durably, fsync_dir, write_atomic

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
    for name, value in (("rows", rows), ("cols", cols), *(("group", g) for g in group or [])):
        if value is not None and value not in columns:
            usable = ", ".join(sorted(c for c in columns if c in results.axes or c in api_spec.PARAMETERS))
            raise OptionError(name, f"{value!r} is not a column of this run; use one of: {usable}")
    varying = results.axes
    zipped = {a: group for group in zipped_axes(results.items, varying) for a in group}
    if rows is None:
        rows = "prompt" if "prompt" in varying or not varying else varying[0]
    if cols is None:  # not a parameter zipped with the rows: that would fill only the diagonal
        others = [a for a in varying if a != rows and rows not in zipped.get(a, ())]
        cols = "style_type" if "style_type" in others else (others[0] if others else None)
    if group is None:
        # Metadata (a prompt's Category, a template's vars) rides along with the prompt, so
        # only request parameters count as the remaining axes; --group can name metadata.
        # An axis that decides the rows or columns (prompt decides Category) belongs inside
        # the cells: grouping by it would give one sheet per prompt.
        # So does a parameter zipped with one of them (prompt with negative_prompt).
        items = results.items
        shown = {rows, cols} - {None}
        group = [
            a
            for a in varying
            if a in api_spec.PARAMETERS
            and a not in shown
            and not any(_determines(items, a, s) for s in shown if s is not None)
            and not shown & set(zipped.get(a, ()))
        ]
    return Layout(rows, cols, list(group))


def zipped_axes(items: pd.DataFrame, axes: list[str]) -> list[list[str]]:
    """Request parameters that advance together (a manifest's zip: each value of one comes with a
    single value of the other, both ways): as two axes they fill only the grid's diagonal."""
    params = [a for a in axes if a in api_spec.PARAMETERS and a in items.columns]
    keys = {a: items[a].astype("string").fillna("\u2205") for a in params}
    groups: list[list[str]] = []
    for axis in params:
        for group in groups:
            lead = group[0]
            pairs = pd.DataFrame({"a": keys[lead], "b": keys[axis]}).drop_duplicates()
            if len(pairs) == pairs.a.nunique() == pairs.b.nunique():
                group.append(axis)
                break
        else:
            groups.append([axis])
    return [g for g in groups if len(g) > 1]


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


def palette_members(value: Any) -> list[tuple[str, float | None]] | None:
    """A custom palette's (colour, weight) pairs, or None for a preset or anything else."""
    if not isinstance(value, str) or not value.startswith("{"):
        return None
    try:
        palette = json.loads(value)
    except ValueError:
        return None
    members = palette.get("members") if isinstance(palette, dict) else None
    if not isinstance(members, list):
        return None
    return [(str(m.get("color_hex")), m.get("color_weight")) for m in members if isinstance(m, dict)]


def palette_label(value: Any) -> str:
    """A palette as people say it: the preset's name, or "#1B3A4B 60% + #F2E8CF" (not raw JSON)."""
    members = palette_members(value)
    if members is not None:
        return " + ".join(h.upper() + (f" {w * 100:g}%" if isinstance(w, (int, float)) else "") for h, w in members)
    if isinstance(value, str) and value.startswith("{"):
        try:
            palette = json.loads(value)
        except ValueError:
            return value
        if isinstance(palette, dict) and isinstance(palette.get("name"), str):
            return palette["name"]
    return _label(value)


def display(column: str, value: Any) -> str:
    """A cell's value as a label on a sheet or in the viewer."""
    return palette_label(value) if column == "color_palette" else _label(value)


def _slug(values: Sequence[Any]) -> str:
    text = "-".join(_label(v) for v in values) or "all"
    short = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "x"
    return f"{short}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _thumbnail(path: Path, size: int) -> Image.Image | None:
    try:
        with Image.open(path) as source:
            source.draft("RGB", (size, size))
            image = source.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.BILINEAR)
        return image
    except OSError:
        return None


def _wrap(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width_px: int, font, fill, max_lines: int) -> None:
    chars = max(8, int(width_px / (font.size * 0.6)))
    text = drawable(text)
    lines = textwrap.wrap(text, chars)[:max_lines] or [""]
    if len(textwrap.wrap(text, chars)) > max_lines:
        lines[-1] = lines[-1][: max(0, chars - 1)] + "…"
    x, y = xy
    for line in lines:
        draw.text((x, y), line, font=font, fill=fill)
        y += int(font.size * 1.25)


def _draw_item(sheet: Image.Image, draw: ImageDraw.ImageDraw, box: tuple[int, int, int], row: pd.Series, images):
    """One item in a square of side size at (x, y): its thumbnail, or its status (a failure in red
    with the server's reason)."""
    x, y, size = box
    small = font(13 if size >= 120 else 10)
    status, error = row["status"], row.get("error")
    if status == SUCCEEDED and isinstance(row.get("image_path"), str):
        thumb = images(row)
        if thumb is not None:
            if max(thumb.size) > size:
                thumb = thumb.copy()
                thumb.thumbnail((size, size), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (x + (size - thumb.width) // 2, y + (size - thumb.height) // 2))
            return
        status, error = FAILED, "image file missing or unreadable"
    if status == FAILED:
        draw.rectangle((x, y, x + size, y + size), fill=_FAILED_BG, outline=_FAILED_INK, width=2)
        draw.text((x + 6, y + 6), "FAILED", font=font(16 if size >= 120 else 11), fill=_FAILED_INK)
        if size >= 60:
            lines = max(1, (size - 40) // 16)
            _wrap(draw, (x + 6, y + 28), _label(error), size - 12, small, _FAILED_INK, lines)
        return
    draw.rectangle((x, y, x + size, y + size), fill=(232, 232, 240))
    draw.text((x + 6, y + 6), str(status).upper(), font=font(16 if size >= 120 else 11), fill=_MUTED)


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, box: tuple[int, int], rows: list[pd.Series], images):
    """A cell: one item fills it; several are drawn as small multiples (up to 3 × 3, then "+N more")."""
    x, y = box
    if not rows:
        draw.rectangle((x, y, x + CELL, y + CELL), fill=(238, 238, 236))
        draw.text((x + CELL // 2 - 4, y + CELL // 2 - 8), "—", font=font(13), fill=_MUTED)
        return
    side = 1 if len(rows) == 1 else 2 if len(rows) <= 4 else 3
    gap = 4 if side > 1 else 0
    size = (CELL - gap * (side - 1)) // side
    shown = rows[: side * side]
    for i, row in enumerate(shown):
        r, c = divmod(i, side)
        _draw_item(sheet, draw, (x + c * (size + gap), y + r * (size + gap), size), row, images)
    more = len(rows) - len(shown)
    if more > 0:
        badge = f"+{more} more"
        draw.rectangle((x, y + CELL - 22, x + 12 + 8 * len(badge), y + CELL), fill=(30, 30, 30))
        draw.text((x + 6, y + CELL - 19), badge, font=font(13), fill=(255, 255, 255))


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def make_thumbs(results: RunResults, to: Path) -> dict[str, str]:
    """Small JPEG thumbnails (THUMB px) of the succeeded items, as paths relative to to.parent.

    Incremental: a thumbnail newer than its image is kept, so a later report only decodes the
    images that are new (or were made again). The new ones are made in parallel processes (a JPEG is
    decoded straight at reduced size)."""
    to.mkdir(parents=True, exist_ok=True)
    prefix = to.relative_to(to.parent).as_posix()
    items = results.items
    ok = items[(items.status == SUCCEEDED) & items.image_path.notna()]
    have = {entry.name: entry.stat().st_mtime for entry in os.scandir(to) if entry.name.endswith(".jpg")}
    paths: dict[str, str] = {}
    todo: list[tuple[str, Path, Path]] = []
    for item_id, image_path in zip(ok.item_id, ok.image_path, strict=True):
        source, name = results.path / image_path, f"{item_id}.jpg"
        made = have.get(name)
        if made is not None:
            try:
                fresh = made >= source.stat().st_mtime
            except OSError:  # the image is gone; its thumbnail is all that is left
                fresh = True
            if fresh:
                paths[item_id] = f"{prefix}/{name}"
                continue
        todo.append((item_id, source, to / name))

    if len(todo) < 64:
        done = map(_make_thumb, todo)
        for item_id in done:
            if item_id is not None:
                paths[item_id] = f"{prefix}/{item_id}.jpg"
    else:  # decoding is CPU work: one process a core
        with ProcessPoolExecutor(_workers()) as pool:
            for item_id in pool.map(_make_thumb, todo, chunksize=64):
                if item_id is not None:
                    paths[item_id] = f"{prefix}/{item_id}.jpg"
    if todo:
        fsync_dir(to)  # the thumbnails' renames, durable at once
    return paths


def _make_thumb(job: tuple[str, Path, Path]) -> str | None:
    item_id, source, target = job
    thumb = _thumbnail(source, THUMB)
    if thumb is None:
        return None
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=80)
    # Durable like every other file: a thumbnail newer than its image is never made again, so
    # one left empty by a power cut would stay broken.
    _replace_durably(target, buffer.getvalue())
    return item_id


def _image_loader(root: Path, thumbs: Path | None):
    """row -> a small RGB image for a sheet cell: the report's thumbnail when there is one."""

    def load(row) -> Image.Image | None:
        if thumbs is not None:
            made = thumbs / f"{row['item_id']}.jpg"
            if made.exists():
                image = _thumbnail(made, CELL)
                if image is not None:
                    return image
        return _thumbnail(root / row["image_path"], CELL)

    return load


def contact_sheets(results: RunResults, to: Path, layout: Layout, thumbs: Path | None = None) -> list[Path]:
    """Write the sheets as PNG files; returns their paths in order.

    A page with no finished item on it (all pending) is not drawn: it would show nothing."""
    to.mkdir(parents=True, exist_ok=True)
    index_path = to / ".sheets.json"  # each sheet's digest of what it shows: unchanged sheets are kept
    try:
        drawn: dict[str, str] = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        drawn = {}
    items = results.items
    images = _image_loader(results.path, thumbs)
    jobs: list[tuple[Path, str, list[str], list[str], dict]] = []
    groups = (
        items.groupby([items[g].astype("string").fillna("(none)") for g in layout.group], sort=False)
        if layout.group
        else [((), items)]
    )
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        if not frame.status.isin(FINISHED).any():
            continue
        row_labels = [display(layout.rows, v) for v in frame[layout.rows]]
        col_labels = [display(layout.cols, v) for v in frame[layout.cols]] if layout.cols else [""] * len(frame)
        cells: dict[tuple[str, str], list[pd.Series]] = {}
        for (_, item), r, c in zip(frame.iterrows(), row_labels, col_labels, strict=True):
            cells.setdefault((r, c), []).append(item)
        row_values, col_values = list(dict.fromkeys(row_labels)), list(dict.fromkeys(col_labels))
        pages = [
            (row_values[r : r + MAX_ROWS], col_values[c : c + MAX_COLS])
            for r in range(0, len(row_values), MAX_ROWS)
            for c in range(0, len(col_values), MAX_COLS)
        ]
        title_group = ", ".join(f"{g}={display(g, v)}" for g, v in zip(layout.group, key, strict=True)) or "all items"
        for number, (page_rows, page_cols) in enumerate(pages, start=1):
            page_cells = {(r, c): cells.get((r, c), []) for r in page_rows for c in page_cols}
            if not any(item["status"] in FINISHED for cell in page_cells.values() for item in cell):
                continue
            title = f"{results.path.name}: {layout.rows} × {layout.cols or '-'} · {title_group}"
            if len(pages) > 1:
                title += f" · page {number}/{len(pages)}"
            jobs.append((to / f"sheet-{_slug(key)}-p{number:02d}.png", title, page_rows, page_cols, page_cells))

    def digest(job) -> str:
        _, title, page_rows, page_cols, page_cells = job
        shown = [title, page_rows, page_cols]
        for cell in page_cells.values():
            shown.append(
                [[str(i["item_id"]), str(i["status"]), str(i.get("error")), str(i.get("image_path"))] for i in cell]
            )
        return hashlib.sha1(json.dumps(shown, default=str).encode()).hexdigest()

    def draw(job) -> tuple[Path, str]:
        path, title, page_rows, page_cols, page_cells = job
        signature = digest(job)
        if drawn.get(path.name) == signature and path.exists():
            return path, signature
        image = _render_page(title, page_rows, page_cols, page_cells, images)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)
        _replace_durably(path, buffer.getvalue())  # the folder's fsync is the index's, below
        return path, signature

    with ThreadPoolExecutor(_workers()) as pool:
        done = list(pool.map(draw, jobs))
    keep = {path.name for path, _ in done}
    for stale in to.glob("sheet-*.png"):  # a new layout replaces the last report's sheets
        if stale.name not in keep:
            stale.unlink()
    write_atomic(index_path, json.dumps({path.name: signature for path, signature in done}).encode())
    return [path for path, _ in done]


def _render_page(title: str, rows: list[str], cols: list[str], cells: dict, images) -> Image.Image:
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
            _draw_cell(sheet, draw, (LABEL_W + c * (CELL + PAD), y), cells.get((row_value, col), []), images)
    return sheet


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """frame with every text cell that a spreadsheet would run as a formula (=, +, -, @, tab or CR
    first) prefixed with a single quote, as OWASP advises against CSV injection; numbers stay."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(
                lambda v: f"'{v}" if isinstance(v, str) and v.startswith(_FORMULA_START) else v
            )
    return safe


def write_csv(results: RunResults, to: Path, extra: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """The summaries (and extra tables, such as the verdict) as CSV files, for spreadsheets."""
    to.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in {**results.tables(), **(extra or {})}.items():
        path = to / f"{name}.csv"
        write_atomic(path, csv_safe(frame).to_csv(index=False).encode("utf-8"))
        written.append(path)
    return written
