"""What both manifest kinds share: the problems found so far, and checking one value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError, Problem


class Reader:
    """Collects every problem in a manifest (and the files it names) before giving up, so one
    run of `plan` lists them all."""

    def __init__(self, path: Path, shown: str):
        self.path = path
        self.shown = shown
        self.problems: list[Problem] = []

    def problem(self, line: int | None, message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.shown, line, message))

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ManifestError(self.problems)

    def check_point(self, name: str, value: Any, line: int | None, file: str | None = None) -> Any:
        """Validate one value and return it in request form; report a problem if invalid."""
        if name == "color_palette" and isinstance(value, str) and value in api_spec.PALETTE_PRESETS:
            value = {"name": value}
        for problem in self.value_problems(name, value):
            self.problem(line, problem, file)
        return _plain(value)

    def value_problems(self, name: str, value: Any) -> list[str]:
        """Every problem with one value: a palette's bad members all at once, not the first."""
        if name == "color_palette" and isinstance(value, dict) and set(value) == {"members"}:
            return palette_member_problems(value["members"])
        problem = api_spec.check_param(name, value)
        return [problem] if problem else []


def palette_member_problems(members: Any) -> list[str]:
    """A problem for each bad member of a custom palette, numbered as written."""
    whole = api_spec.check_color_palette({"members": members})
    if whole is None or not isinstance(members, list) or not 1 <= len(members) <= api_spec.PALETTE_MAX_MEMBERS:
        return [whole] if whole else []
    problems = []
    for number, member in enumerate(members, start=1):
        if problem := api_spec.check_color_palette({"members": [member]}):
            problems.append(problem.replace("color_palette member 1", f"color_palette member {number}", 1))
    return problems


def _plain(value: Any) -> Any:
    """Drop the line-number subclasses so values hash, compare and serialise as plain data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
