"""CSV and TSV files: manifests and value files read the same way, by one strict reader.

A .tsv file is IANA text/tab-separated-values: no quoting at all, every cell exactly as written,
so a prompt may begin with a quote. Any other table is CSV as in RFC 4180, with commas (or tabs,
or semicolons as European spreadsheets save CSV, when the header has more of them than commas):
a cell that starts with a quote ends at the next lone quote, and "" inside it is one quote. A
quote anywhere else is an ordinary character.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batch_runner import humanize
from batch_runner.errors import ManifestError, Problem

LINE_END = re.compile(r"\r\n|\r|\n")


class _TableSyntax(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def lines(text: str) -> list[str]:
    """Lines split at \\n, \\r\\n or \\r only: a prompt may hold U+2028, a form feed or U+0085."""
    split = LINE_END.split(text)
    if split and split[-1] == "":
        split.pop()  # the file's last line end, not an empty last line
    return split


def _tsv_records(text: str) -> Iterator[tuple[int, int, list[str]]]:
    for number, line in enumerate(lines(text), start=1):
        yield number, number, line.split("\t")


def _line_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _csv_records(text: str, delimiter: str) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, cells) of each record; _TableSyntax where RFC 4180 is broken.

    Python's csv module would instead merge every row after an unclosed quote into one cell.
    """
    # Possessive quantifiers: an unclosed quote fails at once instead of backtracking.
    quoted = re.compile(r'"([^"]*+(?:""[^"]*+)*+)"')
    bare = re.compile(f"[^{re.escape(delimiter)}\\r\\n]*")
    ends = (delimiter, "\r", "\n")
    pos, size, line = 0, len(text), 1
    while pos < size:
        first = line
        cells: list[str] = []
        while True:
            if text.startswith('"', pos):
                match = quoted.match(text, pos)
                if match is None:
                    raise _TableSyntax(
                        line,
                        "a quoted cell starts on this line but its closing quote never comes; close it, "
                        'and write a quote inside a quoted cell as ""',
                    )
                start = line
                line += _line_breaks(match[1])
                pos = match.end()
                if pos < size and text[pos] not in ends:
                    rest = bare.match(text, pos)
                    after = humanize.clip(rest[0] if rest else "", 30)
                    if line == start:
                        message = (
                            f"text {after!r} follows the closing quote of a quoted cell; put the whole cell "
                            'in quotes and write each quote inside it as ""'
                        )
                    else:
                        message = (
                            f"the quoted cell that starts on this line runs on to line {line}, where text {after!r} "
                            "follows its closing quote; close the quote on this line, and write a quote inside "
                            'a quoted cell as ""'
                        )
                    raise _TableSyntax(start, message)
                cells.append(match[1].replace('""', '"'))
            else:
                cell = bare.match(text, pos)
                assert cell is not None  # it matches the empty string, at the least
                cells.append(cell[0])
                pos = cell.end()
            last = line
            if pos >= size:
                break
            if text[pos] == delimiter:
                pos += 1
                continue
            pos += 2 if text.startswith("\r\n", pos) else 1
            line += 1
            break
        yield first, last, cells


@dataclass
class Table:
    """A CSV or TSV file's header, and its rows as (line, cells) with blank rows left out."""

    shown: str
    names: list[str]
    records: Iterator[tuple[int, int, list[str]]]
    delimiter: str

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """Raises ManifestError at a syntax error, after which nothing more can be trusted."""
        try:
            for first, last, cells in self.records:
                if not any(cell.strip() for cell in cells):
                    continue
                if last > first and len(cells) != len(self.names):
                    raise _TableSyntax(
                        first,
                        f"a quoted cell on this line runs on to line {last}, and the row then has {len(cells)} "
                        f"cells where the header has {len(self.names)}; close the quote on this line (a quote "
                        'inside a quoted cell is written ""), or give the row all its cells',
                    )
                yield first, cells
        except _TableSyntax as exc:
            raise ManifestError([Problem(self.shown, exc.line, exc.message)])

    def full_rows(self, problems: list[Problem]) -> Iterator[tuple[int, list[str]]]:
        """rows(), each with a cell for every column (a short row's missing cells are empty); a row
        with more cells than the header is left out and its problem added to problems.

        A column with no name in the header would lose its values without a word: the first row
        that has a value there is a problem naming the column's number. (A nameless column that
        stays empty, such as a spreadsheet's trailing delimiter, loses nothing.)"""
        width = len(self.names)
        unnamed = {i for i, name in enumerate(self.names) if not name}
        for line, cells in self.rows():
            if problem := self._width_problem(cells):
                problems.append(Problem(self.shown, line, problem))
                continue
            for i in [i for i in unnamed if i < len(cells) and cells[i].strip()]:
                unnamed.discard(i)
                problems.append(Problem(self.shown, line, self._unnamed_problem(i, cells[i])))
            yield line, cells + [""] * (width - len(cells))

    def _unnamed_problem(self, index: int, cell: str) -> str:
        return (
            f"column {index + 1} has no name in the header (line 1), but this row has a value in it "
            f"({humanize.clip(cell, 30)!r}), which would be dropped; name the column in the header "
            f"(e.g. meta_column{index + 1} to keep it as metadata), or delete the column"
        )

    def _width_problem(self, cells: list[str]) -> str | None:
        if len(cells) <= len(self.names):
            return None
        if self.delimiter == "\t":
            fix = "a cell cannot hold a tab; remove it, or add a column to the header"
        else:
            fix = f"put cells that contain '{self.delimiter}' in double quotes"
        return f"row has {len(cells)} cells but the header has {len(self.names)}; {fix}"

    def header_problems(self) -> list[Problem]:
        """Columns that repeat another (case is ignored), on the header's line."""
        seen: dict[str, str] = {}
        problems = []
        for name in self.names:
            if name and name.lower() in seen:
                message = f"column {name!r} repeats column {seen[name.lower()]!r} (case is ignored); keep one"
                problems.append(Problem(self.shown, 1, message))
            seen.setdefault(name.lower(), name)
        return problems


def read_table(path: Path, shown: str, text: str) -> Table | None:
    """A table's header, or None when the file is empty; ManifestError if the header is broken."""
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
        records = _tsv_records(text)
    else:
        header = LINE_END.split(text, maxsplit=1)[0]
        delimiter = max(",\t;", key=header.count)  # the first, a comma, on a tie
        records = _csv_records(text, delimiter)
    try:
        first = next(records, None)
    except _TableSyntax as exc:
        raise ManifestError([Problem(shown, exc.line, exc.message)])
    if first is None:
        return None
    return Table(shown, [name.strip() for name in first[2]], records, delimiter)
