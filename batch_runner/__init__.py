"""batch_runner: turn a manifest of prompts into generated images, safely, cheaply and fast.

Three calls, the same ones the `batch-runner` command makes:

>>> import batch_runner
>>> batch_runner.plan("jobs/quickstart.yaml").estimated_cost       # spends nothing
>>> outcome = batch_runner.run("jobs/quickstart.yaml", sandbox=True, concurrency=4)
>>> outcome.succeeded, outcome.exit_code, outcome.stop_reason
>>> batch_runner.load(outcome.output).by_status                     # pandas DataFrames

run() installs no signal handlers, never exits the process and prints nothing (pass `log` to see
its messages); a run that stops says why in `outcome.stop_reason`, and running it again resumes.
Settings are typed keywords (a misspelled one is a type error, and a UsageError naming the
nearest one at run time); every error raised on purpose is a BatchRunnerError (see errors.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batch_runner.engine.outcome import RunOutcome, StopReason
from batch_runner.errors import (
    BatchRunnerError,
    EndpointMismatch,
    KeyProblem,
    ManifestError,
    MixedOutput,
    Problem,
    UsageError,
)
from batch_runner.job.items import Item
from batch_runner.job.manifest import Job, load_job
from batch_runner.job.plan import Plan
from batch_runner.settings import Options, ProgressMode, RunKeywords, SettingKeywords, Settings
from batch_runner.version import __version__

if TYPE_CHECKING:
    # Imported when first used (see __getattr__), but typed for checkers as if here.
    from typing_extensions import Unpack

    from batch_runner.results.summaries import RunResults, load
    from batch_runner.store.output_dir import AlreadyRunning


__all__ = [
    "AlreadyRunning",
    "BatchRunnerError",
    "EndpointMismatch",
    "Item",
    "Job",
    "KeyProblem",
    "ManifestError",
    "MixedOutput",
    "Options",
    "Plan",
    "Problem",
    "ProgressMode",
    "RunKeywords",
    "RunOutcome",
    "RunResults",
    "SettingKeywords",
    "Settings",
    "StopReason",
    "UsageError",
    "__version__",
    "load",
    "load_job",
    "plan",
    "run",
]

JobSource = Job | str | os.PathLike[str]


def _job(job: JobSource) -> Job:
    return job if isinstance(job, Job) else load_job(job)


def plan(job: JobSource, **settings: Unpack[SettingKeywords]) -> Plan:
    """What a job will do and cost, spending nothing. `settings` override the manifest's, by the
    names of its keys (concurrency=8, price_per_image=0.08, ...). Raises ManifestError listing
    every problem in the job, UsageError for an unknown or invalid setting."""
    from batch_runner.job.plan import build_plan
    from batch_runner.settings import resolve, split_named

    loaded = _job(job)
    overrides, _ = split_named(settings)
    return build_plan(loaded, resolve(loaded.settings, overrides))


def run(
    job: JobSource,
    output: str | os.PathLike[str] | None = None,
    sandbox: bool = False,
    *,
    endpoint: str | None = None,
    api_key: str | None = None,
    log: Callable[[str], None] | None = None,
    **settings: Unpack[RunKeywords],
) -> RunOutcome:
    """Run a job into `output` (default outputs/<job name>, or outputs/<job name>-sandbox) and
    say how it went. Running it again resumes: finished items are skipped.

    - `settings`: the manifest's settings (concurrency, rpm, max_cost, price_per_image,
      max_cost_per_run, max_wait, max_duration, ...) and the run options (max_attempts,
      timeout, retry_failed, progress, log_interval, wait_lock), checked by the same rules as
      the command's flags; an unknown name raises UsageError, naming the nearest one.
    - `sandbox=True` serves the run from a local stand-in API (no key, no credits) and stops
      it afterwards. Otherwise the key is `api_key`, else $SEGMIND_API_KEY.
    - `log` receives every message the command would print to stderr; progress lines too
      when progress="log" (the default when log is given; "quiet" otherwise).
    - `ping_url` is the command's: run() sends no pings.

    A stopped run is not an exception: see `outcome.stop_reason` and `outcome.exit_code`.
    Raises ManifestError or UsageError for bad input (nothing sent; among them KeyProblem for
    the key, EndpointMismatch for the other API's URL, MixedOutput for a folder of the other
    kind of results), AlreadyRunning when another run holds the output folder (wait_lock=seconds
    queues behind it): all BatchRunnerErrors. OSError when the folder cannot be written.
    """
    from batch_runner.launch import runner_for
    from batch_runner.settings import resolve, split_named

    loaded = _job(job)
    if settings.get("progress") is None:
        settings["progress"] = ProgressMode.LOG if log else ProgressMode.QUIET
    overrides, options = split_named(settings)
    chosen = resolve(loaded.settings, overrides)
    with runner_for(loaded, chosen, options, output, sandbox, endpoint, api_key, log) as runner:
        return runner.run()


def __getattr__(name: str) -> Any:
    # load() needs pandas; importing it lazily keeps `import batch_runner` and `batch-runner plan` quick.
    if name in ("load", "RunResults"):
        from batch_runner.results import summaries

        return getattr(summaries, name)
    if name == "AlreadyRunning":  # what run() raises when another run holds the output folder
        from batch_runner.store.output_dir import AlreadyRunning

        return AlreadyRunning
    raise AttributeError(f"module 'batch_runner' has no attribute {name!r}")
