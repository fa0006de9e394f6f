"""The public API is what `batch_runner.__all__` says, no more and no less (as httpx pins its own),
and `import batch_runner` stays light: pandas, Pillow and the sandbox load only when used."""

from __future__ import annotations

import subprocess
import sys

import batch_runner
from batch_runner import exit_codes
from batch_runner.engine.outcome import EXIT_CODES, StopReason
from tests.helpers import REPO

PUBLIC = [
    "AlreadyRunning",
    "Item",
    "Job",
    "ManifestError",
    "Plan",
    "Problem",
    "ProgressMode",
    "RunOutcome",
    "RunResults",
    "Settings",
    "StopReason",
    "UsageError",
    "__version__",
    "load",
    "load_job",
    "plan",
    "run",
]


def test_all_is_pinned_sorted_and_every_name_resolves():
    assert batch_runner.__all__ == PUBLIC
    assert PUBLIC == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(batch_runner, name) is not None, name
    star: dict = {}
    exec("from batch_runner import *", star)
    assert set(PUBLIC) <= set(star)


def test_no_public_name_escapes_all():
    """A name without an underscore is either in __all__ or a submodule."""
    import types

    public = {
        name
        for name, value in vars(batch_runner).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    helpers = {"annotations", "os", "Callable", "Any", "TYPE_CHECKING", "JobSource"}  # the module's own imports
    assert public - helpers <= set(PUBLIC)


def test_an_unknown_attribute_is_a_plain_attribute_error():
    try:
        batch_runner.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'no_such_thing'" in str(exc)
    else:
        raise AssertionError("batch_runner.no_such_thing resolved")


def test_import_batch_runner_loads_no_pandas_pillow_sandbox_or_engine():
    probe = (
        "import sys, batch_runner\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('PIL', 'pandas', 'pyarrow', 'requests', 'tqdm')"
        " or m.startswith(('batch_runner.sandbox', 'batch_runner.engine.runner', 'batch_runner.results')))\n"
        "print(heavy)\n"
        "batch_runner.load\n"  # load() is there when asked for, and brings pandas with it
        "print('pandas' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True"]


def test_stop_reasons_keep_their_file_values_and_their_documented_exit_codes():
    # Written in runs.jsonl and documented in the README: never renamed, never renumbered.
    assert {reason.value: EXIT_CODES[reason] for reason in StopReason} == {
        "credits": 3,
        "spend-limit": 3,
        "content-type": 4,
        "budget": 3,
        "run-budget": 3,
        "duration": 75,
        "fatal": 4,
        "interrupted": 130,
        "unreachable": 75,
        "rate-limited": 75,
        "output": 74,
        "internal": 70,
        "timeout": 4,
    }
    assert (exit_codes.OK, exit_codes.FAILED_ITEMS, exit_codes.USAGE, exit_codes.LOCKED) == (0, 1, 2, 5)
    assert StopReason("credits") is StopReason.CREDITS and f"{StopReason.CREDITS}" == "credits"
