"""Every error batch_runner raises to its caller, under one base (as httpx does):

    BatchRunnerError              anything batch_runner raises on purpose; catch this one
    ├── ManifestError             the job cannot be planned: every Problem (file, line, fix) listed
    ├── UsageError                a bad setting, key, endpoint or folder: nothing was sent
    │   ├── MixedOutput           the folder holds the other kind of results (sandbox or real)
    │   ├── EndpointMismatch      the endpoint is not the URL the API mode speaks (v1 vs v2)
    │   ├── KeyProblem            the API key is missing, unreadable or not a key
    │   └── OptionError           one named option's value is wrong (a report's rows, ...)
    └── AlreadyRunning            another run holds the output folder (store/output_dir.py)

A stopped run is not an error: it returns a RunOutcome with its stop_reason.

Messages below cli/ name no flag. A structured error carries its facts as attributes, and its
str() is worded for a Python caller (run()'s keywords); the command words the same facts with
its flags (cli/), so neither audience is told of an option it does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class BatchRunnerError(Exception):
    """The base of every error batch_runner raises on purpose (see the tree above)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is, what it is and how to fix it."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class ManifestError(BatchRunnerError):
    """The job cannot be planned; every problem found is listed."""

    def __init__(self, problems: list[Problem]):
        # In reading order, so the list can be fixed from the top of each file down.
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0))
        super().__init__("\n".join(map(str, problems)))


class UsageError(BatchRunnerError):
    """A bad argument, setting or environment; exit code 2 like a bad manifest. Nothing was sent."""


class MixedOutput(UsageError):
    """The output folder holds the other kind of results (sandbox placeholders or real ones)."""

    def __init__(self, path: Path, holds_sandbox: bool):
        self.path, self.holds_sandbox = path, holds_sandbox
        what = "sandbox placeholders" if holds_sandbox else "real results"
        run = "real" if holds_sandbox else "sandbox"
        super().__init__(f"{path} holds {what}; a {run} run must not mix with them.")


class EndpointMismatch(UsageError):
    """The endpoint is the other API's URL: v2 (submit and poll) given to the sync mode, or a
    v1 URL given to the async mode. Posting to v2 as if it were v1 would pay for a job per
    attempt and never fetch one; polling a v1 URL as v2 would bill every submit.

    `suggested` is the URL that mode would use instead."""

    def __init__(self, endpoint: str, api: str, suggested: str):
        self.endpoint, self.api, self.suggested = endpoint, api, suggested
        super().__init__(self.worded("endpoint {!r}".format, "api={!r}".format))

    def worded(self, endpoint: Callable[[str], str], api: Callable[[str], str]) -> str:
        """The message, naming the endpoint and the API mode the way the caller sets them."""
        if self.api == "async":
            return (
                f"{endpoint(self.endpoint)} is not a v2 URL, which {api('async')} needs; "
                f"use the v2 URL ({self.suggested}), or drop {api('async')} to send it synchronous v1 requests"
            )
        return (
            f"{endpoint(self.endpoint)} is the asynchronous v2 API, which {api('sync')} (the default) does not "
            f"speak; pass {api('async')} to submit and poll, or use the v1 URL ({self.suggested})"
        )


class OptionError(UsageError):
    """One option's value is wrong. `option` is its name as Python spells it (rows, items);
    `problem` is the rest of the message, with the fix. str() names the option by that name;
    the command names it by its flag (--rows)."""

    def __init__(self, option: str, problem: str):
        self.option, self.problem = option, problem
        super().__init__(f"{option} {problem}")

    def worded(self, name: Callable[[str], str]) -> str:
        return f"{name(self.option)} {self.problem}"


class KeyProblem(UsageError):
    """The API key cannot be used: none given, its file unreadable, or its text is not a key
    (a `NAME=value` line, whitespace or control characters inside). The key itself is never
    part of the message.

    `source` is where the key came from: "argument" (run()'s api_key), "env"
    ($SEGMIND_API_KEY), "file" (a key file, at `path`), or None when there is no key at all.
    `problem` is what is wrong with it, with the fix, worded for any source."""

    def __init__(self, problem: str, source: str | None, path: Path | None = None):
        self.problem, self.source, self.path = problem, source, path
        super().__init__(f"{self.where()}{problem}")

    def where(self) -> str:
        """The key's source as a Python caller names it, ready to prefix the problem."""
        if self.source == "file":
            return f"the key file {self.path}: "
        if self.source == "env":
            return "$SEGMIND_API_KEY: "
        if self.source == "argument":
            return "api_key: "
        return ""
