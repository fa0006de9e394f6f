"""The public API is what `batch_runner.__all__` says, no more and no less (as httpx pins its own),
and `import batch_runner` stays light: pandas, Pillow and the sandbox load only when used."""

from __future__ import annotations

import ast
import subprocess
import sys

import batch_runner
from batch_runner import exit_codes
from batch_runner.engine.outcome import EXIT_CODES, StopReason
from tests.helpers import REPO

INIT = REPO / "batch_runner" / "__init__.py"


def _exposed() -> set[str]:
    """What batch_runner/__init__.py gives a caller, read from its source: every name it imports
    from the package (for type checkers too), every function it defines, its version, and every
    name its module __getattr__ serves lazily. Its own helpers (stdlib, typing) are not exposed."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    names = {"__version__"}
    top = [*tree.body, *(n for node in tree.body if isinstance(node, ast.If) for n in node.body)]
    for node in top:  # module level, and under `if TYPE_CHECKING:`
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batch_runner"):
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            names.add(node.name)
    lazy = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__")
    names |= {
        const.value
        for node in ast.walk(lazy)
        if isinstance(node, ast.Compare)
        for const in ast.walk(node)
        if isinstance(const, ast.Constant) and isinstance(const.value, str)
    }
    return names - {"annotations"}


def test_all_is_what_the_module_exposes_sorted_and_every_name_resolves():
    assert set(batch_runner.__all__) == _exposed()
    assert batch_runner.__all__ == sorted(batch_runner.__all__)
    for name in batch_runner.__all__:
        assert getattr(batch_runner, name) is not None, name
    star: dict = {}
    exec("from batch_runner import *", star)
    assert set(batch_runner.__all__) <= set(star)


def test_no_public_name_escapes_all():
    """A name without an underscore is either in __all__, a submodule or one of the module's
    own imports from outside the package."""
    import types

    public = {
        name
        for name, value in vars(batch_runner).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    foreign = {
        name
        for name in public
        if not getattr(vars(batch_runner)[name], "__module__", "batch_runner").startswith("batch_runner")
    }
    helpers = {"annotations", "TYPE_CHECKING", "JobSource"}  # imports; the type alias of run()'s job argument
    assert public - foreign - helpers <= set(batch_runner.__all__)


def _exported_types() -> dict[str, type]:
    return {name: value for name in batch_runner.__all__ if isinstance(value := getattr(batch_runner, name), type)}


def test_every_exported_type_says_what_it_is():
    """A docstring of its own, not the signature a dataclass writes when it has none."""
    for name, kind in _exported_types().items():
        doc = (kind.__doc__ or "").strip()
        assert doc and not doc.startswith(f"{name}("), f"{name} has no docstring"


def test_every_exported_error_sits_under_one_exported_base_drawn_in_its_docstring():
    errors = {name: kind for name, kind in _exported_types().items() if issubclass(kind, BaseException)}
    assert errors, "no exported errors found"
    base = batch_runner.BatchRunnerError
    assert {name for name, kind in errors.items() if not issubclass(kind, base)} == set()
    tree = sys.modules[base.__module__].__doc__ or ""
    assert {name for name in errors if name not in tree} == set()


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
        "run-budget": 75,  # a night's share spent: resume tomorrow, like a closed window
        "jobs-on-server": 75,  # a sync run would buy again what v2 jobs on the server deliver
        "duration": 75,
        "fatal": 4,
        "interrupted": 130,
        "unreachable": 75,
        "rate-limited": 75,
        "output": 74,
        "internal": 70,
        "timeout": 4,  # a --timeout no answer can meet
    }
    assert (exit_codes.OK, exit_codes.FAILED_ITEMS, exit_codes.USAGE, exit_codes.LOCKED) == (0, 1, 2, 5)
    assert StopReason("credits") is StopReason.CREDITS and f"{StopReason.CREDITS}" == "credits"
