"""tests/in_process.py runs `batch-runner` inside pytest: it must give back what a process would,
and leave the test process as it found it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests import in_process
from tests.helpers import FAKE_KEY, REPO, manifest, run, run_cli, sandbox_with, start, wait_for


def _state() -> tuple:
    """What a call must restore: environment, folder, argv, streams, handlers, timer, Thread.start."""
    return (
        dict(os.environ),
        os.getcwd(),
        list(sys.argv),
        (sys.stdout, sys.stderr),
        {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)},
        signal.getitimer(signal.ITIMER_REAL),
        threading.Thread.start,
    )


def test_a_run_in_process_answers_as_the_process_does_and_restores_everything(tmp_path, sandbox):
    job = manifest(tmp_path, ["same a", "same b"])
    before = _state()
    inside = run(job, tmp_path / "in", sandbox)
    assert _state() == before
    child = run(job, tmp_path / "child", sandbox, process=True)
    assert (inside.returncode, child.returncode) == (0, 0)
    # The report names its own folder; apart from that the two read the same, line by line.
    assert inside.stdout.replace(str(tmp_path / "in"), "OUT") == child.stdout.replace(str(tmp_path / "child"), "OUT")
    assert inside.stdout.startswith("done\n  2 of 2 succeeded")
    assert "run job: 2 items, 2 to send" in inside.stderr and "run job: 2 items, 2 to send" in child.stderr
    assert sandbox.stats()["billed"] == 4


def test_exit_statuses_and_argparse_exits_are_the_processs(tmp_path):
    for args in (["plan"], ["plan", "jobs/mistakes/bad.yaml"], ["plan", "--help"], ["--version"], ["nonsense"]):
        inside, child = run_cli(*args), run_cli(*args, process=True)
        assert (inside.returncode, inside.stdout, inside.stderr) == (child.returncode, child.stdout, child.stderr)
    assert run_cli("plan").returncode == 2 and "the following arguments are required: job" in run_cli("plan").stderr
    assert run_cli("--version").stdout.startswith("batch-runner ")


def test_env_is_the_whole_environment_so_a_key_left_out_is_hidden(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMIND_API_KEY", FAKE_KEY)
    job = manifest(tmp_path, ["no key"])
    result = run_cli("run", str(job), "--output", str(tmp_path / "out"), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "no API key: set SEGMIND_API_KEY" in result.stderr
    assert os.environ["SEGMIND_API_KEY"] == FAKE_KEY  # and this process's is back
    assert not (tmp_path / "out" / "journal.jsonl").exists()


def test_cwd_is_honoured_and_given_back(tmp_path):
    assert run_cli("plan", "jobs/quickstart.yaml").returncode == 0  # relative to the repository by default
    elsewhere = run_cli("plan", "jobs/quickstart.yaml", cwd=tmp_path)
    assert elsewhere.returncode == 2 and "no such file" in elsewhere.stderr
    assert os.getcwd() != str(tmp_path)


def test_a_call_past_its_timeout_raises_timeout_expired_and_restores_everything(tmp_path):
    with sandbox_with(latency_s=1.0) as sb:
        job, out = manifest(tmp_path, [f"slow {i}" for i in range(6)]), tmp_path / "out"
        holder = start(job, out, sb, "--concurrency", "1")  # holds the folder's lock for ~6 s
        try:
            wait_for(lambda: (out / "journal.jsonl").exists(), timeout=30)
            before = _state()
            started = time.monotonic()
            with pytest.raises(subprocess.TimeoutExpired) as raised:
                run(job, out, sb, "--wait-lock", "60", timeout=1)
            took = time.monotonic() - started
            assert _state() == before
        finally:
            holder.kill()
            holder.communicate()
    assert 0.9 < took < 10, took
    assert raised.value.timeout == 1 and "--wait-lock" in raised.value.cmd


def test_an_env_that_kills_the_process_gets_a_process(tmp_path, sandbox, monkeypatch):
    # store/ledger.py's crash point calls os._exit(137): in here it would end pytest itself.
    monkeypatch.setenv("BATCH_RUNNER_CRASH_AT", "ledger-before-rename")
    result = run(manifest(tmp_path, ["crash"]), tmp_path / "out", sandbox)
    assert result.returncode == 137


def test_only_the_calls_own_threads_are_captured():
    # The sandbox serves the test from threads that are not the run's; what they print (a
    # socketserver traceback for a client that hung up) must not be taken for the run's stderr.
    original_start = threading.Thread.start
    owned = in_process._Owned()
    elsewhere: list[str] = []

    class Other:
        def write(self, text: str) -> int:
            elsewhere.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    out = in_process._Capture(Other()).bind(owned)
    go, outsider_done = threading.Event(), threading.Event()

    def outsider() -> None:
        go.wait()
        print("outsider", file=out)
        outsider_done.set()

    bystander = threading.Thread(target=outsider)
    bystander.start()  # started before the call: not the call's
    with owned:
        out.write("caller 1/2\rcaller 2/2\r\n")  # a progress bar, read back as a pipe's text
        child = threading.Thread(target=lambda: print("child", file=out))
        child.start()
        child.join()
        grandchild_parent = threading.Thread(
            target=lambda: (t := threading.Thread(target=lambda: print("grandchild", file=out)), t.start(), t.join())
        )
        grandchild_parent.start()
        grandchild_parent.join()
        go.set()
        outsider_done.wait(10)
    bystander.join()
    out.close()
    print("after", file=out)
    assert out.text() == "caller 1/2\ncaller 2/2\nchild\ngrandchild\n"
    assert "".join(elsewhere) == "outsider\nafter\n"
    assert threading.Thread.start is original_start


def test_readme_help_renders_in_process_what_the_process_prints():
    from tests import readme_help

    width = {**os.environ, "COLUMNS": str(readme_help.WIDTH), "LINES": "50", "NO_COLOR": "1", "PYTHON_COLORS": "0"}
    for command in readme_help.REQUIRED:
        child = subprocess.run(
            [sys.executable, "-m", "batch_runner", command, "--help"], capture_output=True, text=True, cwd=REPO,
            env=width, timeout=60,
        )  # fmt: skip
        assert readme_help.help_text(command) == child.stdout, command
