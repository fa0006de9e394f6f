"""Run settings: command-line flags override the manifest, which overrides the defaults.

The limits of every setting are written once, in LIMITS, and checked the same way whether the
value comes from a flag (`--concurrency 8`), a manifest key (`concurrency: 8`) or a keyword of
`batch_runner.run(concurrency=8)`. Every default is written once, here (the price per image in
api/spec.py). To add a setting: a row in LIMITS, a field in RunSettings and in Settings, and a
row in cli/options.py's flag table. Run options (how one run sends: attempts, timeout, progress)
are flags and keywords only, never manifest keys: OPTION_LIMITS and Options.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from batch_runner.api import spec as api_spec
from batch_runner.errors import UsageError

# The most requests in flight; the pacer opens as many as the learned rate needs (Little's
# law). 32 lets a Pro key (50 RPM at ~12.8 s, ~11 in flight) reach its ceiling with room for
# slow answers, and covers ~120 RPM at 12.8 s, with no flags.
DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True)
class Limit:
    """The values a setting accepts: a whole number or any finite number, from low to high."""

    whole: bool  # a whole number (concurrency) rather than any number (dollars, rates)
    low: float
    high: float
    low_open: bool = False  # low itself is not allowed: "more than 0" rather than "0 or more"
    unit: str = ""  # "$" for dollars, "s" for a duration (also written 6h, 90m, 1h30m)

    def rule(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        if self.unit == "$":
            kind = "a number of dollars"
        if self.unit == "s":
            kind = "a duration in seconds (or e.g. 90m, 6h)"
        if self.low_open:
            return f"{kind} above {_number(self.low)}, up to {_number(self.high)}"
        return f"{kind} from {_number(self.low)} to {_number(self.high)}"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


# Generous caps: a value past one is a typo (extra zeros, a wrong unit), never a real plan, and
# would hang or crash the run instead of failing here with the line to fix.
LIMITS: dict[str, Limit] = {
    # One worker thread and one pooled HTTP connection each. At ~12.8 s a request, 256 workers
    # is ~1,200 requests a minute, 24x the Pro plan's 50 RPM; beyond that, threads and sockets
    # are what run out.
    "concurrency": Limit(whole=True, low=1, high=256),
    # Requests are spaced 60/rpm seconds apart. Below 0.01 (one request per 100 minutes) the
    # wait is surely a mistake and, for tiny values, too long for a timer; above 100,000 a
    # minute (1,667 a second) the spacing is below a millisecond, i.e. no limit at all.
    "rpm": Limit(whole=False, low=0.01, high=100_000),
    # A budget, so 0 ("spend nothing") is allowed. $10 million is ~160 million images at
    # $0.063, 16 times the largest job allowed (manifest.MAX_ITEMS).
    "max_cost": Limit(whole=False, low=0, high=10_000_000, unit="$"),
    # The endpoint costs $0.063; $100 an image is a price in cents typed as dollars, or worse.
    "price_per_image": Limit(whole=False, low=0, high=100, low_open=True, unit="$"),
    # One night's share of max_cost, for scheduled runs.
    "max_cost_per_run": Limit(whole=False, low=0, high=10_000_000, unit="$"),
    # How long the pool waits out an unreachable or rate-limiting server before it stops with
    # "try later" (exit 75). A day is the longest wait a nightly job can use.
    "max_wait": Limit(whole=False, low=0, high=86_400, low_open=True, unit="s"),
    # A run's window, e.g. 6h for a night; a week is the longest window that makes sense.
    "max_duration": Limit(whole=False, low=0, high=7 * 86_400, low_open=True, unit="s"),
}
DEFAULT_MAX_WAIT_S = 900.0

# Run options: how this run sends, not what the job is, so they come from flags or run()'s
# keywords and never from a manifest. Checked by the same rules as the settings above.
DEFAULT_MAX_ATTEMPTS = 5  # tries per item for retryable errors
DEFAULT_TIMEOUT_S = 120.0  # a request's whole deadline: ~10x the typical 12.8 s generation
DEFAULT_LOG_INTERVAL_S = 30.0  # seconds between progress log lines
OPTION_LIMITS: dict[str, Limit] = {
    # Past 100 tries an item is not unlucky: the run should stop and say why.
    "max_attempts": Limit(whole=True, low=1, high=100),
    "timeout": Limit(whole=False, low=0, high=86_400, low_open=True, unit="s"),
    "log_interval": Limit(whole=False, low=0, high=86_400, low_open=True, unit="s"),
    # How long to queue behind another run of the same output folder; 0 exits 5 at once.
    "wait_lock": Limit(whole=False, low=0, high=86_400, unit="s"),
}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def check_setting(name: str, value: Any) -> str | None:
    """A problem with one setting's value, phrased with its fix, or None when it is valid."""
    limit = LIMITS.get(name) or OPTION_LIMITS[name]
    fix = f"use {limit.rule()}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} {value!r} is not a number; {fix}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} {value!r} is not a finite number; {fix}"
    too_low = value <= limit.low if limit.low_open else value < limit.low
    if too_low or value > limit.high:
        return f"{name} {_number(value)} is out of range; {fix}"
    if limit.whole and not isinstance(value, int):
        return f"{name} {value!r} is not a whole number; {fix}"
    return None


def parse_setting(name: str, raw: Any) -> int | float:
    """A setting's value from a flag's text or a manifest's value; ValueError says what to fix.

    Text is read as a flag would be ("1e3", " 8 "), so `max_cost: 1e3` (which YAML 1.1 reads
    as text) means what it says, and "nan" or "inf" are refused like any other bad number.
    """
    value = raw
    limit = LIMITS.get(name) or OPTION_LIMITS[name]
    if isinstance(raw, str) and limit.unit == "s" and (match := _DURATION.fullmatch(raw.strip().lower())):
        if any(match.groups()):
            hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            value = hours * 3600 + minutes * 60 + seconds
    elif isinstance(raw, str):
        text = raw.strip()
        for kind in (int, float):  # "4" is an int; "4.5", "1e3", "nan" are floats
            try:
                value = kind(text)
                break
            except ValueError:
                continue
    problem = check_setting(name, value)
    if problem:
        raise ValueError(problem)
    return value


@dataclass(frozen=True)
class RunSettings:
    """Run settings a manifest or the flags may carry; None means 'not set here'."""

    concurrency: int | None = None
    rpm: float | None = None
    max_cost: float | None = None
    price_per_image: float | None = None
    max_cost_per_run: float | None = None
    max_wait: float | None = None
    max_duration: float | None = None
    ping_url: str | None = None
    api: str | None = None


@dataclass(frozen=True)
class Settings:
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: float | None = None
    max_cost: float | None = None
    price_per_image: float = api_spec.PRICE_PER_IMAGE
    max_cost_per_run: float | None = None
    max_wait: float = DEFAULT_MAX_WAIT_S
    max_duration: float | None = None
    ping_url: str | None = None
    api: str = "sync"  # "async": Segmind's v2 submit-and-poll API (see API_MODES)


# The provider's two APIs: v1 answers a POST with the image; v2 answers with a request id to
# poll. sync stays the default until async is proven against the real service.
API_MODES = ("sync", "async")


def check_api(name: str, value: Any) -> str | None:
    """The API mode: sync (v1) or async (v2)."""
    if not isinstance(value, str) or value.strip().lower() not in API_MODES:
        return f"{name} {value!r} is not an API mode; use sync (v1, the default) or async (v2, submit and poll)"
    return None


def check_url(name: str, value: Any) -> str | None:
    """A monitor's URL: http or https, with a host."""
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^/\s]+\S*", value.strip()):
        return f"{name} {value!r} is not a URL; use e.g. https://hc-ping.com/<uuid>"
    return None


def resolve(manifest: RunSettings, flags: RunSettings) -> Settings:
    """Each setting from the flags, else the manifest, else its default."""
    chosen: dict[str, Any] = {}
    for f in fields(RunSettings):
        for source in (flags, manifest):
            value = getattr(source, f.name)
            if value is not None:
                chosen[f.name] = value
                break
    if "concurrency" in chosen:
        chosen["concurrency"] = int(chosen["concurrency"])
    if "price_per_image" in chosen:
        chosen["price_per_image"] = float(chosen["price_per_image"])
    return Settings(**chosen)


class ProgressMode(str, Enum):
    """How a run shows its progress: `auto` is a bar on a terminal and log lines otherwise."""

    AUTO = "auto"
    BAR = "bar"
    LOG = "log"
    QUIET = "quiet"  # nothing while it runs (the CLI holds its messages back unless the news is bad)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Options:
    """How one run sends: from flags or run()'s keywords, never from a manifest."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT_S
    retry_failed: bool = False  # send items that failed in earlier runs again
    progress: ProgressMode = ProgressMode.AUTO
    log_interval: float = DEFAULT_LOG_INTERVAL_S
    wait_lock: float = 0.0


def parse_named(name: str, raw: Any) -> Any:
    """One setting or option given by name (run()'s keywords), checked by the rules its flag
    and its manifest key use; ValueError says what to fix, KeyError means no such name."""
    if name in LIMITS or name in OPTION_LIMITS:
        return parse_setting(name, raw)
    if name == "ping_url":
        if problem := check_url(name, raw):
            raise ValueError(problem)
        return raw.strip()
    if name == "api":
        if problem := check_api(name, raw):
            raise ValueError(problem)
        return raw.strip().lower()
    if name == "retry_failed":
        if not isinstance(raw, bool):
            raise ValueError(f"retry_failed {raw!r} is not True or False")
        return raw
    if name == "progress":
        try:
            return ProgressMode(raw)
        except ValueError:
            modes = ", ".join(m.value for m in ProgressMode)
            raise ValueError(f"progress {raw!r} is not a progress mode; use one of {modes}") from None
    raise KeyError(name)


def split_named(values: Mapping[str, Any]) -> tuple[RunSettings, Options]:
    """Settings and options by name, each checked; UsageError names an unknown one and its fix."""
    setting_names = {f.name for f in fields(RunSettings)}
    known = sorted(setting_names | {f.name for f in fields(Options)})
    chosen: dict[str, Any] = {}
    problems = []
    for name, raw in values.items():
        if raw is None:
            continue  # not set here: the manifest's value, else the default
        try:
            chosen[name] = parse_named(name, raw)
        except KeyError:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            problems.append(f"{name!r} is not a run setting; {hint}use one of {', '.join(known)}")
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("; ".join(problems))
    settings = RunSettings(**{k: v for k, v in chosen.items() if k in setting_names})
    return settings, Options(**{k: v for k, v in chosen.items() if k not in setting_names})
