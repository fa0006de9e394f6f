"""A YAML manifest: defaults, a grid of axes, zip groups and template vars, with every problem
named by its line."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError, Problem
from batch_runner.job import yaml_lines
from batch_runner.job.blocks import MAX_ITEMS, Axis, Block, Job, Point, too_many_items
from batch_runner.job.columns import column_renames, near_parameter, parameter_named
from batch_runner.job.reader import Reader
from batch_runner.job.seeds import seed_axis
from batch_runner.job.templates import Template, parse_prompt, unknown_fields
from batch_runner.job.values import file_values
from batch_runner.job.yaml_lines import line_of
from batch_runner.settings import LIMITS, RunSettings, check_api, check_url, parse_setting

TOP_LEVEL_KEYS = ("name", "description", "defaults", "grid", "zip", "vars", *LIMITS, "ping_url", "api")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a job's name: it names the output folder


class YamlManifest(Reader):
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
            if parameter_named(key) or near_parameter(key):
                fix = f"API parameters go under defaults: or grid:, e.g. 'defaults: {{{key}: ...}}'"
            else:
                fix = f"did you mean {hint}?" if hint else "known keys are " + ", ".join(TOP_LEVEL_KEYS)
            self.problem(line_of(doc, key), f"unknown key {key!r}; {fix}")

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
        known = params_present | self.template_names | set(self.meta_columns)
        for template, line in self.templates:
            for problem in unknown_fields(template, known):
                self.problem(line, problem)
        total = math.prod(len(dim) for dim in dims)
        if total > MAX_ITEMS:
            where = next((k for k in ("grid", "zip", "vars") if k in doc), None)
            sizes = [(axis.name, axis.count) for axis in self.axes]
            self.problem(line_of(doc, where) if where else doc.line, too_many_items(total, sizes))
        self.raise_if_problems()

        # Columns read best as: the prompt, then what varies, then what is fixed.
        param_columns = list(dict.fromkeys(["prompt", *self.axis_params, *base]))
        renames = column_renames(self.meta_columns)
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

    def _parameter(self, key: Any, raw: Any, line: int | None) -> str | None:
        """The API parameter a defaults:/grid:/zip: key names (by columns.py's rule, as a CSV
        header is read), or None after reporting why it names none."""
        if parameter := parameter_named(key):
            return parameter
        if meant := near_parameter(key):
            self.problem(line, f"unknown parameter {key!r}; did you mean {meant}?")
        else:
            self.problem(line, api_spec.check_param(str(key), raw) or "")
        return None

    def check_point(self, name: str, value: Any, line: int | None, file: str | None = None) -> Any:
        # A value YAML itself changed (ON read as true, a prompt with ': ' read as a mapping) is
        # reported with the quoting that keeps it as written; values from files are plain text.
        if file is None and (trap := _yaml_trap(name, value)):
            self.problem(line, trap)
            return value
        if file is None and name == "color_palette" and (lost := self._lost_colours(value)):
            for member_line, problem in lost:
                self.problem(member_line or line, problem)
            return value
        return super().check_point(name, value, line, file)

    def _lost_colours(self, palette: Any) -> list[tuple[int | None, str]]:
        """A problem for each palette member whose unquoted '#hex' YAML read as a comment."""
        members = palette.get("members") if isinstance(palette, dict) else None
        if not isinstance(members, list):
            return []
        comments = yaml_lines.commented_colours(self.text)
        lost = []
        for number, member in enumerate(members, start=1):
            if isinstance(member, dict) and "color_hex" in member and member["color_hex"] is None:
                member_line = line_of(member, "color_hex")
                colour = comments.get(member_line or 0, "#RRGGBB")
                lost.append(
                    (
                        member_line,
                        f"color_palette member {number} color_hex: an unquoted {colour} starts a YAML comment, "
                        f'so the colour is lost; quote it: color_hex: "{colour}"',
                    )
                )
        return lost

    def _note_axis(self, name: str, points: list[Point]) -> None:
        sample = [_axis_label(p) for p in points[:6]]
        self.axes.append(Axis(name=name, count=len(points), sample=sample))
        for point in points[:1]:
            for key in point.meta:
                if key not in self.meta_columns:
                    self.meta_columns.append(key)

    def _parse(self) -> yaml_lines.LineDict:
        doc, duplicate_keys = yaml_lines.load(self.text, self.shown)
        if doc is None:
            raise ManifestError([Problem(self.shown, None, "the manifest is empty; see jobs/ for examples")])
        if not isinstance(doc, yaml_lines.LineDict):
            raise ManifestError(
                [Problem(self.shown, 1, "the manifest must be a mapping with name:, defaults: and grid:")]
            )
        for key, line in duplicate_keys:
            self.problem(line, f"key {key!r} is given twice; keep one")
        return doc

    def _name(self, doc: dict) -> str:
        name = doc.get("name", self.path.stem)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            self.problem(
                line_of(doc, "name"),
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
                self.problem(line_of(doc, key), str(exc))
        if "ping_url" in doc:
            if problem := check_url("ping_url", doc["ping_url"]):
                self.problem(line_of(doc, "ping_url"), problem)
            else:
                values["ping_url"] = doc["ping_url"].strip()
        if "api" in doc:
            if problem := check_api("api", doc["api"]):
                self.problem(line_of(doc, "api"), problem)
            else:
                values["api"] = doc["api"].strip().lower()
        return RunSettings(**values)

    def _defaults(self, doc: dict) -> dict[str, Any]:
        defaults = doc.get("defaults", {})
        if defaults is None:
            return {}
        if not isinstance(defaults, dict):
            self.problem(line_of(doc, "defaults"), "defaults must be a mapping of API parameters to one value each")
            return {}
        base = {}
        for written, value in defaults.items():
            line = line_of(defaults, written)
            key = self._parameter(written, value, line)
            if key is None:
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
            self.problem(line_of(doc, "grid"), "grid must be a mapping from API parameter to a list of values")
            return
        for written, raw in grid.items():
            line = line_of(grid, written)
            key = self._parameter(written, raw, line)
            if key is None:
                continue
            if key in base:
                self.problem(line, f"{key} is both in defaults: and grid:; remove it from one of them")
                self._values(key, raw, grid, written)  # its values' own problems are reported too
                continue
            self.axis_params.append(key)
            reported = len(self.problems)
            points = [Point({key: v}, meta) for v, meta in self._values(key, raw, grid, written)]
            if not points and len(self.problems) == reported:
                self.problem(line, f"grid.{key} has no values; give at least one or remove the axis")
                continue
            yield key, points

    def _zip(self, doc: dict, base: dict, taken: set[str]) -> list[Point]:
        block = doc.get("zip")
        if block is None:
            return []
        if not isinstance(block, dict) or not block:
            self.problem(line_of(doc, "zip"), "zip must be a mapping of API parameters to lists of equal length")
            return []
        columns: list[tuple[str, list[tuple[Any, dict]]]] = []
        for written, raw in block.items():
            line = line_of(block, written)
            key = self._parameter(written, raw, line)
            if key is None:
                continue
            if key in base or key in taken:
                self.problem(line, f"{key} is in zip: and also in defaults: or grid:; keep it in one place")
                self._values(key, raw, block, written)  # its values' own problems are reported too
                continue
            columns.append((key, self._values(key, raw, block, written)))
        self.zip_names = [key for key, _ in columns]
        self.axis_params.extend(self.zip_names)
        lengths = {key: len(values) for key, values in columns}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            self.problem(line_of(doc, "zip"), f"zip lists must have equal length ({detail}); make them match")
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
            self.problem(line_of(doc, "vars"), "vars must be a mapping of template names to lists of values")
            return
        for key, raw in block.items():
            line = line_of(block, key)
            if not isinstance(key, str) or not key.isidentifier():
                self.problem(line, f"vars name {key!r} must be a simple word (letters, digits, _)")
                continue
            if key in api_spec.PARAMETERS:
                self.problem(line, f"vars.{key} shadows an API parameter; put it under grid: instead")
                continue
            values = [(v, m) for v, m, _, _ in self._raw_values(raw, block, key, key)]
            self.template_names.add(key)
            yield key, [Point({}, {key: value, **meta}) for value, meta in values]

    def _values(self, key: str, raw: Any, parent: Any, where: Any) -> list[tuple[Any, dict]]:
        """An axis's validated values, each with the metadata that rides along with it."""
        from_file = isinstance(raw, dict) and "file" in raw
        if key == "seed" and not from_file:
            seeds = seed_axis(raw, line_of(parent, where), self.problem)
            return [(s, {}) for s in seeds]
        values = []
        for value, meta, line, file in self._raw_values(raw, parent, where, key):
            if key == "prompt" and isinstance(value, str) and file is None:
                values.append((self._prompt_value(value, line), meta))
            else:
                values.append((self.check_point(key, value, line, file), meta))
        return values

    def _raw_values(
        self, raw: Any, parent: Any, where: Any, key: str
    ) -> Iterator[tuple[Any, dict, int | None, str | None]]:
        line = line_of(parent, where)
        if isinstance(raw, dict) and "file" in raw:
            yield from file_values(self, raw, line, key)
            return
        if isinstance(raw, list):
            for i, value in enumerate(raw):
                yield value, {}, line_of(raw, i, line), None
            return
        if key == "color_palette" and isinstance(raw, dict):
            yield raw, {}, line, None  # one custom palette given where a list was expected
            return
        yield raw, {}, line, None

    def _prompt_value(self, text: str, line: int | None) -> str | Template:
        """An inline prompt; with {placeholders} it becomes a template filled per item."""
        value, problem = parse_prompt(text, line)
        if problem:
            self.problem(line, problem)
        elif isinstance(value, Template):
            self.templates.append((value, line))
        return value


def _axis_label(point: Point) -> Any:
    values = list(point.params.values()) or [v for v in point.meta.values()][:1]
    labels = [v.text if isinstance(v, Template) else v for v in values]
    return labels[0] if len(labels) == 1 else tuple(labels)


def _yaml_trap(name: str, value: Any) -> str | None:
    """A value that YAML, not the user, made invalid, with the quoting that fixes it."""
    if isinstance(value, bool) and name != "seed":
        if name == "magic_prompt_option":
            word = "ON" if value else "OFF"
            return (
                f"magic_prompt_option: YAML reads an unquoted {word} as {str(value).lower()}; "
                f'write it in quotes: magic_prompt_option: "{word}"'
            )
        return (
            f"{name}: YAML reads an unquoted yes, no, on, off, true or false as {str(value).lower()}; "
            "write the value in quotes"
        )
    if name in ("prompt", "negative_prompt") and isinstance(value, dict):
        if len(value) == 1:
            [(key, rest)] = value.items()
            written = f"{key}: {'' if rest is None else rest}".rstrip()
            return (
                f"{name} {written!r} was read by YAML as a key and a value, because of the ': ' in it; "
                f"quote the whole {name}: {json.dumps(written, ensure_ascii=False)}"
            )
        return f"{name} was read by YAML as a mapping (a ': ' in the text?); quote the whole {name}"
    return None
