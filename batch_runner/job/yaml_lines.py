"""YAML with line numbers: mappings and lists remember where each entry was written, so every
problem can name its line. Input PyYAML would accept but a manifest must not (nesting too deep,
a "billion laughs" of aliases, lone surrogates, numbers too long to convert) is refused here."""

from __future__ import annotations

import re
from typing import Any

import yaml

from batch_runner.errors import ManifestError, Problem

# A manifest is a few levels deep (grid: → axis → list → palette → members); deeper nesting is a
# mistake, and thousands of levels would exhaust Python's recursion limit.
MAX_YAML_DEPTH = 64
# Values after YAML anchors and aliases (*name) are expanded, so a "billion laughs" file is
# refused instead of taking the machine's memory. A list of a million prompts is a million values.
MAX_YAML_VALUES = 5_000_000
_SURROGATE = re.compile("[\ud800-\udfff]")


# The class names show in messages ("prompt must be text, got _LineDict {...}"): kept as they were.
class _LineDict(dict):
    line: int = 0
    lines: dict[Any, int]


class _LineList(list):
    line: int = 0
    lines: list[int]


LineDict = _LineDict  # the public names
LineList = _LineList


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

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
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
        size: int
        if isinstance(node, yaml.ScalarNode):
            size = 1
            if _SURROGATE.search(node.value):
                node.value = _join_surrogates(node.value, node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes.get(id(child), 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        else:
            return node
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


def load(text: str, shown: str) -> tuple[Any, list[tuple[Any, int]]]:
    """The document (mappings as _LineDict, lists as _LineList) and the keys given twice, with
    their lines; ManifestError naming the line where the text is not YAML or breaks a limit."""
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except _YamlLimit as exc:
        raise ManifestError([Problem(shown, exc.mark.line + 1, exc.message)])
    except RecursionError:
        # A safety net: MAX_YAML_DEPTH stops deep nesting long before Python's own limit.
        raise ManifestError(
            [Problem(shown, _yaml_position(loader), "values are nested too deeply; write them more simply")]
        )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        elif isinstance(exc, yaml.reader.ReaderError):
            line = text.count("\n", 0, exc.position) + 1
        else:
            line = None
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if hex_line := _commented_colour(text):
            number, colour = hex_line
            raise ManifestError(
                [
                    Problem(
                        shown,
                        number,
                        f"broken YAML: an unquoted {colour} starts a comment, which cuts the line short; "
                        f'quote the colour: "{colour}"',
                    )
                ]
            )
        if line is not None:
            line = min(line, max(1, len(text.splitlines())))  # the end of the stream is the last line
        raise ManifestError([Problem(shown, line, f"broken YAML: {what}; check indentation and quoting")])
    return doc, loader.duplicate_keys


# A '#' after a space or a flow indicator starts a comment in YAML: 'color_hex: #FF8800' or
# '[#FF8800]' loses the colour, and in a flow mapping the rest of the line with it.
_COMMENTED_COLOUR = re.compile(r"(?:^|[\s\[{,])(#[0-9A-Fa-f]{3}(?:[0-9A-Fa-f]{3})?)\b")


def commented_colours(text: str) -> dict[int, str]:
    """{line: colour} for each unquoted '#hex' colour, which YAML reads as a comment."""
    found = {}
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split("#", 1)
        if len(code) == 1 or code[0].count('"') % 2 or code[0].count("'") % 2:
            continue  # no '#', or one inside quotes
        if match := _COMMENTED_COLOUR.search(line, len(code[0]) - 1 if code[0] else 0):
            found[number] = match[1]
    return found


def _commented_colour(text: str) -> tuple[int, str] | None:
    return next(iter(commented_colours(text).items()), None)


def _yaml_position(loader: yaml.SafeLoader | None) -> int | None:
    try:
        return loader.get_mark().line + 1 if loader else None
    except Exception:  # noqa: BLE001 - only a better message is lost
        return None


def line_of(container: Any, key: Any, fallback: int | None = None) -> int | None:
    """The line where container's entry key was written (a mapping's key, a list's index), else
    the container's own line, else fallback."""
    lines = getattr(container, "lines", None)
    if isinstance(lines, dict):
        return lines.get(key, fallback)
    if isinstance(lines, list) and isinstance(key, int) and key < len(lines):
        return lines[key]
    return getattr(container, "line", None) or fallback
