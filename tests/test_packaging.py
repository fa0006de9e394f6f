"""The package as users get it: a wheel built from this tree (with no deprecation that stops
builds in 2027), installed into a fresh virtual environment at the minimum versions
pyproject.toml declares, runs `batch-runner init` and the README's first command in an empty
folder, and every reader works at those versions.

One environment serves all the checks, and pip's cache keeps it quick after the first time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+: reads pyproject.toml's declared minimums

README = (REPO / "README.md").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# pandas 2.0 and pyarrow 14 were built against numpy 1.x; pip would pair them with numpy 2,
# which they cannot import. So the oldest environment takes the numpy they were made for.
OLDEST_EXTRA = ["numpy<2"]


def minimum_pins() -> list[str]:
    """Each runtime dependency pinned at the lowest version pyproject.toml allows."""
    pins = []
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, low = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([\w.]+)", requirement.split(";")[0].strip()).groups()
        pins.append(f"{name}=={low}")
    return pins


def release(version: str) -> tuple[int, ...]:
    """A release number as PEP 440 compares it: 10.1 is 10.1.0."""
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def sh(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = sh(sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-v", "-w", str(out))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # setuptools' "license = {text = ...} is deprecated" carries a 2027-02-18 cutoff.
    assert "SetuptoolsDeprecationWarning" not in built.stdout + built.stderr
    [found] = out.glob("batch_runner-*.whl")
    return found


@pytest.fixture(scope="module")
def oldest(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and the declared minimum of every dependency."""
    env_dir = tmp_path_factory.mktemp("venv") / "oldest"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = sh(str(python), "-m", "pip", "install", "-q", str(wheel), *minimum_pins(), *OLDEST_EXTRA)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env_dir


def in_env(env_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SEGMIND_API_KEY")}
    return {**env, "PATH": f"{env_dir / 'bin'}:{env['PATH']}", "VIRTUAL_ENV": str(env_dir)}


def test_the_wheel_carries_its_licence_starter_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"batch_runner/cli/starter/quickstart.yaml", "batch_runner/cli/starter/quickstart-prompts.txt"} <= set(names)
    assert "License-Expression: MIT" in metadata and "License ::" not in metadata
    assert "Project-URL: Repository" in metadata and "Keywords:" in metadata and "Author: " in metadata
    assert "pypi.org" not in metadata  # no page on a package index exists to point at


def test_the_clones_quickstart_is_the_starter_that_init_writes():
    for name in ("quickstart.yaml", "quickstart-prompts.txt"):
        assert (REPO / "jobs" / name).read_bytes() == (REPO / "batch_runner/cli/starter" / name).read_bytes()


def test_a_wheel_installed_from_scratch_runs_init_and_the_readme_first_command(oldest, tmp_path):
    first = README.split("## On a fresh machine", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    command = next(line for line in first.splitlines() if line.strip() and not line.startswith("#"))
    steps = [step.strip() for step in command.split("&&")]
    install = next(i for i, step in enumerate(steps) if step.startswith("pip install"))
    after_install = steps[install + 1 :]
    assert after_install[0] == "batch-runner init" and "jobs/quickstart.yaml --sandbox" in after_install[-1]
    project = tmp_path / "fresh"
    project.mkdir()  # an empty folder: no clone, no jobs/
    done = sh("sh", "-c", " && ".join(after_install), cwd=project, env=in_env(oldest), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote jobs/quickstart.yaml" in done.stdout
    assert "12 of 12 succeeded, 0 failed, 0 pending" in done.stdout
    assert len(list((project / "outputs/quickstart-sandbox/images").glob("*.jpg"))) == 12

    again = sh("batch-runner", "init", cwd=project, env=in_env(oldest))
    assert again.returncode == 0 and "kept jobs/quickstart.yaml (it is there already)" in again.stdout


def test_every_reader_works_at_the_minimum_declared_versions(oldest, tmp_path):
    env = in_env(oldest)
    versions = sh("python", "-c", "import PIL, pandas; print(PIL.__version__, pandas.__version__)", env=env)
    declared = dict(p.split("==") for p in minimum_pins())
    assert [release(v) for v in versions.stdout.split()] == [release(declared["pillow"]), release(declared["pandas"])]
    assert sh("batch-runner", "init", cwd=tmp_path, env=env).returncode == 0
    run = sh("batch-runner", "run", "jobs/quickstart.yaml", "--sandbox", "--progress", "quiet", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "outputs/quickstart-sandbox"
    image = sorted((out / "images").glob("*.jpg"))[0]
    recipe = sh("batch-runner", "recipe", str(image), cwd=tmp_path, env=env)
    assert recipe.returncode == 0, recipe.stderr  # JPEG XMP reaches Pillow's info only from 10.4
    assert f"name: recipe-{image.stem}" in recipe.stdout
    for kind in ("imagefolder", "webdataset"):
        exported = sh("batch-runner", "export", str(out), "--format", kind, "--to", str(tmp_path / kind), env=env)
        assert exported.returncode == 0 and "exported 12 new item(s)" in exported.stdout, exported.stderr
    code = (
        "import sys, batch_runner, pandas as pd\n"
        "items = batch_runner.load(sys.argv[1]).items\n"
        "meta = pd.read_parquet(sys.argv[2])\n"
        "print(items.seed_value.dtype, items.http_status.dtype, meta.seed.dtype, len(meta))\n"
    )
    loaded = sh("python", "-c", code, str(out), str(tmp_path / "imagefolder/metadata.parquet"), env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["Int64", "Int64", "Int64", "12"]
    status = sh("batch-runner", "status", str(out), env=env)
    assert status.returncode == 0 and "succeeded         12" in status.stdout
