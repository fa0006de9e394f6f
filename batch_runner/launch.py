"""Wire one run: the job, its settings, where requests go (Segmind, a given endpoint, or an
in-process sandbox) and the Runner. `batch_runner.run()` and `batch-runner run` both start
their runs here, so the two cannot drift apart; neither this module nor the engine knows
about flags, exit codes or signals.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from batch_runner.api import spec as api_spec
from batch_runner.errors import UsageError
from batch_runner.settings import Options, Settings

if TYPE_CHECKING:
    from batch_runner.engine.runner import Runner
    from batch_runner.job.manifest import Job

API_KEY_ENV = "SEGMIND_API_KEY"
# A balance no example job exhausts: the built-in sandbox is for trying a job, not for budgeting.
SANDBOX_CREDITS = 10_000.0
SANDBOX_LATENCY_S, SANDBOX_JITTER_S = 1.0, 0.3


def default_output(job: Job, sandbox: bool) -> Path:
    """outputs/<job name>, with -sandbox for placeholders, so they never mix with real results."""
    return Path("outputs") / (job.name + ("-sandbox" if sandbox else ""))


def key_from_env() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise UsageError(f"no API key: set {API_KEY_ENV} or pass api_key=... (or try the job free with sandbox=True)")
    return key


@contextmanager
def runner_for(
    job: Job,
    settings: Settings,
    options: Options,
    output: str | os.PathLike[str] | None = None,
    sandbox: bool = False,
    endpoint: str | None = None,
    api_key: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[Runner]:
    """A Runner ready to run(); with sandbox=True, a local stand-in API serves it until the
    block ends. The key comes from api_key, else $SEGMIND_API_KEY."""
    from batch_runner.engine.runner import Runner, RunOptions

    say = log or (lambda message: None)
    server = None
    if sandbox:
        if endpoint:
            raise UsageError("a sandbox run sends to its own local server; give no endpoint with it")
        from batch_runner.sandbox import Sandbox, SandboxConfig

        server = Sandbox(SandboxConfig(latency_s=SANDBOX_LATENCY_S, jitter_s=SANDBOX_JITTER_S, credits=SANDBOX_CREDITS))
    try:  # from here on, the sandbox is closed whatever happens
        if server is not None:
            endpoint, api_key = (server.endpoint_v2 if settings.api == "async" else server.endpoint), server.key
            say(
                f"SANDBOX: running against a local stand-in at {server.url}. No credits are spent and the "
                "images are placeholders."
            )
        else:
            endpoint = endpoint or api_spec.endpoint_for(settings.api)
            if problem := api_spec.endpoint_problem(endpoint, settings.api):
                raise UsageError(problem)
            api_key = api_key or key_from_env()
        assert endpoint is not None and api_key is not None
        run_options = RunOptions(
            endpoint=endpoint,
            api_key=api_key,
            output=Path(output) if output is not None else default_output(job, sandbox),
            settings=settings,
            max_attempts=options.max_attempts,
            timeout_s=options.timeout,
            retry_failed=options.retry_failed,
            sandbox=sandbox,
            progress=options.progress,
            log_interval_s=options.log_interval,
            wait_lock_s=options.wait_lock,
        )
        yield Runner(job, run_options, log=log)
    finally:
        if server is not None:
            server.close()
