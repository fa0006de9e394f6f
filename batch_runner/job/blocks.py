"""A job as blocks that expand into items, lazily.

Every source of values becomes a *block*: base parameters plus a list of *dimensions*, each a
list of *points* (a fragment of request parameters and of metadata). A YAML grid axis, a zip
group and a `vars:` list are each one dimension; a CSV row is a block of its own. Points are
validated once, where they are written, so expanding a million items costs no validation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_runner.errors import ManifestError, Problem
from batch_runner.job.items import Item, make_item
from batch_runner.job.templates import Template
from batch_runner.settings import RunSettings

# One job may expand to at most this many items (before duplicates are dropped). Counted before
# anything is expanded, so a typo that makes a grid of 10^10 fails at once instead of running
# for hours; and 10 million items is already ~$630,000 at $0.063 an image.
MAX_ITEMS = 10_000_000


# Slots, and nothing a block does not need: a CSV manifest holds one block per row, a million of
# them for a million-row file.
@dataclass(slots=True)
class Point:
    params: dict[str, Any]
    meta: dict[str, Any]


@dataclass(slots=True)
class Block:
    base: dict[str, Any]
    dims: list[list[Point]]
    where: str  # the manifest, to blame a template that fills to nothing
    # Metadata columns renamed so they never clash with the tool's columns: applied after the
    # prompt template is filled, so templates use the names the user wrote.
    # (None rather than an empty dict: a million blocks need no million empty dicts.)
    renames: Mapping[str, str] | None = None
    meta: Mapping[str, Any] | None = None  # metadata every item of the block carries (a CSV row's columns)

    def size(self) -> int:
        n = 1
        for dim in self.dims:
            n *= len(dim)
        return n


@dataclass
class Axis:
    """One line of the plan's breakdown: a name, how many values, a few of them."""

    name: str
    count: int
    sample: list[Any] = field(default_factory=list)
    capped: bool = False


@dataclass
class Job:
    """A loaded manifest: its name, source, settings, and the items it expands into (iter_items())."""

    name: str
    source: Path
    settings: RunSettings
    param_columns: list[str]
    meta_columns: list[str]
    axes: list[Axis]
    # Iterated again each time the items are expanded: a list, or a CSV file's rows read afresh.
    blocks: Iterable[Block]
    # Metadata columns renamed because they clash with a request parameter or an output column.
    renamed: dict[str, str] = field(default_factory=dict)
    expanded: int | None = None  # the item count, when the blocks are not a list to count
    # For plan: how each header cell is used ((cell, use)), the rows a cell expanded, and notes
    # on how the file was read.
    column_use: list[tuple[str, str]] = field(default_factory=list)
    expansions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def expanded_count(self) -> int:
        """Items before duplicates are dropped, without expanding anything."""
        if self.expanded is not None:
            return self.expanded
        return sum(block.size() for block in self.blocks)

    def iter_items(self) -> Iterator[Item]:
        """Every item in order, duplicates included; see items.unique()."""
        for block in self.blocks:
            yield from _expand(block)


def _expand(block: Block) -> Iterator[Item]:
    base, renames, block_meta = block.base, block.renames, block.meta
    for combo in itertools.product(*block.dims):
        params = dict(base)
        meta: dict[str, Any] = dict(block_meta) if block_meta else {}
        for point in combo:
            params.update(point.params)
            meta.update(point.meta)
        prompt = params.get("prompt")
        if isinstance(prompt, Template):
            # Request parameters win over a value file's column of the same name.
            filled = prompt.fill({**meta, **params})
            if not filled.strip():
                message = f"template {prompt.text!r} fills to an empty prompt with {meta}; give those values text"
                raise ManifestError([Problem(block.where, prompt.line, message)])
            params["prompt"] = filled
        if renames:
            meta = {renames.get(k, k): v for k, v in meta.items()}
        yield make_item(params, meta)


def too_many_items(total: int, axes: Iterable[tuple[str, int]]) -> str:
    sizes = " × ".join(f"{name} {count:,}" for name, count in axes)
    return (
        f"the job expands to {total:,} items ({sizes}), more than the {MAX_ITEMS:,} one job may have; "
        "shrink an axis or split the job into several manifests"
    )
