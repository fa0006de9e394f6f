"""Wire one run: the job, its settings, where requests go (Segmind, a given endpoint, or an
in-process sandbox), the API key, the output folder and the Runner. `batch_runner.run()` and
`batch-runner run` both start their runs here, so the two cannot drift apart; neither this
module nor the engine knows about flags, exit codes or signals.

The one place that decides: which key (resolve_key), which endpoint or sandbox (runner_for),
and the default output folder (output_for).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from batch_runner.api import spec as api_spec
from batch_runner.errors import EndpointMismatch, KeyProblem, UsageError
from batch_runner.settings import Options, Settings

if TYPE_CHECKING:
    from batch_runner.engine.runner import Runner
    from batch_runner.job.manifest import Job

API_KEY_ENV = "SEGMIND_API_KEY"
# A balance no example job exhausts: the built-in sandbox is for trying a job, not for budgeting.
SANDBOX_CREDITS = 10_000.0
SANDBOX_LATENCY_S, SANDBOX_JITTER_S = 1.0, 0.3
# `SEGMIND_API_KEY=...` or `export NAME=value`, as a .env file holds it. A key itself holds no
# `=` but base64's trailing padding, which never has text after it.
_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*[^=\s]")
# Whitespace or a control character anywhere: a header value that would split the request, or
# two keys pasted into one variable.
_NOT_A_KEY_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")


def output_for(job: Job, output: str | os.PathLike[str] | None, sandbox: bool) -> Path:
    """The output folder: the one given, else outputs/<job name>, with -sandbox for
    placeholders, so they never mix with real results."""
    if output is not None:
        return Path(output)
    return Path("outputs") / (job.name + ("-sandbox" if sandbox else ""))


def resolve_key(
    api_key: str | None = None, key_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The API key: `api_key`, else the first line of `key_file`, else $SEGMIND_API_KEY.
    KeyProblem (a UsageError) when there is none, or when what is there is not a key alone:
    a `NAME=value` line, or whitespace or control characters inside it. The key is never part
    of a message."""
    environ = os.environ if env is None else env
    if api_key is not None:
        return _checked(api_key.strip(), "argument")
    if key_file is not None:
        return _checked(_read_key_file(Path(key_file)), "file", Path(key_file))
    key = environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise KeyProblem(
            f"no API key: set {API_KEY_ENV} or pass api_key=... (or try the job free with sandbox=True)", None
        )
    return _checked(key, "env")


def _read_key_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyProblem(f"cannot read it ({exc.strerror})", "file", path) from None
    except UnicodeDecodeError:
        raise KeyProblem("it is not UTF-8 text; put only the API key in it", "file", path) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise KeyProblem("it is empty; put the API key in it", "file", path)
    if len(lines) > 1:
        # Which line is the key? Guessing could send a password or a second account's key.
        raise KeyProblem(
            f"it has {len(lines)} non-empty lines; it must hold only the API key, on one line", "file", path
        )
    return lines[0]


def _checked(key: str, source: str, path: Path | None = None) -> str:
    if not key:
        raise KeyProblem("the API key is empty", source, path)
    if match := _ASSIGNMENT.match(key):
        raise KeyProblem(
            f"it holds a NAME=value line ({match.group(1)}=...), not the key alone; keep only the text after "
            "'=' (a key file holds just the key, on one line)",
            source,
            path,
        )
    if _NOT_A_KEY_CHAR.search(key):
        raise KeyProblem(
            "the key holds whitespace or a control character (e.g. a line break from a two-line file); "
            "give the key alone, on one line. Nothing was sent.",
            source,
            path,
        )
    return key


def endpoint_for(api: str, endpoint: str | None) -> str:
    """The endpoint to send to: the one given, else Segmind's for the API mode. EndpointMismatch
    when the given one is the other mode's URL."""
    if not endpoint:
        return api_spec.endpoint_for(api)
    if suggested := api_spec.endpoint_mismatch(endpoint, api):
        raise EndpointMismatch(endpoint, api, suggested)
    return endpoint


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
    *,
    key_file: str | os.PathLike[str] | None = None,
) -> Iterator[Runner]:
    """A Runner ready to run(); with sandbox=True, a local stand-in API serves it until the
    block ends. The key comes from api_key, else key_file, else $SEGMIND_API_KEY (resolve_key)."""
    from batch_runner.engine.context import RunOptions, Target
    from batch_runner.engine.runner import Runner

    say = log or (lambda message: None)
    if sandbox and endpoint:
        raise UsageError("a sandbox run sends to its own local server; give no endpoint with it")
    if not sandbox:
        # Before anything starts or is written: a bad key or endpoint sends nothing and books nothing.
        target = Target(endpoint_for(settings.api, endpoint), resolve_key(api_key, key_file))
    server = None
    if sandbox:
        from batch_runner.sandbox import Sandbox, SandboxConfig

        server = Sandbox(SandboxConfig(latency_s=SANDBOX_LATENCY_S, jitter_s=SANDBOX_JITTER_S, credits=SANDBOX_CREDITS))
    try:  # from here on, the sandbox is closed whatever happens
        if server is not None:
            target = Target(
                server.endpoint_v2 if settings.api == "async" else server.endpoint, server.key, sandbox=True
            )
            say(
                f"SANDBOX: running against a local stand-in at {server.url}. No credits are spent and the "
                "images are placeholders."
            )
        run = RunOptions(target, output_for(job, output, sandbox), settings, options)
        yield Runner(job, run, log=log)
    finally:
        if server is not None:
            server.close()
