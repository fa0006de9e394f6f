"""A CSV/TSV manifest: a header naming API parameters (other columns are metadata), one row per
block of items; a cell may list values split by '|' and a seed cell may hold a range."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError, Problem
from batch_runner.job.blocks import MAX_ITEMS, Axis, Block, Job, Point
from batch_runner.job.columns import column_renames
from batch_runner.job.reader import Reader
from batch_runner.job.seeds import seed_range
from batch_runner.job.tables import read_table
from batch_runner.job.values import coerce
from batch_runner.job.yaml_manifest import NAME
from batch_runner.settings import RunSettings

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_AXIS_SAMPLE_CAP = 10_000


class CsvManifest(Reader):
    """A CSV/TSV file whose header names API parameters: one row, one block of items."""

    def __init__(self, path: Path, shown: str, text: str):
        super().__init__(path, shown)
        self.text = text
        self.full = False  # the rows reached MAX_ITEMS: stop reading

    def job(self) -> Job:
        table = read_table(self.path, self.shown, self.text)
        if table is None:
            raise ManifestError(
                [Problem(self.shown, 1, "the file is empty; it needs a header row naming API parameters")]
            )
        names = table.names
        self.problems.extend(table.header_problems())
        params: dict[int, str] = {}
        meta: dict[int, str] = {}
        for i, name in enumerate(names):
            lowered = name.lower()
            if lowered in api_spec.PARAMETERS:
                params[i] = lowered
            elif name:
                meta[i] = name
        if "prompt" not in params.values():
            hint = api_spec.suggest(names[0] if names else "", api_spec.PARAMETERS)
            self.problem(
                1,
                "the header has no prompt column; name one column 'prompt'"
                + (f" (is {names[0]!r} meant to be {hint}?)" if hint and names else ""),
            )
            self.raise_if_problems()
        renames = column_renames(meta.values())
        meta = {i: renames.get(name, name) for i, name in meta.items()}

        blocks: list[Block] = []
        axis_values: dict[str, dict[Any, None]] = {p: {} for p in params.values()}
        capped: set[str] = set()
        total = 0
        try:
            for line, cells in table.full_rows(self.problems):
                block = self._row_block(line, cells, params, meta, total)
                if self.full:
                    break
                if block is None:
                    continue
                blocks.append(block)
                total += block.size()
                for dim in block.dims:
                    for point in dim:
                        for key, value in point.params.items():
                            self._tally(axis_values, capped, key, value)
                for key, value in block.base.items():
                    self._tally(axis_values, capped, key, value)
        except ManifestError as exc:
            self.problems.extend(exc.problems)
        if not blocks and not self.problems:
            self.problem(None, "the file has a header but no rows; add one row per item")
        self.raise_if_problems()

        param_columns = [p for p in api_spec.PARAMETERS if p in params.values()]
        axes = [
            Axis(name=p, count=len(axis_values[p]), sample=list(axis_values[p])[:6], capped=p in capped)
            for p in param_columns
        ]
        return Job(
            name=self.path.stem if NAME.fullmatch(self.path.stem) else "job",
            source=self.path,
            settings=RunSettings(),
            param_columns=param_columns,
            meta_columns=list(meta.values()),
            axes=axes,
            blocks=blocks,
            renamed=renames,
        )

    @staticmethod
    def _tally(seen: dict[str, dict[Any, None]], capped: set[str], key: str, value: Any) -> None:
        bucket = seen[key]
        if len(bucket) >= _AXIS_SAMPLE_CAP:
            capped.add(key)
            return
        bucket[json.dumps(value, sort_keys=True) if isinstance(value, dict) else value] = None

    def _row_block(
        self, line: int, cells: list[str], params: dict[int, str], meta: dict[int, str], total: int
    ) -> Block | None:
        """The row's items as a block, or None after reporting a problem; total is the items so far.

        cells has a cell for every column of the header."""
        before = len(self.problems)
        columns: list[tuple[str, list[Any]]] = []
        for i, key in params.items():
            cell = cells[i]
            if cell == "" or (key != "prompt" and not cell.strip()):
                if key == "prompt":
                    self.problem(line, "prompt is empty; give the text to generate, or delete the row")
                continue
            # A '|' splits the cell into this row's own grid, and '\|' is a literal '|'. Any other
            # backslash is kept as written.
            parts = _UNESCAPED_PIPE.split(cell) if "|" in cell else [cell]
            if len(parts) == 1:
                values = [cell.replace("\\|", "|")]
            else:
                values = [p.strip().replace("\\|", "|") for p in parts]
            checked: list[Any] = []  # seed ranges stay range objects until the row's size is known
            for value in values:
                if key == "seed" and (seeds := seed_range(value)) is not None:
                    if isinstance(seeds, str):
                        self.problem(line, seeds)
                    else:
                        checked.append(seeds)
                    continue
                checked.append(self.check_point(key, coerce(key, value), line))
            columns.append((key, checked))
        if len(self.problems) > before:
            return None
        counts = [(key, sum(len(v) if isinstance(v, range) else 1 for v in values)) for key, values in columns]
        size = math.prod(count for _, count in counts)
        if total + size > MAX_ITEMS:
            axes = " × ".join(f"{key} {count:,}" for key, count in counts if count > 1)
            self.problem(
                line,
                f"the rows up to this one expand to {total + size:,} items, more than the {MAX_ITEMS:,} one job "
                f"may have (this row: {size:,}{f' = {axes}' if axes else ''}); "
                "split the file into several jobs, or shorten its '|' lists and seed ranges",
            )
            self.full = True
            return None
        base: dict[str, Any] = {}
        dims: list[list[Point]] = []
        for key, values in columns:
            flat = [v for value in values for v in (value if isinstance(value, range) else (value,))]
            if len(flat) == 1:
                base[key] = flat[0]
            elif flat:
                dims.append([Point({key: v}, {}) for v in flat])
        row_meta = {name: cells[i] for i, name in meta.items()}
        return Block(base=base, dims=dims, where=self.shown, meta=row_meta)
