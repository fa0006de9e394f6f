"""A CSV/TSV manifest: a header naming API parameters (other columns are metadata), one row per
block of items. A parameter cell other than a prompt may list values split by '|', and a seed
cell may hold a range; a prompt is sent exactly as written.

The file is read twice and never held as a list of rows: once to validate every row and count
the items (what `plan` shows), and again, row by row, whenever the items are expanded. A
million-row file costs what one row costs, as a YAML grid does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError, Problem
from batch_runner.job.blocks import MAX_ITEMS, Axis, Block, Job, Point
from batch_runner.job.columns import META_PREFIX, column_renames, near_miss_message, near_parameter, parameter_named
from batch_runner.job.files import read_text
from batch_runner.job.reader import Reader
from batch_runner.job.seeds import seed_range
from batch_runner.job.tables import Table, read_table
from batch_runner.job.values import coerce
from batch_runner.job.yaml_manifest import NAME
from batch_runner.settings import RunSettings

_AXIS_SAMPLE_CAP = 10_000
# Text a user pastes: never split at '|', never unescaped, sent exactly as written.
TEXT_PARAMETERS = ("prompt", "negative_prompt")
# plan lists this many of the rows whose cells expanded, then counts the rest.
SHOWN_EXPANSIONS = 10
_DELIMITER_NAMES = {";": "semicolon-separated", "\t": "tab-separated"}


@dataclass
class _Columns:
    """What each header cell is: an API parameter, or metadata (renamed when it clashes)."""

    params: dict[int, str] = field(default_factory=dict)
    meta: dict[int, str] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)
    use: list[tuple[str, str]] = field(default_factory=list)  # (header cell, how it is used), for plan


class CsvManifest(Reader):
    """A CSV/TSV file whose header names API parameters: one row, one block of items."""

    def __init__(self, path: Path, shown: str, text: str):
        super().__init__(path, shown)
        self.text = text

    def job(self) -> Job:
        table = self._table(self.text)
        columns = self._columns(table.names)
        self.raise_if_problems()

        rows = _RowReader(self, columns)
        axis_values: dict[str, dict[Any, None]] = {p: {} for p in columns.params.values()}
        capped: set[str] = set()
        total = 0
        blocks_seen = 0
        expansions: list[str] = []
        expanded_rows = 0
        try:
            for line, cells in table.full_rows(self.problems):
                block = rows.block(line, cells, total)
                if rows.full:
                    break
                if block is None:
                    continue
                blocks_seen += 1
                size = block.size()
                total += size
                if size > 1:
                    expanded_rows += 1
                    if len(expansions) < SHOWN_EXPANSIONS:
                        expansions.append(_expansion(line, block))
                for dim in block.dims:
                    for point in dim:
                        for key, value in point.params.items():
                            _tally(axis_values, capped, key, value)
                for key, value in block.base.items():
                    _tally(axis_values, capped, key, value)
        except ManifestError as exc:
            self.problems.extend(exc.problems)
        if not blocks_seen and not self.problems:
            self.problem(None, "the file has a header but no rows; add one row per item")
        self.raise_if_problems()

        param_columns = [p for p in api_spec.PARAMETERS if p in columns.params.values()]
        axes = [
            Axis(name=p, count=len(axis_values[p]), sample=list(axis_values[p])[:6], capped=p in capped)
            for p in param_columns
        ]
        notes = []
        if table.delimiter in _DELIMITER_NAMES and self.path.suffix.lower() != ".tsv":
            notes.append(f"read as {_DELIMITER_NAMES[table.delimiter]} (the header has more of them than commas)")
        if expanded_rows > len(expansions):
            expansions.append(f"… and {expanded_rows - len(expansions):,} more rows")
        return Job(
            name=self.path.stem if NAME.fullmatch(self.path.stem) else "job",
            source=self.path,
            settings=RunSettings(),
            param_columns=param_columns,
            meta_columns=list(columns.meta.values()),
            axes=axes,
            blocks=_CsvBlocks(self.path, self.shown, _digest(self.text), columns),
            renamed=columns.renames,
            expanded=total,
            column_use=columns.use,
            expansions=expansions,
            notes=notes,
        )

    def _table(self, text: str) -> Table:
        table = read_table(self.path, self.shown, text)
        if table is None:
            raise ManifestError(
                [Problem(self.shown, 1, "the file is empty; it needs a header row naming API parameters")]
            )
        self.problems.extend(table.header_problems())
        return table

    def _columns(self, names: list[str]) -> _Columns:
        """Each header cell as a parameter or metadata; a near-miss of a parameter is a problem."""
        columns = _Columns()
        meta_names: dict[int, str] = {}
        first_of: dict[str, str] = {}
        for i, name in enumerate(names):
            if not name:
                continue  # a nameless column: Table.full_rows reports it if a row fills it
            if parameter := parameter_named(name):
                if parameter in first_of:
                    self.problem(
                        1,
                        f"columns {first_of[parameter]!r} and {name!r} both name the API parameter {parameter}; "
                        "keep one, or rename the other meta_<name> to keep it as metadata",
                    )
                    continue
                first_of[parameter] = name
                columns.params[i] = parameter
                columns.use.append((name, parameter))
            elif meant := near_parameter(name):
                self.problem(1, near_miss_message(name, meant, f"column {i + 1}"))
            else:
                meta_names[i] = name
        if "prompt" not in columns.params.values() and not self.problems:
            self.problem(1, "the header has no prompt column; name one column 'prompt'")
        columns.renames = column_renames(meta_names.values())
        for i, name in meta_names.items():
            new = columns.renames.get(name, name)
            columns.meta[i] = new
            marked = " (marked meta_)" if name.lower().startswith(META_PREFIX) else ""
            columns.use.append((name, f"metadata{marked}" if new == name else f"metadata, renamed {new}"))
        return columns


class _RowReader:
    """One row's cells as a block of items, checked; problems go to the reader."""

    def __init__(self, reader: Reader, columns: _Columns):
        self.reader = reader
        self.columns = columns
        self.full = False  # the rows reached MAX_ITEMS: stop reading

    def block(self, line: int, cells: list[str], total: int) -> Block | None:
        """The row's items as a block, or None after reporting a problem; total is the items so far.

        cells has a cell for every column of the header."""
        reader = self.reader
        before = len(reader.problems)
        values_of: list[tuple[str, list[Any]]] = []
        for i, key in self.columns.params.items():
            cell = cells[i]
            if cell == "" or (key != "prompt" and not cell.strip()):
                if key == "prompt":
                    reader.problem(line, "prompt is empty; give the text to generate, or delete the row")
                continue
            if key in TEXT_PARAMETERS:
                values_of.append((key, [reader.check_point(key, cell, line)]))
                continue
            # In a parameter whose values are names and numbers, '|' lists this row's own grid.
            parts = [p.strip() for p in cell.split("|")] if "|" in cell else [cell]
            checked: list[Any] = []  # seed ranges stay range objects until the row's size is known
            for value in parts:
                if key == "seed" and (seeds := seed_range(value)) is not None:
                    if isinstance(seeds, str):
                        reader.problem(line, seeds)
                    else:
                        checked.append(seeds)
                    continue
                checked.append(reader.check_point(key, coerce(key, value), line))
            values_of.append((key, checked))
        if len(reader.problems) > before:
            return None
        counts = [(key, sum(len(v) if isinstance(v, range) else 1 for v in values)) for key, values in values_of]
        size = math.prod(count for _, count in counts)
        if total + size > MAX_ITEMS:
            axes = " × ".join(f"{key} {count:,}" for key, count in counts if count > 1)
            reader.problem(
                line,
                f"the rows up to this one expand to {total + size:,} items, more than the {MAX_ITEMS:,} one job "
                f"may have (this row: {size:,}{f' = {axes}' if axes else ''}); "
                "split the file into several jobs, or shorten its '|' lists and seed ranges",
            )
            self.full = True
            return None
        base: dict[str, Any] = {}
        dims: list[list[Point]] = []
        for key, values in values_of:
            flat = [v for value in values for v in (value if isinstance(value, range) else (value,))]
            if len(flat) == 1:
                base[key] = flat[0]
            elif flat:
                dims.append([Point({key: v}, {}) for v in flat])
        row_meta = {name: cells[i] for i, name in self.columns.meta.items()}
        return Block(base=base, dims=dims, where=reader.shown, meta=row_meta)


class _CsvBlocks:
    """The file's rows as blocks, read again from disk each time they are iterated.

    The first reading checked every row; a file changed since then would expand into items
    that `plan` never showed, so that is an error rather than a different job."""

    def __init__(self, path: Path, shown: str, digest: str, columns: _Columns):
        self.path = path
        self.shown = shown
        self.digest = digest
        self.columns = columns

    def __iter__(self) -> Iterator[Block]:
        text = read_text(self.path, self.shown)
        if _digest(text) != self.digest:
            raise ManifestError(
                [Problem(self.shown, None, "the file changed while the job was running; run the command again")]
            )
        reader = Reader(self.path, self.shown)
        table = read_table(self.path, self.shown, text)
        assert table is not None  # the same text had a header the first time
        rows = _RowReader(reader, self.columns)
        for line, cells in table.full_rows(reader.problems):
            block = rows.block(line, cells, 0)
            reader.raise_if_problems()
            if block is not None:
                yield block


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _tally(seen: dict[str, dict[Any, None]], capped: set[str], key: str, value: Any) -> None:
    bucket = seen[key]
    if len(bucket) >= _AXIS_SAMPLE_CAP:
        capped.add(key)
        return
    bucket[json.dumps(value, sort_keys=True) if isinstance(value, dict) else value] = None


def _expansion(line: int, block: Block) -> str:
    """'line 2: style_type × 2, seed × 3 = 6 items', for plan."""
    parts = [f"{next(iter(dim[0].params))} × {len(dim):,}" for dim in block.dims]
    return f"line {line}: {', '.join(parts)} = {block.size():,} items"
