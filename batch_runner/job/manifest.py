"""Read a job manifest (YAML or CSV/TSV) into a validated Job that streams its items.

Every source of values becomes a *block*: base parameters plus a list of *dimensions*, each a
list of *points* (a fragment of request parameters and of metadata). A YAML grid axis, a zip
group and a `vars:` list are each one dimension; a CSV row is a block of its own. Points are
validated once, where they are written, so expanding a million items costs no validation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import stat
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from batch_runner import humanize
from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError, Problem
from batch_runner.job.items import OUTPUT_COLUMNS, Item, make_item
from batch_runner.settings import LIMITS, RunSettings, check_url, parse_setting

TOP_LEVEL_KEYS = ("name", "description", "defaults", "grid", "zip", "vars", *LIMITS, "ping_url")
# One job may expand to at most this many items (before duplicates are dropped). Counted before
# anything is expanded, so a typo that makes a grid of 10^10 fails at once instead of running
# for hours; and 10 million items is already ~$630,000 at $0.063 an image.
MAX_ITEMS = 10_000_000
# A manifest is a few levels deep (grid: → axis → list → palette → members); deeper nesting is a
# mistake, and thousands of levels would exhaust Python's recursion limit.
MAX_YAML_DEPTH = 64
# Values after YAML anchors and aliases (*name) are expanded, so a "billion laughs" file is
# refused instead of taking the machine's memory. A list of a million prompts is a million values.
MAX_YAML_VALUES = 5_000_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SEED_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_AXIS_SAMPLE_CAP = 10_000
_SEED_COUNT = api_spec.SEED_MAX - api_spec.SEED_MIN + 1
_LINE_END = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Template:
    """A prompt with {placeholders}, filled from the item's other values.

    Only plain names are allowed ({animal}, never {animal!r} or {seed:.2f}), and values go in as
    text, so filling can never fail on a value the manifest gave.
    """

    text: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text, field name or None)
    line: int | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.parts if name is not None)

    def fill(self, values: dict[str, Any]) -> str:
        return "".join(text + ("" if name is None else str(values[name])) for text, name in self.parts)


@dataclass
class Point:
    params: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class Block:
    base: dict[str, Any]
    dims: list[list[Point]]
    where: str  # "file:line", to blame a template that fills to nothing
    # Metadata columns renamed so they never clash with the tool's columns: applied after the
    # prompt template is filled, so templates use the names the user wrote.
    renames: dict[str, str] = field(default_factory=dict)

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
    # Metadata columns renamed because they clash with a request parameter or an output column.
    renamed: dict[str, str] = field(default_factory=dict)

    def expanded_count(self) -> int:
        """Items before duplicates are dropped, without expanding anything."""
        return sum(block.size() for block in self.blocks)

    def iter_items(self) -> Iterator[Item]:
        """Every item in order, duplicates included; see items.unique()."""
        for block in self.blocks:
            yield from _expand(block)


def _expand(block: Block) -> Iterator[Item]:
    base, renames = block.base, block.renames
    for combo in itertools.product(*block.dims):
        params = dict(base)
        meta: dict[str, Any] = {}
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


# --------------------------------------------------------------------------------------------
# Column names


def clash_reason(column: str) -> str | None:
    """Why a metadata column cannot keep its name, or None when it can."""
    lowered = column.lower()
    if lowered in api_spec.PARAMETERS:
        return "clashes with an API parameter"
    if lowered in OUTPUT_COLUMNS:
        return "clashes with an output column"
    return None


def _column_renames(columns: Iterable[str]) -> dict[str, str]:
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


def _too_many_items(total: int, axes: Iterable[tuple[str, int]]) -> str:
    sizes = " × ".join(f"{name} {count:,}" for name, count in axes)
    return (
        f"the job expands to {total:,} items ({sizes}), more than the {MAX_ITEMS:,} one job may have; "
        "shrink an axis or split the job into several manifests"
    )


# --------------------------------------------------------------------------------------------
# Loading


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a manifest; raise ManifestError listing every problem found."""
    path = Path(path)
    shown = _display(path)
    if problem := _file_problem(path, "a .yaml, .csv or .tsv manifest"):
        raise ManifestError([Problem(shown, None, problem)])
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


def _file_problem(path: Path, wanted: str) -> str | None:
    """Why path is not a file that can be read, or None. Looked at, never opened: opening a
    FIFO blocks until something writes to it, and /dev/zero never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file; check the path"
    except (OSError, ValueError) as exc:
        return f"cannot be opened ({getattr(exc, 'strerror', None) or exc}); check the path"
    if stat.S_ISDIR(mode):
        return f"is a folder; give {wanted}"
    if not stat.S_ISREG(mode):
        return f"is not a regular file but a pipe, socket or device; save it as a file and give {wanted}"
    return None


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


class _YamlLimit(yaml.YAMLError):
    """Input PyYAML would accept but the manifest must not: too deep, too big, not Unicode."""

    def __init__(self, mark: yaml.Mark, message: str):
        super().__init__(message)
        self.mark = mark
        self.message = message


class _LineLoader(yaml.SafeLoader):
    duplicate_keys: list[tuple[Any, int]]

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicate_keys = []
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlLimit(
                    self.peek_event().start_mark,
                    f"values are nested more than {MAX_YAML_DEPTH} levels deep; "
                    "a manifest needs only a few (grid: → axis → list of values)",
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.ScalarNode):
            size = 1
            if _SURROGATE.search(node.value):
                node.value = _join_surrogates(node.value, node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes.get(id(child), 1) for child in node.value)
        else:
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        self._sizes[id(node)] = size
        if size > MAX_YAML_VALUES:
            raise _YamlLimit(
                node.start_mark,
                f"this value expands to more than {MAX_YAML_VALUES:,} values through anchors and aliases (*name); "
                "write the values out, or read them from a file with {file: values.txt}",
            )
        return node


def _join_surrogates(text: str, mark: yaml.Mark) -> str:
    """Escaped surrogate pairs ("\\ud83d\\ude00", as JSON writes 😀) become the character; a lone
    surrogate is not a character at all and could never be sent as UTF-8."""
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        lone = _SURROGATE.search(text)
        code = f"\\u{ord(lone[0]):04x}" if lone else "a \\uD800-\\uDFFF escape"
        raise _YamlLimit(
            mark,
            f"the escape {code} is a lone surrogate, which is not valid Unicode; "
            "write the character itself, or \\U0001F600-style escapes for characters beyond U+FFFF",
        )


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


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:  # more digits than Python converts (4,300)
        raise _YamlLimit(node.start_mark, f"the number {node.value[:12]}… is far too long; write a shorter number")


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _yaml_position(loader: yaml.SafeLoader | None) -> int | None:
    try:
        return loader.get_mark().line + 1 if loader else None
    except Exception:  # noqa: BLE001 - only a better message is lost
        return None


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
            return _int(text) if re.fullmatch(r"[+-]?\d+", text) else raw
        if name == "color_palette":
            text = raw.strip()
            if text.startswith("{"):
                try:
                    return json.loads(text)
                except (ValueError, RecursionError):  # not JSON, a number too long, nested too deep
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
        total = math.prod(len(dim) for dim in dims)
        if total > MAX_ITEMS:
            where = next((k for k in ("grid", "zip", "vars") if k in doc), None)
            sizes = [(axis.name, axis.count) for axis in self.axes]
            self.problem(_line_of(doc, where) if where else doc.line, _too_many_items(total, sizes))
        self.raise_if_problems()

        # Columns read best as: the prompt, then what varies, then what is fixed.
        param_columns = list(dict.fromkeys(["prompt", *self.axis_params, *base]))
        renames = _column_renames(self.meta_columns)
        return Job(
            name=name,
            source=self.path,
            settings=settings,
            param_columns=param_columns,
            meta_columns=[renames.get(c, c) for c in self.meta_columns],
            axes=self.axes,
            blocks=[Block(base=base, dims=dims, where=self.shown, renames=renames)],
            renamed=renames,
        )

    def _note_axis(self, name: str, points: list[Point]) -> None:
        sample = [_axis_label(p) for p in points[:6]]
        self.axes.append(Axis(name=name, count=len(points), sample=sample))
        for point in points[:1]:
            for key in point.meta:
                if key not in self.meta_columns:
                    self.meta_columns.append(key)

    def _parse(self) -> _LineDict:
        loader: _LineLoader | None = None
        try:
            loader = _LineLoader(self.text)
            try:
                doc = loader.get_single_data()
            finally:
                loader.dispose()
        except _YamlLimit as exc:
            raise ManifestError([Problem(self.shown, exc.mark.line + 1, exc.message)])
        except RecursionError:
            # A safety net: MAX_YAML_DEPTH stops deep nesting long before Python's own limit.
            raise ManifestError(
                [Problem(self.shown, _yaml_position(loader), "values are nested too deeply; write them more simply")]
            )
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
        for key in LIMITS:
            if key not in doc:
                continue
            try:
                values[key] = parse_setting(key, doc[key])
            except ValueError as exc:
                self.problem(_line_of(doc, key), str(exc))
        if "ping_url" in doc:
            if problem := check_url("ping_url", doc["ping_url"]):
                self.problem(_line_of(doc, "ping_url"), problem)
            else:
                values["ping_url"] = doc["ping_url"].strip()
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
        if problem := _file_problem(target, "a CSV, TSV or text file"):
            if problem.startswith("no such file"):
                problem = f"not found (looked for {shown}); check the path, which is relative to the manifest"
            self.problem(line, f"referenced file {file_name!r} {problem}")
            return
        try:
            text = _read_text(target, shown)
            rows = _value_rows(target, shown, text, ref.get("column"), key)
        except ManifestError as exc:
            self.problems.extend(exc.problems)
            return
        if isinstance(rows, str):
            self.problem(line, rows)
            return
        for n, (file_line, value, meta) in enumerate(rows):
            if limit is not None and n >= limit:
                break
            yield self.coerce(key, value), meta, file_line, shown

    def _seeds(self, raw: Any, line: int | None) -> list[int]:
        if isinstance(raw, dict):
            return self._random_seeds(raw, line)
        items = raw if isinstance(raw, list) else [raw]
        seeds: list[int] = []
        for i, item in enumerate(items):
            item_line = _line_of(raw, i, line) if isinstance(raw, list) else line
            if isinstance(item, str) and (match := _SEED_RANGE.fullmatch(item)):
                low, high = _int(match[1]), _int(match[2])
                if isinstance(low, int) and isinstance(high, int) and low > high:
                    self.problem(item_line, f"seed range {item!r} runs backwards; write {high}-{low}")
                    continue
                for end in (low, high):
                    if problem := api_spec.check_seed(end):
                        self.problem(item_line, problem)
                        break
                else:
                    if len(seeds) + high - low + 1 > _SEED_COUNT:
                        self.problem(
                            item_line,
                            f"the seeds add up to more than {_SEED_COUNT:,}, the number of distinct seeds; "
                            "remove the overlapping ranges",
                        )
                        return []
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
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            self.problem(line, f"prompt template {text!r} is malformed ({exc}); write a literal brace as {{{{ or }}}}")
            return text
        parts = tuple((literal, name) for literal, name, _, _ in parsed)
        if all(name is None for _, name in parts):
            return "".join(literal for literal, _ in parts)  # only escaped braces
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier():
                self.problem(
                    line,
                    f"prompt template field {{{name}}} must be a plain name, e.g. {{animal}}; "
                    "write a literal brace as {{ or }}",
                )
                return text
            if spec or conversion:
                written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                self.problem(
                    line,
                    f"prompt template field {written} has a conversion or format; values go in as written, "
                    f"so write {{{name}}} (or a literal brace as {{{{ or }}}})",
                )
                return text
        template = Template(text, parts, line)
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


# --------------------------------------------------------------------------------------------
# CSV and TSV files: manifests and value files read the same way.
#
# A .tsv file is IANA text/tab-separated-values: no quoting at all, every cell exactly as written,
# so a prompt may begin with a quote. Any other table is CSV as in RFC 4180, with commas (or tabs,
# when the header has more tabs than commas): a cell that starts with a quote ends at the next
# lone quote, and "" inside it is one quote. A quote anywhere else is an ordinary character.


class _TableSyntax(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def _lines(text: str) -> list[str]:
    """Lines split at \\n, \\r\\n or \\r only: a prompt may hold U+2028, a form feed or U+0085."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()  # the file's last line end, not an empty last line
    return lines


def _tsv_records(text: str) -> Iterator[tuple[int, int, list[str]]]:
    for number, line in enumerate(_lines(text), start=1):
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
                    after = humanize.clip(bare.match(text, pos)[0], 30)
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
                match = bare.match(text, pos)
                cells.append(match[0])
                pos = match.end()
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
class _Table:
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

    def width_problem(self, cells: list[str]) -> str | None:
        if len(cells) <= len(self.names):
            return None
        if self.delimiter == "\t":
            fix = "a cell cannot hold a tab; remove it, or add a column to the header"
        else:
            fix = f"put cells that contain '{self.delimiter}' in double quotes"
        return f"row has {len(cells)} cells but the header has {len(self.names)}; {fix}"

    def header_problems(self) -> list[str]:
        seen: dict[str, str] = {}
        problems = []
        for name in self.names:
            if name and name.lower() in seen:
                problems.append(f"column {name!r} repeats column {seen[name.lower()]!r} (case is ignored); keep one")
            seen.setdefault(name.lower(), name)
        return problems


def _read_table(path: Path, shown: str, text: str) -> _Table | None:
    """A table's header, or None when the file is empty; ManifestError if the header is broken."""
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
        records = _tsv_records(text)
    else:
        header = _LINE_END.split(text, maxsplit=1)[0]
        delimiter = "\t" if header.count("\t") > header.count(",") else ","
        records = _csv_records(text, delimiter)
    try:
        first = next(records, None)
    except _TableSyntax as exc:
        raise ManifestError([Problem(shown, exc.line, exc.message)])
    if first is None:
        return None
    return _Table(shown, [name.strip() for name in first[2]], records, delimiter)


def _value_rows(path: Path, shown: str, text: str, column: Any, key: str) -> list[tuple[int, str, dict]] | str:
    """(line, value, other columns) for each row of a value file, or a message for the manifest's line.

    Problems inside the file itself raise ManifestError naming the file and its line.
    """
    if path.suffix.lower() not in (".csv", ".tsv"):
        if column is not None:
            return f"column: only applies to CSV/TSV files; {path.name} is read one value per line"
        return [(n, line, {}) for n, line in enumerate(_lines(text), start=1) if line.strip()]
    table = _read_table(path, shown, text)
    if table is None:
        return f"{path.name} is empty; it needs a header row"
    names = table.names
    if header_problems := table.header_problems():
        raise ManifestError([Problem(shown, 1, p) for p in header_problems])
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
    problems = []
    for line, cells in table.rows():
        if problem := table.width_problem(cells):
            problems.append(Problem(shown, line, problem))
            continue
        cells = cells + [""] * (len(names) - len(cells))
        meta = {name: cells[i] for i, name in enumerate(names) if i != index and name}
        rows.append((line, cells[index], meta))
    if problems:
        raise ManifestError(problems)
    return rows


class _CsvManifest(_Reader):
    """A CSV/TSV file whose header names API parameters: one row, one block of items."""

    def __init__(self, path: Path, shown: str, text: str):
        super().__init__(path, shown)
        self.text = text
        self.full = False  # the rows reached MAX_ITEMS: stop reading

    def job(self) -> Job:
        table = _read_table(self.path, self.shown, self.text)
        if table is None:
            raise ManifestError(
                [Problem(self.shown, 1, "the file is empty; it needs a header row naming API parameters")]
            )
        names = table.names
        for problem in table.header_problems():
            self.problem(1, problem)
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
        renames = _column_renames(meta.values())
        meta = {i: renames.get(name, name) for i, name in meta.items()}

        blocks: list[Block] = []
        axis_values: dict[str, dict[Any, None]] = {p: {} for p in params.values()}
        capped: set[str] = set()
        total = 0
        try:
            for line, cells in table.rows():
                if problem := table.width_problem(cells):
                    self.problem(line, problem)
                    continue
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
            name=self.path.stem if _NAME.fullmatch(self.path.stem) else "job",
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
        """The row's items as a block, or None after reporting a problem; total is the items so far."""
        before = len(self.problems)
        columns: list[tuple[str, list[Any]]] = []
        for i, key in params.items():
            cell = cells[i] if i < len(cells) else ""
            if cell == "" or (key != "prompt" and not cell.strip()):
                if key == "prompt":
                    self.problem(line, "prompt is empty; give the text to generate, or delete the row")
                continue
            # A '|' splits the cell into this row's own grid, and '\|' is a literal '|'. Any other
            # backslash is kept as written.
            parts = _UNESCAPED_PIPE.split(cell)
            if len(parts) == 1:
                values = [cell.replace("\\|", "|")]
            else:
                values = [p.strip().replace("\\|", "|") for p in parts]
            checked: list[Any] = []  # seed ranges stay range objects until the row's size is known
            for value in values:
                if key == "seed" and (match := _SEED_RANGE.fullmatch(value)):
                    low, high = _int(match[1]), _int(match[2])
                    bad = api_spec.check_seed(low) or api_spec.check_seed(high)
                    if bad or low > high:
                        self.problem(line, bad or f"seed range {value!r} runs backwards; write {high}-{low}")
                        continue
                    checked.append(range(low, high + 1))
                    continue
                checked.append(self.check_point(key, self.coerce(key, value), line))
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
        row_meta = {name: cells[i] if i < len(cells) else "" for i, name in meta.items()}
        # Metadata rides on the base as a zero-width dimension so every item of the row carries it.
        dims.insert(0, [Point({}, row_meta)])
        return Block(base=base, dims=dims, where=f"{self.shown}:{line}")


def _int(digits: str) -> int | str:
    """Digits as an int; text that is too long to convert stays text, which validation refuses."""
    try:
        return int(digits)
    except ValueError:
        return digits
