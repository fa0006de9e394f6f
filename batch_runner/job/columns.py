"""Metadata column names: one that clashes with the tool's own columns is renamed meta_<name>."""

from __future__ import annotations

from collections.abc import Iterable

from batch_runner.api import spec as api_spec
from batch_runner.job.items import OUTPUT_COLUMNS


def clash_reason(column: str) -> str | None:
    """Why a metadata column cannot keep its name, or None when it can."""
    lowered = column.lower()
    if lowered in api_spec.PARAMETERS:
        return "clashes with an API parameter"
    if lowered in OUTPUT_COLUMNS:
        return "clashes with an output column"
    return None


def column_renames(columns: Iterable[str]) -> dict[str, str]:
    """Metadata columns that would clash with the tool's columns, renamed meta_<name>.

    Compared ignoring case, and again after renaming: with both 'status' and 'meta_status'
    columns, 'status' becomes 'meta_meta_status'.
    """
    names = list(dict.fromkeys(columns))
    taken = {n.lower() for n in names}
    renames: dict[str, str] = {}
    for name in names:
        if clash_reason(name) is None:
            continue
        new = f"meta_{name}"
        while new.lower() in taken or clash_reason(new):
            new = f"meta_{new}"
        taken.add(new.lower())
        renames[name] = new
    return renames
