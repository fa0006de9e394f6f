"""The flags of every setting and run option, derived from settings.py's records: one flag per
field, checked by the field's rule (the same rule as a manifest's key and run()'s keyword), its
help from the field with other settings named as flags. Nothing here restates a default."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import Field
from typing import Any

from batch_runner.errors import EndpointMismatch, KeyProblem, MixedOutput, OptionError, UsageError
from batch_runner.job.manifest import Job, load_job
from batch_runner.launch import API_KEY_ENV
from batch_runner.settings import (
    MANIFEST_KEYS,
    OPTION_FIELDS,
    SETTING_FIELDS,
    Choice,
    Limit,
    Options,
    RunSettings,
    Settings,
    Switch,
    Text,
    parse_named,
    resolve,
    rule_of,
)


def flag(name: str) -> str:
    """A setting's flag: max_cost -> --max-cost."""
    return "--" + name.replace("_", "-")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def setting(name: str) -> Callable[[str], Any]:
    """The argparse type of a setting's or an option's flag: the same rule as everywhere, and
    the problem worded with the flag."""

    def parse(text: str) -> Any:
        try:
            return parse_named(name, text)
        except ValueError as exc:
            message = str(exc)
            if isinstance(rule_of(_FIELDS[name]), Text) and message.startswith(name + " "):
                message = flag(name) + message[len(name) :]
            raise argparse.ArgumentTypeError(message)

    return parse


_FIELDS: dict[str, Field[Any]] = {f.name: f for f in (*SETTING_FIELDS, *OPTION_FIELDS)}


def _help(f: Field[Any]) -> str:
    return str(f.metadata["help"]).format(**{name: flag(name) for name in _FIELDS})


def _add(parser: argparse.ArgumentParser | Any, f: Field[Any], default: Any) -> None:
    rule = rule_of(f)
    kwargs: dict[str, Any] = {"help": _help(f)}
    if f.metadata["metavar"]:
        kwargs["metavar"] = f.metadata["metavar"]
    if isinstance(rule, Switch):
        parser.add_argument(flag(f.name), action="store_true", help=kwargs["help"])
        return
    if isinstance(rule, Choice):
        kwargs["choices"] = list(rule.choices)
        default = getattr(default, "value", default)
    elif isinstance(rule, (Limit, Text)):
        kwargs["type"] = setting(f.name)
    parser.add_argument(flag(f.name), default=default, **kwargs)


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    """A flag per setting, in its group; unset, a flag leaves the manifest's value (None)."""
    groups: dict[str, Any] = {}
    for f in SETTING_FIELDS:
        title = f.metadata["group"]
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        _add(group, f, None)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """A flag per run option, defaulting to the option's own default."""
    for f in OPTION_FIELDS:
        _add(parser, f, f.default)


def flag_settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings(**{name: getattr(args, name, None) for name in MANIFEST_KEYS})


def flag_options(args: argparse.Namespace) -> Options:
    return Options(**{f.name: parse_named(f.name, getattr(args, f.name)) for f in OPTION_FIELDS})


def load(args: argparse.Namespace) -> tuple[Job, Settings]:
    """The job named on the command line, and its settings: the flags over the manifest."""
    job = load_job(args.job)
    return job, resolve(job.settings, flag_settings(args))


def worded(exc: UsageError) -> str:
    """A structured error from below cli/ (worded there for Python callers, with keywords),
    worded for the command, with its flags."""
    if isinstance(exc, OptionError):
        return exc.worded(flag)
    if isinstance(exc, EndpointMismatch):
        return exc.worded(lambda url: f"--endpoint {url}", lambda api: f"--api {api}")
    if isinstance(exc, KeyProblem):
        if exc.source is None:
            return f"no API key: set {API_KEY_ENV} or pass --api-key-file FILE (or try the job for free with --sandbox)"
        where = {"file": f"--api-key-file {exc.path}: ", "env": f"${API_KEY_ENV}: "}.get(exc.source or "", "")
        return where + exc.problem
    if isinstance(exc, MixedOutput):
        return f"{exc} Choose another --output."
    return str(exc)
