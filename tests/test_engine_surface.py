"""The engine's Python surface: typed keywords that mypy checks, errors that name no flag, and a
second Ctrl-C that still leaves the run's line in runs.jsonl."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import batch_runner
from batch_runner.settings import MANIFEST_KEYS, OPTION_FIELDS, RunKeywords, SettingKeywords
from tests.helpers import FAKE_KEY, REPO, manifest, sandbox_with, start, wait_for


def test_mypy_flags_a_misspelled_setting_and_types_load(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import batch_runner\n"
        "batch_runner.run('x.yaml', concurency=4)\n"
        "batch_runner.plan('x.yaml', concurrency='4')\n"
        "reveal_type(batch_runner.load)\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(probe)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    out = result.stdout
    assert 'probe.py:2: error: Unexpected keyword argument "concurency" for "run"' in out, out
    assert 'probe.py:3: error: Argument "concurrency" to "plan" has incompatible type "str"' in out, out
    assert 'Revealed type is "def (path: str | pathlib.Path) -> batch_runner.results.summaries.RunResults"' in out


def test_the_typed_keywords_are_the_settings_and_options_themselves():
    # The one source is settings.py's records; the TypedDicts are their copy for type checkers.
    assert set(SettingKeywords.__annotations__) == set(MANIFEST_KEYS)
    assert set(RunKeywords.__annotations__) == set(MANIFEST_KEYS) | {f.name for f in OPTION_FIELDS}


def test_an_endpoint_of_the_other_api_is_refused_for_a_python_caller_in_its_keywords(tmp_path):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["refused"]), tmp_path / "out"
        with pytest.raises(batch_runner.EndpointMismatch) as refused:
            batch_runner.run(job, out, endpoint=sb.endpoint_v2, api_key=FAKE_KEY)
        assert isinstance(refused.value, batch_runner.BatchRunnerError)
        message = str(refused.value)
        assert "pass api='async'" in message and f"endpoint {sb.endpoint_v2!r}" in message
        assert "--" not in message.replace(sb.endpoint_v2, "")
        assert (refused.value.endpoint, refused.value.api) == (sb.endpoint_v2, "sync")
        assert sb.stats()["requests"] == 0 and not out.exists()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
def test_a_second_ctrl_c_still_writes_the_runs_line(tmp_path):
    from tests.test_layout import _catches_sigterm

    with sandbox_with(latency_s=2.0) as sb:
        job, out = manifest(tmp_path, [f"twice {i}" for i in range(20)]), tmp_path / "out"
        proc = start(job, out, sb, "--concurrency", "2")
        try:
            wait_for(lambda: _catches_sigterm(proc.pid) and sb.stats(include_log=False)["received"] >= 2)
            proc.send_signal(signal.SIGINT)
            # Two signals sent back to back may reach Python's handler as one (the kernel and
            # CPython both merge a pending signal), so the second goes once the first is heard.
            seen = []
            while line := proc.stderr.readline():
                seen.append(line)
                if "Ctrl-C again to quit now" in line:
                    break
            proc.send_signal(signal.SIGINT)
            stdout, rest = proc.communicate(timeout=30)
            stderr = "".join(seen) + rest
        finally:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "second interrupt: exiting now" in stderr
    [record] = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert (record["exit_code"], record["stop_reason"], record["job"]) == (130, "interrupted", "job")
    assert record["items"] == 20 and record["in_flight_abandoned"] >= 1
    # The requests abandoned in flight are on the books as possibly billed.
    assert record["possibly_billed_usd_this_run"] >= 0.063 * record["in_flight_abandoned"] - 1e-9
