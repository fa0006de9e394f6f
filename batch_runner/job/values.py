"""Values read as text (a CSV cell, a line of a value file), and value files: a YAML axis may
take its values from {file: prompts.txt} (one a line) or a CSV/TSV column, whose other columns
ride along as metadata."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batch_runner.errors import ManifestError, Problem
from batch_runner.job.files import display, file_problem, read_text
from batch_runner.job.reader import Reader
from batch_runner.job.seeds import to_int
from batch_runner.job.tables import lines, read_table


def coerce(name: str, raw: str) -> Any:
    """A value read as text from a CSV cell or a value file, typed for the API."""
    if name == "seed":
        text = raw.strip()
        return to_int(text) if re.fullmatch(r"[+-]?\d+", text) else raw
    if name == "color_palette":
        text = raw.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except (ValueError, RecursionError):  # not JSON, a number too long, nested too deep
                return raw
        return text
    return raw


def file_values(
    reader: Reader, ref: dict, line: int | None, key: str
) -> Iterator[tuple[Any, dict, int | None, str | None]]:
    """(value, metadata, line, file) for each value of a {file: ..., column: ..., limit: ...}
    reference written on the manifest's line; problems go to reader."""
    extra = set(ref) - {"file", "column", "limit"}
    if extra:
        reader.problem(
            line, f"unknown key(s) {sorted(map(str, extra))} in a file reference; use file:, column:, limit:"
        )
    limit = ref.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        reader.problem(line, f"limit {limit!r} must be a whole number ≥ 1")
        return
    file_name = ref["file"]
    if not isinstance(file_name, str):
        reader.problem(line, "file: must be a path relative to the manifest")
        return
    target = reader.path.parent / file_name
    shown = display(target)
    if problem := file_problem(target, "a CSV, TSV or text file"):
        if problem.startswith("no such file"):
            problem = f"not found (looked for {shown}); check the path, which is relative to the manifest"
        reader.problem(line, f"referenced file {file_name!r} {problem}")
        return
    try:
        text = read_text(target, shown)
        rows = _value_rows(target, shown, text, ref.get("column"), key)
    except ManifestError as exc:
        reader.problems.extend(exc.problems)
        return
    if isinstance(rows, str):
        reader.problem(line, rows)
        return
    for n, (file_line, value, meta) in enumerate(rows):
        if limit is not None and n >= limit:
            break
        yield coerce(key, value), meta, file_line, shown


def _value_rows(path: Path, shown: str, text: str, column: Any, key: str) -> list[tuple[int, str, dict]] | str:
    """(line, value, other columns) for each row of a value file, or a message for the manifest's line.

    Problems inside the file itself raise ManifestError naming the file and its line.
    """
    if path.suffix.lower() not in (".csv", ".tsv"):
        if column is not None:
            return f"column: only applies to CSV/TSV files; {path.name} is read one value per line"
        return [(n, line, {}) for n, line in enumerate(lines(text), start=1) if line.strip()]
    table = read_table(path, shown, text)
    if table is None:
        return f"{path.name} is empty; it needs a header row"
    names = table.names
    if header_problems := table.header_problems():
        raise ManifestError(header_problems)
    if column is None:
        matches = [i for i, h in enumerate(names) if h.lower() == key]
        if not matches:
            return f"say which column of {path.name} to use, e.g. column: {names[0]!r} (columns: {', '.join(names)})"
        index = matches[0]
    elif column in names:
        index = names.index(column)
    else:
        lowered = [h.lower() for h in names]
        if str(column).lower() in lowered:
            index = lowered.index(str(column).lower())
        else:
            return f"{path.name} has no column {column!r}; its columns are {', '.join(names)}"
    rows = []
    problems: list[Problem] = []
    for line, cells in table.full_rows(problems):
        meta = {name: cells[i] for i, name in enumerate(names) if i != index and name}
        rows.append((line, cells[index], meta))
    if problems:
        raise ManifestError(problems)
    return rows
