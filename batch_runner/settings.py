"""Every setting of a run, and every default, written once: the Settings and Options records
below. Each field's metadata is its rule (a Limit, a choice, a URL...), where it may be set and
its flag's help, and everything else is derived from them:

- a manifest key for each Settings field (MANIFEST_KEYS, LIMITS);
- a keyword of batch_runner.run() and plan() for each field, checked by parse_named();
- a flag of `batch-runner plan`/`run` for each field (cli/options.py words them; help texts name
  other settings as {name}, which the command renders as its flags).

So a new setting is one field here (plus its type in RunKeywords, for type checkers: a test
holds the two together). Settings are the job's (flags override the manifest, which overrides
the defaults); Options are how one run sends, from flags or keywords only, never a manifest.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from enum import Enum
from typing import Any, Literal, TypedDict

from batch_runner.api import spec as api_spec
from batch_runner.errors import UsageError


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


@dataclass(frozen=True)
class Text:
    """A setting given as text, checked by `check` (name, value) -> problem or None."""

    check: Callable[[str, Any], str | None]


@dataclass(frozen=True)
class Choice:
    """One of a few words."""

    choices: tuple[str, ...]


@dataclass(frozen=True)
class Switch:
    """On or off; a flag that takes no value."""


Rule = Limit | Text | Choice | Switch

# The groups a setting's flag is shown in; None: the command's own options.
RUN_GROUP = "run settings (override the manifest)"
NIGHTLY_GROUP = "scheduled runs (cron, systemd timers; override the manifest)"


def knob(default: Any, rule: Rule, help: str, metavar: str | None = None, group: str | None = None) -> Any:
    """A Settings or Options field: its default, its rule, and its flag's help (which may
    name another setting as {name})."""
    return field(default=default, metadata={"rule": rule, "help": help, "metavar": metavar, "group": group})


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


# The provider's two APIs: v1 answers a POST with the image; v2 answers with a request id to
# poll. sync stays the default until async is proven against the real service.
API_MODES = ("sync", "async")

# The most requests in flight; the pacer opens as many as the learned rate needs (Little's
# law). 32 lets a Pro key (50 RPM at ~12.8 s, ~11 in flight) reach its ceiling with room for
# slow answers, and covers ~120 RPM at 12.8 s, with no flags.
DEFAULT_CONCURRENCY = 32
DEFAULT_MAX_WAIT_S = 900.0
DEFAULT_MAX_ATTEMPTS = 5  # tries per item for retryable errors
DEFAULT_TIMEOUT_S = 120.0  # a request's whole deadline: ~10x the typical 12.8 s generation
DEFAULT_LOG_INTERVAL_S = 30.0  # seconds between progress log lines


# Generous caps: a value past one is a typo (extra zeros, a wrong unit), never a real plan, and
# would hang or crash the run instead of failing here with the line to fix.
@dataclass(frozen=True)
class Settings:
    """A job's run settings, each resolved from the flags, else the manifest, else its default."""

    # One worker thread and one pooled HTTP connection each. At ~12.8 s a request, 256 workers
    # is ~1,200 requests a minute, 24x the Pro plan's 50 RPM; beyond that, threads and sockets
    # are what run out.
    concurrency: int = knob(
        DEFAULT_CONCURRENCY,
        Limit(whole=True, low=1, high=256),
        "most requests in flight; the pacer opens as many as the learned rate needs "
        f"(default: manifest, else {DEFAULT_CONCURRENCY})",
        "N",
        RUN_GROUP,
    )
    # Requests are spaced 60/rpm seconds apart. Below 0.01 (one request per 100 minutes) the
    # wait is surely a mistake and, for tiny values, too long for a timer; above 100,000 a
    # minute (1,667 a second) the spacing is below a millisecond, i.e. no limit at all.
    rpm: float | None = knob(
        None,
        Limit(whole=False, low=0.01, high=100_000),
        "your key's limit in requests per minute, if you know it: a ceiling never exceeded, and the starting pace",
        "N",
        RUN_GROUP,
    )
    # A budget, so 0 ("spend nothing") is allowed. $10 million is ~160 million images at
    # $0.063, 16 times the largest job allowed (manifest.MAX_ITEMS).
    max_cost: float | None = knob(
        None,
        Limit(whole=False, low=0, high=10_000_000, unit="$"),
        "never let spent + possibly billed + in flight pass this many dollars in this output folder, across runs",
        "USD",
        RUN_GROUP,
    )
    # The endpoint costs $0.063; $100 an image is a price in cents typed as dollars, or worse.
    price_per_image: float = knob(
        api_spec.PRICE_PER_IMAGE,
        Limit(whole=False, low=0, high=100, low_open=True, unit="$"),
        f"dollars per image when the server sends no x-cost (default {api_spec.PRICE_PER_IMAGE:g})",
        "USD",
        RUN_GROUP,
    )
    api: str = knob(  # "async": Segmind's v2 submit-and-poll API (see API_MODES)
        "sync",
        Text(check_api),
        "sync: v1, one request per image (default); async: v2, submit then poll, so a crash costs at most one submit",
        "sync|async",
        RUN_GROUP,
    )
    ping_url: str | None = knob(
        None,
        Text(check_url),
        "tell a monitor how the run went: URL/start, then URL on success or URL/<exit code> (healthchecks.io)",
        "URL",
        NIGHTLY_GROUP,
    )
    # A run's window, e.g. 6h for a night; a week is the longest window that makes sense.
    max_duration: float | None = knob(
        None,
        Limit(whole=False, low=0, high=7 * 86_400, low_open=True, unit="s"),
        "stop cleanly when this much time has passed (e.g. 6h, 90m, 3600), exit 75: the next run goes on",
        "TIME",
        NIGHTLY_GROUP,
    )
    # One night's share of max_cost, for scheduled runs: spent, it ends the night like a window.
    max_cost_per_run: float | None = knob(
        None,
        Limit(whole=False, low=0, high=10_000_000, unit="$"),
        "this run's share of the budget; once spent the run stops with exit 75 and the next run goes on; "
        "{max_cost} stays the cap for all runs of the output folder",
        "USD",
        NIGHTLY_GROUP,
    )
    # How long the pool waits out an unreachable or rate-limiting server before it stops with
    # "try later" (exit 75). A day is the longest wait a nightly job can use.
    max_wait: float = knob(
        DEFAULT_MAX_WAIT_S,
        Limit(whole=False, low=0, high=86_400, low_open=True, unit="s"),
        "how long the pool waits for an unreachable or rate-limiting server before it stops with exit 75 "
        f"(default {DEFAULT_MAX_WAIT_S:g})",
        "SECONDS",
        NIGHTLY_GROUP,
    )


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

    retry_failed: bool = knob(False, Switch(), "send items that failed in earlier runs again")
    # Past 100 tries an item is not unlucky: the run should stop and say why.
    max_attempts: int = knob(
        DEFAULT_MAX_ATTEMPTS, Limit(whole=True, low=1, high=100), "tries per item for retryable errors"
    )
    timeout: float = knob(
        DEFAULT_TIMEOUT_S,
        Limit(whole=False, low=0, high=86_400, low_open=True, unit="s"),
        "overall seconds allowed per request",
    )
    progress: ProgressMode = knob(
        ProgressMode.AUTO,
        Choice(tuple(mode.value for mode in ProgressMode)),
        "bar on a terminal, log lines otherwise (auto)",
    )
    log_interval: float = knob(
        DEFAULT_LOG_INTERVAL_S,
        Limit(whole=False, low=0, high=86_400, low_open=True, unit="s"),
        "seconds between progress log lines",
    )
    # How long to queue behind another run of the same output folder; 0 exits 5 at once.
    wait_lock: float = knob(
        0.0,
        Limit(whole=False, low=0, high=86_400, unit="s"),
        "if another run holds the output folder, wait up to this long for it (default: exit 5 at once)",
        "SECONDS",
    )


class SettingKeywords(TypedDict, total=False):
    """Settings by name, as run() and plan() take them; None: not set here. Durations may be
    written as text ("6h", "90m")."""

    concurrency: int | None
    rpm: float | None
    max_cost: float | None
    price_per_image: float | None
    api: Literal["sync", "async"] | None
    ping_url: str | None
    max_duration: float | str | None
    max_cost_per_run: float | None
    max_wait: float | str | None


class RunKeywords(SettingKeywords, total=False):
    """Settings and run options by name, as run() takes them."""

    retry_failed: bool | None
    max_attempts: int | None
    timeout: float | str | None
    progress: ProgressMode | Literal["auto", "bar", "log", "quiet"] | None
    log_interval: float | str | None
    wait_lock: float | str | None


def rule_of(f: Field[Any]) -> Rule:
    return f.metadata["rule"]


SETTING_FIELDS: tuple[Field[Any], ...] = fields(Settings)
OPTION_FIELDS: tuple[Field[Any], ...] = fields(Options)
# A manifest's keys: every setting. LIMITS and OPTION_LIMITS: the numeric ones, by name.
MANIFEST_KEYS: tuple[str, ...] = tuple(f.name for f in SETTING_FIELDS)
LIMITS: dict[str, Limit] = {f.name: r for f in SETTING_FIELDS if isinstance(r := rule_of(f), Limit)}
OPTION_LIMITS: dict[str, Limit] = {f.name: r for f in OPTION_FIELDS if isinstance(r := rule_of(f), Limit)}
_RULES: dict[str, Rule] = {f.name: rule_of(f) for f in (*SETTING_FIELDS, *OPTION_FIELDS)}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def check_setting(name: str, value: Any) -> str | None:
    """A problem with one numeric setting's value, phrased with its fix, or None when it is valid."""
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
    """A numeric setting's value from a flag's text or a manifest's value; ValueError says what
    to fix.

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


def parse_named(name: str, raw: Any) -> Any:
    """One setting or option given by name (a manifest key, run()'s keyword, a flag's text),
    checked by its rule; ValueError says what to fix, KeyError means no such name."""
    rule = _RULES[name]
    if isinstance(rule, Limit):
        return parse_setting(name, raw)
    if isinstance(rule, Text):
        if problem := rule.check(name, raw):
            raise ValueError(problem)
        return raw.strip().lower() if rule.check is check_api else raw.strip()
    if isinstance(rule, Switch):
        if not isinstance(raw, bool):
            raise ValueError(f"{name} {raw!r} is not True or False")
        return raw
    try:
        return ProgressMode(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a progress mode; use one of {', '.join(rule.choices)}") from None


class RunSettings:
    """The settings one source sets (a manifest, or the flags), by name; an unset one reads as
    None. Made only of Settings' names, each already checked by its rule."""

    # Its fields are Settings' own, so dataclasses.fields(RunSettings) lists them as before.
    __dataclass_fields__ = {f.name: f for f in SETTING_FIELDS}

    def __init__(self, **values: Any):
        unknown = set(values) - set(MANIFEST_KEYS)
        if unknown:
            raise TypeError(f"not run settings: {sorted(unknown)}")
        self._values = {name: value for name, value in values.items() if value is not None}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in MANIFEST_KEYS:
            raise AttributeError(name)
        return self._values.get(name)

    def items(self) -> Mapping[str, Any]:
        """The settings set here, by name."""
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunSettings) and other.items() == self.items()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items(), key=lambda kv: kv[0])))

    def __repr__(self) -> str:
        return "RunSettings(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


def resolve(manifest: RunSettings, flags: RunSettings) -> Settings:
    """Each setting from the flags, else the manifest, else its default."""
    chosen = {**manifest.items(), **flags.items()}
    if "concurrency" in chosen:
        chosen["concurrency"] = int(chosen["concurrency"])
    if "price_per_image" in chosen:
        chosen["price_per_image"] = float(chosen["price_per_image"])
    return Settings(**chosen)


def split_named(values: Mapping[str, object]) -> tuple[RunSettings, Options]:
    """Settings and options by name, each checked; UsageError names an unknown one and its fix."""
    known = sorted(_RULES)
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
    settings = RunSettings(**{k: v for k, v in chosen.items() if k in MANIFEST_KEYS})
    return settings, Options(**{k: v for k, v in chosen.items() if k not in MANIFEST_KEYS})
