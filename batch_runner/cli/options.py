"""The flags several commands share, and their parsers: written once, checked by settings.py's
rules (the same rules as a manifest's keys and run()'s keywords)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.job.manifest import Job, load_job
from batch_runner.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_WAIT_S,
    RunSettings,
    Settings,
    check_api,
    check_url,
    parse_setting,
    resolve,
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def setting(name: str) -> Callable[[str], int | float]:
    """The argparse type of a setting's or an option's flag: the same limits as everywhere."""

    def parse(text: str) -> int | float:
        try:
            return parse_setting(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))

    return parse


def _url(text: str) -> str:
    if problem := check_url("--ping-url", text):
        raise argparse.ArgumentTypeError(problem)
    return text.strip()


def _api(text: str) -> str:
    if problem := check_api("--api", text):
        raise argparse.ArgumentTypeError(problem)
    return text.strip().lower()


# Every run setting's flag: (group, flag, metavar, help). The value's limits live in
# settings.LIMITS, shared with the manifest's keys; --ping-url and --api are text settings.
_SETTINGS_GROUP = "run settings (override the manifest)"
_NIGHTLY_GROUP = "scheduled runs (cron, systemd timers; override the manifest)"
_SETTING_FLAGS: list[tuple[str, str, str, str]] = [
    (_SETTINGS_GROUP, "--concurrency", "N",
     "most requests in flight; the pacer opens as many as the learned rate needs "
     f"(default: manifest, else {DEFAULT_CONCURRENCY})"),
    (_SETTINGS_GROUP, "--rpm", "N",
     "your key's limit in requests per minute, if you know it: a ceiling never exceeded, and the starting pace"),
    (_SETTINGS_GROUP, "--max-cost", "USD",
     "never let spent + possibly billed + in flight pass this many dollars in this output folder, across runs"),
    (_SETTINGS_GROUP, "--price-per-image", "USD",
     f"dollars per image when the server sends no x-cost (default {api_spec.PRICE_PER_IMAGE:g})"),
    (_SETTINGS_GROUP, "--api", "sync|async",
     "sync: v1, one request per image (default); async: v2, submit then poll, so a crash costs at most one submit"),
    (_NIGHTLY_GROUP, "--ping-url", "URL",
     "tell a monitor how the run went: URL/start, then URL on success or URL/<exit code> (healthchecks.io)"),
    (_NIGHTLY_GROUP, "--max-duration", "TIME",
     "stop cleanly when this much time has passed (e.g. 6h, 90m, 3600), exit 75: the next run goes on"),
    (_NIGHTLY_GROUP, "--max-cost-per-run", "USD",
     "this run's share of the budget; --max-cost stays the cap for all runs of the output folder"),
    (_NIGHTLY_GROUP, "--max-wait", "SECONDS",
     "how long the pool waits for an unreachable or rate-limiting server before it stops with exit 75 "
     f"(default {DEFAULT_MAX_WAIT_S:g})"),
]  # fmt: skip

_TEXT_SETTINGS: dict[str, Callable[[str], str]] = {"ping_url": _url, "api": _api}


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, Any] = {}
    for title, flag, metavar, help_text in _SETTING_FLAGS:
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        name = flag[2:].replace("-", "_")
        kind = _TEXT_SETTINGS.get(name) or setting(name)
        group.add_argument(flag, type=kind, metavar=metavar, help=help_text)


def flag_settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings(**{f.name: getattr(args, f.name, None) for f in fields(RunSettings)})


def load(args: argparse.Namespace) -> tuple[Job, Settings]:
    """The job named on the command line, and its settings: the flags over the manifest."""
    job = load_job(args.job)
    return job, resolve(job.settings, flag_settings(args))
