"""Prompt templates: a prompt with {placeholders}, filled from each item's other values."""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from batch_runner.api import spec as api_spec


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


def parse_prompt(text: str, line: int | None) -> tuple[str | Template, str | None]:
    """An inline prompt as it will be sent: the text, or a Template when it has {placeholders};
    and the problem with it, or None."""
    if "{" not in text:
        return text, api_spec.check_prompt(text)
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        return text, f"prompt template {text!r} is malformed ({exc}); write a literal brace as {{{{ or }}}}"
    parts = tuple((literal, name) for literal, name, _, _ in parsed)
    if all(name is None for _, name in parts):
        return "".join(literal for literal, _ in parts), None  # only escaped braces
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            return text, (
                f"prompt template field {{{name}}} must be a plain name, e.g. {{animal}}; "
                "write a literal brace as {{ or }}"
            )
        if spec or conversion:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return text, (
                f"prompt template field {written} has a conversion or format; values go in as written, "
                f"so write {{{name}}} (or a literal brace as {{{{ or }}}})"
            )
    return Template(text, parts, line), None


def unknown_fields(template: Template, known: Iterable[str]) -> list[str]:
    """A problem for each field no axis or vars: entry fills (a template cannot fill itself)."""
    known = set(known)
    problems = []
    for name in template.fields:
        if name == "prompt" or name not in known:
            names = sorted(known - {"prompt"})
            problems.append(
                f"prompt template uses {{{name}}}, which no axis or vars: entry defines; "
                f"add it under vars: (known: {', '.join(names) or 'none'}) or write a literal brace as {{{{"
            )
    return problems
