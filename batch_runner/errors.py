"""Problems with user input, reported all at once and never as a traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is, what it is and how to fix it."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class ManifestError(Exception):
    """The job cannot be planned; every problem found is listed."""

    def __init__(self, problems: list[Problem]):
        # In reading order, so the list can be fixed from the top of each file down.
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0))
        super().__init__("\n".join(map(str, problems)))


class UsageError(Exception):
    """A bad command-line argument or environment; exit code 2 like a bad manifest."""
