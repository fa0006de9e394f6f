"""Seeds as a manifest writes them: one number, a range "100-199" (in YAML or in a CSV cell), or
{random: N, base: S}, a reproducible sample of N distinct seeds."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.job.yaml_lines import line_of

SEED_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_SEED_COUNT = api_spec.SEED_MAX - api_spec.SEED_MIN + 1

# Where a problem goes: (line, message), as the manifest reader collects them.
Report = Callable[[int | None, str], None]


def to_int(digits: str) -> int | str:
    """Digits as an int; text that is too long to convert stays text, which validation refuses."""
    try:
        return int(digits)
    except ValueError:
        return digits


def seed_range(text: str) -> range | str | None:
    """The seeds "low-high" stands for, a message saying why it cannot, or None when text is not
    written as a range at all."""
    match = SEED_RANGE.fullmatch(text)
    if match is None:
        return None
    low, high = to_int(match[1]), to_int(match[2])
    if isinstance(low, int) and isinstance(high, int) and low > high:
        return f"seed range {text!r} runs backwards; write {high}-{low}"
    for end in (low, high):
        if problem := api_spec.check_seed(end):
            return problem
    assert isinstance(low, int) and isinstance(high, int)  # check_seed refuses anything else
    return range(low, high + 1)


def seed_axis(raw: Any, line: int | None, report: Report) -> list[int]:
    """A YAML seed axis: a number, a range, a list of both, or {random: N, base: S}."""
    if isinstance(raw, dict):
        return _random_seeds(raw, line, report)
    items = raw if isinstance(raw, list) else [raw]
    found: list[int] = []
    for i, item in enumerate(items):
        item_line = line_of(raw, i, line) if isinstance(raw, list) else line
        if isinstance(item, str) and (span := seed_range(item)) is not None:
            if isinstance(span, str):
                report(item_line, span)
                continue
            if len(found) + len(span) > _SEED_COUNT:
                report(
                    item_line,
                    f"the seeds add up to more than {_SEED_COUNT:,}, the number of distinct seeds; "
                    "remove the overlapping ranges",
                )
                return []
            found.extend(span)
            continue
        if problem := api_spec.check_seed(item):
            fix = " or a range such as '100-199'" if isinstance(item, str) else ""
            report(item_line, problem + fix)
            continue
        found.append(item)
    return found


def _random_seeds(spec: dict, line: int | None, report: Report) -> list[int]:
    if set(spec) - {"random", "base"}:
        report(line, "random seeds are written {random: N, base: S}")
        return []
    count, base = spec.get("random"), spec.get("base", 0)
    span = api_spec.SAFE_SEED_MAX - api_spec.SEED_MIN + 1
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= span:
        report(line, f"random: {count!r} must be a whole number from 1 to {span}")
        return []
    if isinstance(base, bool) or not isinstance(base, int):
        report(line, f"base: {base!r} must be a whole number (it makes the seeds reproducible)")
        return []
    return random.Random(base).sample(range(api_spec.SEED_MIN, api_spec.SAFE_SEED_MAX + 1), count)
