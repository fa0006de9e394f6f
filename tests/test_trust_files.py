"""Issue 23 item 15 and issue 19 item 6: the output folder's own files are never followed as
symbolic links, and a local folder is a local folder whatever its name holds (`:`, spaces, `#`,
`?`, non-ASCII), from the run through status and report."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from tests.helpers import env_with_key, manifest, run, run_cli, sandbox_with


@pytest.mark.parametrize("name", [".lock", "journal.jsonl", "runs.jsonl"])
def test_a_symlink_among_the_folders_own_files_is_refused_and_its_target_untouched(tmp_path, name):
    target = tmp_path / "precious.txt"
    target.write_text("do not touch\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(target, out / name)
    with sandbox_with() as sb:
        job = manifest(tmp_path, ["linked"])
        result = run(job, out, sb)
        assert result.returncode == 74, result.stdout + result.stderr
        assert "symbolic link" in result.stdout + result.stderr and name in result.stdout + result.stderr
        assert sb.stats()["received"] == 0
    assert target.read_text(encoding="utf-8") == "do not touch\n"


def test_an_images_folder_that_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "images")
    with sandbox_with() as sb:
        result = run(manifest(tmp_path, ["linked images"]), out, sb)
        assert result.returncode == 74, result.stdout + result.stderr
        assert sb.stats()["received"] == 0
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["nightly:v2", "two words", "hash#tag", "what?", "ünïcødé-夜", "s3:bucket"])
def test_a_local_folder_is_local_whatever_its_name_holds(tmp_path, name):
    # Relative, as a user types it in the folder where cron runs: `--output nightly:v2`.
    with sandbox_with() as sb:
        job = manifest(tmp_path, ["named one", "named two"])
        argv = ["run", str(job), "--output", name, "--endpoint", sb.endpoint, "--progress", "log"]
        result = run_cli(*argv, cwd=tmp_path, env=env_with_key())
        assert result.returncode == 0, result.stdout + result.stderr
        again = run_cli(*argv, cwd=tmp_path, env=env_with_key())
        assert again.returncode == 0, again.stdout + again.stderr
        assert sb.stats()["billed"] == 2
    out = tmp_path / name
    assert set(pd.read_parquet(str(out / "manifest.parquet")).status) == {"succeeded"}
    status = run_cli("status", name, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["counts"]["succeeded"] == 2
    report = run_cli("report", name, cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
