"""The picks a person made in the viewer, back on the command line.

The viewer downloads picks.json ({"report": ..., "picked": [{"item_id", "rating", ...}, ...]}) or
picks.csv (an item_id column, a rating column); the report's verdict counts them and an export can
be limited to them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from batch_runner.errors import UsageError


@dataclass
class Picks:
    path: Path
    ids: set[str] = field(default_factory=set)  # the picked items (a file may list rated ones not picked)
    ratings: dict[str, int] = field(default_factory=dict)  # item_id -> 1..5, where rated
    unknown: int = 0  # item ids not in this run (another run's, in a --compare report)


def _rating(value: object, where: str) -> int | None:
    if value in (None, "", 0, "0"):
        return None
    try:
        rating = int(str(value))
    except ValueError:
        rating = -1
    if not 1 <= rating <= 5:
        raise UsageError(f"{where}: rating {value!r} is not 1 to 5; fix it or leave it empty")
    return rating


def read_picks(path: str | Path, item_ids: set[str]) -> Picks:
    """The picks file the viewer downloaded, as item_id -> rating, for the items of this run."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file (download it with the viewer's JSON or CSV button)")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source}: cannot read it ({exc})")
    rows: list[tuple[str, object, object, str]] = []
    if source.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "item_id" not in (reader.fieldnames or []):
            raise UsageError(f"{source}: line 1 has no item_id column; use the viewer's picks.csv")
        for line, record in enumerate(reader, start=2):
            where = f"{source}, line {line}"
            rows.append((record.get("item_id") or "", record.get("picked"), record.get("rating"), where))
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{source}: not JSON ({exc}); use the viewer's picks.json (or a .csv)")
        picked = data.get("picked") if isinstance(data, dict) else None
        if not isinstance(picked, list):
            raise UsageError(f'{source}: no "picked" list; use the viewer\'s picks.json')
        for n, record in enumerate(picked, start=1):
            if not isinstance(record, dict):
                raise UsageError(f"{source}: pick {n} is not an object with an item_id")
            where = f"{source}, pick {n}"
            rows.append((str(record.get("item_id") or ""), record.get("picked"), record.get("rating"), where))
    picks = Picks(source)
    for item_id, picked, rating, where in rows:
        if not item_id:
            raise UsageError(f"{where}: no item_id")
        if item_id.startswith("B:") or item_id not in item_ids:
            picks.unknown += 1
            continue
        if picked not in (False, "false", "False"):  # a file without the column lists picks only
            picks.ids.add(item_id)
        stars = _rating(rating, where)
        if stars is not None:
            picks.ratings[item_id] = stars
    return picks
