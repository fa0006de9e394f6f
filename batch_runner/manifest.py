"""Read a job manifest (YAML or CSV/TSV) into a validated Job that streams its items.

Every source of values becomes a *block*: base parameters plus a list of *dimensions*, each a
list of *points* (a fragment of request parameters and of metadata). A YAML grid axis, a zip
group and a `vars:` list are each one dimension; a CSV row is a block of its own. Points are
validated once, where they are written, so expanding a million items costs no validation.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import api_spec
from .errors import ManifestError, Problem
from .items import Item, make_item

TOP_LEVEL_KEYS = (
    "name",
    "description",
    "defaults",
    "grid",
    "zip",
    "vars",
    "concurrency",
    "rpm",
    "max_cost",
    "price_per_image",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SEED_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_AXIS_SAMPLE_CAP = 10_000


@dataclass(frozen=True)
class RunSettings:
    """Run settings a manifest may carry; None means 'not set here'."""

    concurrency: int | None = None
    rpm: float | None = None
    max_cost: float | None = None
    price_per_image: float | None = None


@dataclass(frozen=True)
class Template:
    """A prompt with {placeholders}, filled from the item's other values."""

    text: str
    fields: tuple[str, ...]

    def fill(self, values: dict[str, Any]) -> str:
        return self.text.format_map(values)


@dataclass
class Point:
    params: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class Block:
    base: dict[str, Any]
    dims: list[list[Point]]
    where: str  # "file:line", to blame a template that fills to nothing

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
    name: str
    source: Path
    settings: RunSettings
    param_columns: list[str]
    meta_columns: list[str]
    axes: list[Axis]
    blocks: list[Block]

    def expanded_count(self) -> int:
        """Items before duplicates are dropped, without expanding anything."""
        return sum(block.size() for block in self.blocks)

    def iter_items(self) -> Iterator[Item]:
        """Every item in order, duplicates included; see items.unique()."""
        for block in self.blocks:
            yield from _expand(block)


def _expand(block: Block) -> Iterator[Item]:
    base = block.base
    for combo in itertools.product(*block.dims):
        params = dict(base)
        meta: dict[str, Any] = {}
        for point in combo:
            params.update(point.params)
            meta.update(point.meta)
        prompt = params.get("prompt")
        if isinstance(prompt, Template):
            filled = prompt.fill({**params, **meta})
            if not filled.strip():
                raise ManifestError(
                    [Problem(block.where, None, f"template {prompt.text!r} fills to an empty prompt with {meta}")]
                )
            params["prompt"] = filled
        yield make_item(params, meta)


# --------------------------------------------------------------------------------------------
# Loading


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a manifest; raise ManifestError listing every problem found."""
    path = Path(path)
    shown = _display(path)
    if not path.exists():
        raise ManifestError([Problem(shown, None, "no such file; check the path")])
    if path.is_dir():
        raise ManifestError([Problem(shown, None, "is a folder; give a .yaml, .csv or .tsv manifest")])
    text = _read_text(path, shown)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _CsvManifest(path, shown, text).job()
    if suffix in (".yaml", ".yml", ".json"):
        return _YamlManifest(path, shown, text).job()
    raise ManifestError([Problem(shown, None, "unknown manifest type; use .yaml, .yml, .csv or .tsv")])


def _display(path: Path) -> str:
    """The path as the user would type it: relative when under the current folder."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path.absolute()) if relative.startswith("..") else relative


def _read_text(path: Path, shown: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError([Problem(shown, None, f"cannot read the file ({exc.strerror}); check its permissions")])
    if b"\0" in data:
        raise ManifestError([Problem(shown, None, "is a binary file, not a text manifest")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError([Problem(shown, line, "is not valid UTF-8 text; save the file as UTF-8")])


# YAML with line numbers: mappings and lists remember where each entry was written.


class _LineDict(dict):
    line: int = 0
    lines: dict[Any, int]


class _LineList(list):
    line: int = 0
    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    duplicate_keys: list[tuple[Any, int]]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    result = _LineDict()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in result:
                loader.duplicate_keys.append((key, line))
            result[key] = loader.construct_object(value_node, deep=True)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be plain text", key_node.start_mark)
        result.lines[key] = line
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _LineList:
    result = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _line_of(container: Any, key: Any, fallback: int | None = None) -> int | None:
    lines = getattr(container, "lines", None)
    if isinstance(lines, dict):
        return lines.get(key, fallback)
    if isinstance(lines, list) and isinstance(key, int) and key < len(lines):
        return lines[key]
    return getattr(container, "line", None) or fallback


class _Reader:
    """Shared by both manifest kinds: problem collection and value sources."""

    def __init__(self, path: Path, shown: str):
        self.path = path
        self.shown = shown
        self.problems: list[Problem] = []

    def problem(self, line: int | None, message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.shown, line, message))

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ManifestError(self.problems)

    def coerce(self, name: str, raw: str) -> Any:
        """A value read as text from a CSV cell or a value file, typed for the API."""
        if name == "seed":
            text = raw.strip()
            return int(text) if re.fullmatch(r"[+-]?\d+", text) else raw
        if name == "color_palette":
            text = raw.strip()
            if text.startswith("{"):
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    return raw
            return text
        return raw

    def check_point(self, name: str, value: Any, line: int | None, file: str | None = None) -> Any:
        """Validate one value and return it in request form; report a problem if invalid."""
        if name == "color_palette" and isinstance(value, str) and value in api_spec.PALETTE_PRESETS:
            value = {"name": value}
        problem = api_spec.check_param(name, value)
        if problem:
            self.problem(line, problem, file)
        return _plain(value)


def _plain(value: Any) -> Any:
    """Drop the line-number subclasses so values hash, compare and serialise as plain data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class _YamlManifest(_Reader):
    def __init__(self, path: Path, shown: str, text: str):
        super().__init__(path, shown)
        self.text = text
        self.template_names: set[str] = set()
        self.meta_columns: list[str] = []
        self.axes: list[Axis] = []
        self.axis_params: list[str] = []
        self.zip_names: list[str] = []
        self.templates: list[tuple[Template, int | None]] = []

    def job(self) -> Job:
        doc = self._parse()
        unknown = [k for k in doc if k not in TOP_LEVEL_KEYS]
        for key in unknown:
            hint = api_spec.suggest(key, TOP_LEVEL_KEYS)
            if key in api_spec.PARAMETERS:
                fix = f"API parameters go under defaults: or grid:, e.g. 'defaults: {{{key}: ...}}'"
            else:
                fix = f"did you mean {hint}?" if hint else "known keys are " + ", ".join(TOP_LEVEL_KEYS)
            self.problem(_line_of(doc, key), f"unknown key {key!r}; {fix}")

        name = self._name(doc)
        settings = self._settings(doc)
        base = self._defaults(doc)
        dims: list[list[Point]] = []
        for axis_name, points in self._grid(doc, base):
            dims.append(points)
            self._note_axis(axis_name, points)
        zip_dim = self._zip(doc, base, set(self.axis_params))
        if zip_dim:
            dims.append(zip_dim)
            self._note_axis("+".join(self.zip_names), zip_dim)
        for var_name, points in self._vars(doc):
            dims.append(points)
            self._note_axis(var_name, points)

        params_present = set(base) | set(self.axis_params)
        if "prompt" not in params_present:
            self.problem(doc.line, "no prompt: add 'prompt' under defaults:, grid: or zip:")
        self._check_templates(params_present)
        self.raise_if_problems()

        # Columns read best as: the prompt, then what varies, then what is fixed.
        param_columns = list(dict.fromkeys(["prompt", *self.axis_params, *base]))
        return Job(
            name=name,
            source=self.path,
            settings=settings,
            param_columns=param_columns,
            meta_columns=self.meta_columns,
            axes=self.axes,
            blocks=[Block(base=base, dims=dims, where=self.shown)],
        )

    def _note_axis(self, name: str, points: list[Point]) -> None:
        sample = [_axis_label(p) for p in points[:6]]
        self.axes.append(Axis(name=name, count=len(points), sample=sample))
        for point in points[:1]:
            for key in point.meta:
                if key not in self.meta_columns:
                    self.meta_columns.append(key)

    def _parse(self) -> _LineDict:
        try:
            loader = _LineLoader(self.text)
            loader.duplicate_keys = []
            try:
                doc = loader.get_single_data()
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                line = mark.line + 1
            elif isinstance(exc, yaml.reader.ReaderError):
                line = self.text.count("\n", 0, exc.position) + 1
            else:
                line = None
            what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ManifestError([Problem(self.shown, line, f"broken YAML: {what}; check indentation and quoting")])
        if doc is None:
            raise ManifestError([Problem(self.shown, None, "the manifest is empty; see jobs/ for examples")])
        if not isinstance(doc, dict):
            raise ManifestError(
                [Problem(self.shown, 1, "the manifest must be a mapping with name:, defaults: and grid:")]
            )
        for key, line in loader.duplicate_keys:
            self.problem(line, f"key {key!r} is given twice; keep one")
        return doc

    def _name(self, doc: dict) -> str:
        name = doc.get("name", self.path.stem)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self.problem(
                _line_of(doc, "name"),
                f"name {name!r} is not a usable folder name; use letters, digits, '.', '_' or '-'",
            )
            return "job"
        return name

    def _settings(self, doc: dict) -> RunSettings:
        values: dict[str, Any] = {}
        for key, kind, minimum in (
            ("concurrency", int, 1),
            ("rpm", float, 0),
            ("max_cost", float, 0),
            ("price_per_image", float, 0),
        ):
            if key not in doc:
                continue
            value = doc[key]
            ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
            if not ok or value < minimum or (key in ("rpm", "price_per_image") and value == 0):
                rule = "a whole number ≥ 1" if kind is int else "a positive number"
                if key == "max_cost":
                    rule = "a number of dollars ≥ 0"
                self.problem(_line_of(doc, key), f"{key} {value!r} is invalid; use {rule}")
                continue
            values[key] = value
        return RunSettings(**values)

    def _defaults(self, doc: dict) -> dict[str, Any]:
        defaults = doc.get("defaults", {})
        if defaults is None:
            return {}
        if not isinstance(defaults, dict):
            self.problem(_line_of(doc, "defaults"), "defaults must be a mapping of API parameters to one value each")
            return {}
        base = {}
        for key, value in defaults.items():
            line = _line_of(defaults, key)
            if key not in api_spec.PARAMETERS:
                self.problem(line, api_spec.check_param(str(key), value) or "")
                continue
            if isinstance(value, list) and key != "color_palette":
                self.problem(line, f"defaults.{key} is a list; a list of values is an axis: move it under grid:")
                continue
            if key == "prompt" and isinstance(value, str):
                base[key] = self._prompt_value(value, line)
                continue
            base[key] = self.check_point(key, value, line)
        return base

    def _grid(self, doc: dict, base: dict) -> Iterator[tuple[str, list[Point]]]:
        grid = doc.get("grid", {}) or {}
        if not isinstance(grid, dict):
            self.problem(_line_of(doc, "grid"), "grid must be a mapping from API parameter to a list of values")
            return
        for key, raw in grid.items():
            line = _line_of(grid, key)
            if key not in api_spec.PARAMETERS:
                self.problem(line, api_spec.check_param(str(key), raw) or "")
                continue
            if key in base:
                self.problem(line, f"{key} is both in defaults: and grid:; remove it from one of them")
                continue
            self.axis_params.append(key)
            reported = len(self.problems)
            points = [Point({key: v}, meta) for v, meta in self._values(key, raw, grid, key)]
            if not points and len(self.problems) == reported:
                self.problem(line, f"grid.{key} has no values; give at least one or remove the axis")
                continue
            yield key, points

    def _zip(self, doc: dict, base: dict, taken: set[str]) -> list[Point]:
        block = doc.get("zip")
        if block is None:
            return []
        if not isinstance(block, dict) or not block:
            self.problem(_line_of(doc, "zip"), "zip must be a mapping of API parameters to lists of equal length")
            return []
        columns: list[tuple[str, list[tuple[Any, dict]]]] = []
        for key, raw in block.items():
            line = _line_of(block, key)
            if key not in api_spec.PARAMETERS:
                self.problem(line, api_spec.check_param(str(key), raw) or "")
                continue
            if key in base or key in taken:
                self.problem(line, f"{key} is in zip: and also in defaults: or grid:; keep it in one place")
                continue
            columns.append((key, self._values(key, raw, block, key)))
        self.zip_names = [key for key, _ in columns]
        self.axis_params.extend(self.zip_names)
        lengths = {key: len(values) for key, values in columns}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            self.problem(_line_of(doc, "zip"), f"zip lists must have equal length ({detail}); make them match")
            return []
        points = []
        for row in zip(*(values for _, values in columns), strict=True):
            params: dict[str, Any] = {}
            meta: dict[str, Any] = {}
            for key_values, (value, value_meta) in zip(columns, row, strict=True):
                params[key_values[0]] = value
                meta.update(value_meta)
            points.append(Point(params, meta))
        return points

    def _vars(self, doc: dict) -> Iterator[tuple[str, list[Point]]]:
        block = doc.get("vars")
        if block is None:
            return
        if not isinstance(block, dict):
            self.problem(_line_of(doc, "vars"), "vars must be a mapping of template names to lists of values")
            return
        for key, raw in block.items():
            line = _line_of(block, key)
            if not isinstance(key, str) or not key.isidentifier():
                self.problem(line, f"vars name {key!r} must be a simple word (letters, digits, _)")
                continue
            if key in api_spec.PARAMETERS:
                self.problem(line, f"vars.{key} shadows an API parameter; put it under grid: instead")
                continue
            values = self._raw_list(raw, block, key, key)
            self.template_names.add(key)
            yield key, [Point({}, {key: value, **meta}) for value, meta in values]

    def _values(self, key: str, raw: Any, parent: Any, where: Any) -> list[tuple[Any, dict]]:
        """An axis's validated values, each with the metadata that rides along with it."""
        from_file = isinstance(raw, dict) and "file" in raw
        if key == "seed" and not from_file:
            seeds = self._seeds(raw, _line_of(parent, where))
            return [(s, {}) for s in seeds]
        values = []
        for value, meta, line, file in self._raw_values(raw, parent, where, key):
            if key == "prompt" and isinstance(value, str) and file is None:
                values.append((self._prompt_value(value, line), meta))
            else:
                values.append((self.check_point(key, value, line, file), meta))
        return values

    def _raw_list(self, raw: Any, parent: Any, where: Any, key: str) -> list[tuple[Any, dict]]:
        return [(v, m) for v, m, _, _ in self._raw_values(raw, parent, where, key)]

    def _raw_values(
        self, raw: Any, parent: Any, where: Any, key: str
    ) -> Iterator[tuple[Any, dict, int | None, str | None]]:
        line = _line_of(parent, where)
        if isinstance(raw, dict) and "file" in raw:
            yield from self._file_values(raw, line, key)
            return
        if isinstance(raw, list):
            for i, value in enumerate(raw):
                yield value, {}, _line_of(raw, i, line), None
            return
        if key == "color_palette" and isinstance(raw, dict):
            yield raw, {}, line, None  # one custom palette given where a list was expected
            return
        yield raw, {}, line, None

    def _file_values(self, ref: dict, line: int | None, key: str) -> Iterator[tuple[Any, dict, int | None, str | None]]:
        extra = set(ref) - {"file", "column", "limit"}
        if extra:
            self.problem(
                line, f"unknown key(s) {sorted(map(str, extra))} in a file reference; use file:, column:, limit:"
            )
        limit = ref.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            self.problem(line, f"limit {limit!r} must be a whole number ≥ 1")
            return
        file_name = ref["file"]
        if not isinstance(file_name, str):
            self.problem(line, "file: must be a path relative to the manifest")
            return
        target = self.path.parent / file_name
        shown = _display(target)
        if not target.is_file():
            self.problem(
                line,
                f"referenced file {file_name!r} not found (looked for {shown}); "
                "check the path, which is relative to the manifest",
            )
            return
        try:
            text = _read_text(target, shown)
        except ManifestError as exc:
            self.problems.extend(exc.problems)
            return
        rows = _value_rows(target, text, ref.get("column"), key)
        if isinstance(rows, str):
            self.problem(line, rows)
            return
        for n, (file_line, value, meta) in enumerate(rows):
            if limit is not None and n >= limit:
                break
            meta = {(_meta_name(k)): v for k, v in meta.items()}
            yield self.coerce(key, value), meta, file_line, shown

    def _seeds(self, raw: Any, line: int | None) -> list[int]:
        if isinstance(raw, dict):
            return self._random_seeds(raw, line)
        items = raw if isinstance(raw, list) else [raw]
        seeds: list[int] = []
        for i, item in enumerate(items):
            item_line = _line_of(raw, i, line) if isinstance(raw, list) else line
            if isinstance(item, str) and (match := _SEED_RANGE.fullmatch(item)):
                low, high = int(match[1]), int(match[2])
                if low > high:
                    self.problem(item_line, f"seed range {item!r} runs backwards; write {high}-{low}")
                    continue
                for end in (low, high):
                    if problem := api_spec.check_seed(end):
                        self.problem(item_line, problem)
                        break
                else:
                    seeds.extend(range(low, high + 1))
                continue
            if problem := api_spec.check_seed(item):
                fix = " or a range such as '100-199'" if isinstance(item, str) else ""
                self.problem(item_line, problem + fix)
                continue
            seeds.append(item)
        return seeds

    def _random_seeds(self, spec: dict, line: int | None) -> list[int]:
        if set(spec) - {"random", "base"}:
            self.problem(line, "random seeds are written {random: N, base: S}")
            return []
        count, base = spec.get("random"), spec.get("base", 0)
        span = api_spec.SAFE_SEED_MAX - api_spec.SEED_MIN + 1
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= span:
            self.problem(line, f"random: {count!r} must be a whole number from 1 to {span}")
            return []
        if isinstance(base, bool) or not isinstance(base, int):
            self.problem(line, f"base: {base!r} must be a whole number (it makes the seeds reproducible)")
            return []
        return random.Random(base).sample(range(api_spec.SEED_MIN, api_spec.SAFE_SEED_MAX + 1), count)

    def _prompt_value(self, text: str, line: int | None) -> Any:
        """An inline prompt; with {placeholders} it becomes a template filled per item."""
        if "{" not in text:
            if problem := api_spec.check_prompt(text):
                self.problem(line, problem)
            return text
        try:
            fields = tuple(f for _, f, _, _ in string.Formatter().parse(text) if f is not None)
        except ValueError as exc:
            self.problem(line, f"prompt template {text!r} is malformed ({exc}); write a literal brace as {{{{ or }}}}")
            return text
        if not fields:
            return text.format()  # only escaped braces
        bad = [f for f in fields if not f.isidentifier()]
        if bad:
            self.problem(line, f"prompt template field {{{bad[0]}}} must be a plain name, e.g. {{animal}}")
            return text
        template = Template(text, fields)
        self.templates.append((template, line))
        return template

    def _check_templates(self, params: set[str]) -> None:
        known = params | self.template_names | set(self.meta_columns)
        for template, line in self.templates:
            for name in template.fields:
                if name == "prompt" or name not in known:
                    names = sorted(known - {"prompt"})
                    self.problem(
                        line,
                        f"prompt template uses {{{name}}}, which no axis or vars: entry defines; "
                        f"add it under vars: (known: {', '.join(names) or 'none'}) or write a literal brace as {{{{",
                    )


def _axis_label(point: Point) -> Any:
    values = list(point.params.values()) or [v for v in point.meta.values()][:1]
    labels = [v.text if isinstance(v, Template) else v for v in values]
    return labels[0] if len(labels) == 1 else tuple(labels)


def _meta_name(column: str) -> str:
    # Metadata must never shadow a request parameter in the manifest's columns.
    return f"meta_{column}" if column.lower() in api_spec.PARAMETERS else column


def _sniff_delimiter(path: Path, header: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    return "\t" if header.count("\t") > header.count(",") else ","


def _value_rows(path: Path, text: str, column: Any, key: str) -> list[tuple[int, str, dict]] | str:
    """(line, value, other columns) for each row of a value file, or a message saying what is wrong."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv"):
        if column is not None:
            return f"column: only applies to CSV/TSV files; {path.name} is read one value per line"
        rows = []
        for n, raw_line in enumerate(text.splitlines(), start=1):
            if raw_line.strip():
                rows.append((n, raw_line, {}))
        return rows
    header, _, _ = text.partition("\n")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(path, header))
    try:
        names = [h.strip() for h in next(reader)]
    except StopIteration:
        return f"{path.name} is empty; it needs a header row"
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
    for cells in reader:
        if not any(cells):
            continue
        line = reader.line_num
        value = cells[index] if index < len(cells) else ""
        meta = {names[i]: cells[i] for i in range(len(names)) if i != index and i < len(cells) and names[i]}
        rows.append((line, value, meta))
    return rows


class _CsvManifest(_Reader):
    """A CSV/TSV file whose header names API parameters: one row, one block of items."""

    def __init__(self, path: Path, shown: str, text: str):
        super().__init__(path, shown)
        self.text = text

    def job(self) -> Job:
        header, _, _ = self.text.partition("\n")
        delimiter = _sniff_delimiter(self.path, header)
        reader = csv.reader(io.StringIO(self.text, newline=""), delimiter=delimiter)
        try:
            names = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ManifestError(
                [Problem(self.shown, 1, "the file is empty; it needs a header row naming API parameters")]
            )
        params: dict[int, str] = {}
        meta: dict[int, str] = {}
        for i, name in enumerate(names):
            lowered = name.lower()
            if lowered in api_spec.PARAMETERS:
                if lowered in params.values():
                    self.problem(1, f"column {name!r} repeats the {lowered} column; keep one")
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

        blocks: list[Block] = []
        axis_values: dict[str, dict[Any, None]] = {p: {} for p in params.values()}
        capped: set[str] = set()
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(names):
                self.problem(
                    line,
                    f"row has {len(cells)} cells but the header has {len(names)}; "
                    f"quote cells that contain '{delimiter}'",
                )
                continue
            block = self._row_block(line, cells, params, meta)
            if block is None:
                continue
            blocks.append(block)
            for dim in block.dims:
                for point in dim:
                    for key, value in point.params.items():
                        self._tally(axis_values, capped, key, value)
            for key, value in block.base.items():
                self._tally(axis_values, capped, key, value)
        if not blocks and not self.problems:
            self.problem(None, "the file has a header but no rows; add one row per item")
        self.raise_if_problems()

        param_columns = [p for p in api_spec.PARAMETERS if p in params.values()]
        axes = [
            Axis(name=p, count=len(axis_values[p]), sample=list(axis_values[p])[:6], capped=p in capped)
            for p in param_columns
        ]
        return Job(
            name=self.path.stem if _NAME.fullmatch(self.path.stem) else "job",
            source=self.path,
            settings=RunSettings(),
            param_columns=param_columns,
            meta_columns=[_meta_name(m) for m in meta.values()],
            axes=axes,
            blocks=blocks,
        )

    @staticmethod
    def _tally(seen: dict[str, dict[Any, None]], capped: set[str], key: str, value: Any) -> None:
        bucket = seen[key]
        if len(bucket) >= _AXIS_SAMPLE_CAP:
            capped.add(key)
            return
        bucket[json.dumps(value, sort_keys=True) if isinstance(value, dict) else value] = None

    def _row_block(self, line: int, cells: list[str], params: dict[int, str], meta: dict[int, str]) -> Block | None:
        before = len(self.problems)
        base: dict[str, Any] = {}
        dims: list[list[Point]] = []
        for i, key in params.items():
            cell = cells[i] if i < len(cells) else ""
            if cell == "" or (key != "prompt" and not cell.strip()):
                if key == "prompt":
                    self.problem(line, "prompt is empty; give the text to generate, or delete the row")
                continue
            parts = _UNESCAPED_PIPE.split(cell)
            if len(parts) == 1:
                values = [cell.replace("\\|", "|")]
            else:
                values = [p.strip().replace("\\|", "|") for p in parts]
            checked = []
            for value in values:
                if key == "seed" and (match := _SEED_RANGE.fullmatch(value)):
                    low, high = int(match[1]), int(match[2])
                    bad = api_spec.check_seed(low) or api_spec.check_seed(high)
                    if bad or low > high:
                        self.problem(line, bad or f"seed range {value!r} runs backwards; write {high}-{low}")
                        continue
                    checked.extend(range(low, high + 1))
                    continue
                checked.append(self.check_point(key, self.coerce(key, value), line))
            if len(checked) == 1:
                base[key] = checked[0]
            elif checked:
                dims.append([Point({key: v}, {}) for v in checked])
        if len(self.problems) > before:
            return None
        row_meta = {_meta_name(name): cells[i] if i < len(cells) else "" for i, name in meta.items()}
        # Metadata rides on the base as a zero-width dimension so every item of the row carries it.
        dims.insert(0, [Point({}, row_meta)])
        return Block(base=base, dims=dims, where=f"{self.shown}:{line}")
