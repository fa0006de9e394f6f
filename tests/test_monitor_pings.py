"""Monitors go red exactly when something new went wrong: a healthchecks-style receiver on
127.0.0.1 records every ping's method, path, query and body, while the real CLI runs nights
against the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

from batch_runner.cli.ping import ping_url
from tests.helpers import free_port, manifest, run, sandbox_with
from tests.hostile import Answer, HostileServer, Seen


def quiet(job: Path, out: Path, sb, *flags: str):
    return run(job, out, sb, *flags, "--progress", "quiet")


def runs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text(encoding="utf-8").splitlines()]


def receiver() -> HostileServer:
    """Answers like healthchecks.io: 200 OK for a known check, 404 for any other slug."""
    return HostileServer(lambda seen: Answer(200, b"OK") if "/hc/" in seen.path else Answer(404, b"not found"))


def pings(monitor: HostileServer) -> list[Seen]:
    seen = list(monitor.seen)
    monitor.seen.clear()
    return seen


def test_a_query_stays_at_the_end_of_every_ping_url():
    assert (
        ping_url("https://hc.example/ping/key/slug?create=1", "start")
        == "https://hc.example/ping/key/slug/start?create=1"
    )
    assert ping_url("https://hc.example/ping/uuid/", "3") == "https://hc.example/ping/uuid/3"
    assert ping_url("https://hc.example/ping/uuid?x=1", "") == "https://hc.example/ping/uuid?x=1"


def test_pings_keep_the_query_and_post_the_runs_summary(tmp_path):
    with receiver() as monitor, sandbox_with() as sb:
        job, out = manifest(tmp_path, ["a pinged kite", "a pinged boat"]), tmp_path / "out"
        result = quiet(job, out, sb, "--ping-url", f"{monitor.url}/hc/slug?create=1")
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        start, finish = pings(monitor)
        assert (start.method, start.path) == ("POST", "/hc/slug/start?create=1")
        assert (finish.method, finish.path) == ("POST", "/hc/slug?create=1")
        body = finish.body.decode("utf-8")
        assert body.startswith("exit 0\ndone\n") and "2 of 2 succeeded, 0 failed, 0 pending" in body
        assert str(out) in body


def test_a_monitor_that_cannot_be_reached_is_said_on_stderr_even_when_quiet(tmp_path):
    with receiver() as monitor, sandbox_with() as sb:
        job = manifest(tmp_path, ["a quiet lamp"])
        dead = f"http://127.0.0.1:{free_port()}/hc/gone"
        result = quiet(job, tmp_path / "dead", sb, "--ping-url", dead)
        assert result.returncode == 0 and result.stdout == ""
        assert f"the monitor at {dead}/start did not take the ping (ConnectionError)" in result.stderr
        assert f"the monitor at {dead} did not take the ping" in result.stderr

        mistyped = f"{monitor.url}/hx/typo"  # a slug healthchecks does not know: 404
        result = quiet(job, tmp_path / "typo", sb, "--ping-url", mistyped)
        assert result.returncode == 0 and result.stdout == ""
        assert "did not take the ping (HTTP 404); check --ping-url" in result.stderr


def test_a_window_closing_on_schedule_pings_success_and_says_what_is_left(tmp_path):
    with receiver() as monitor, sandbox_with(latency_s=0.4) as sb:
        job, out = manifest(tmp_path, [f"window {i}" for i in range(30)]), tmp_path / "out"
        flags = ("--concurrency", "2", "--max-duration", "1.5s", "--ping-url", f"{monitor.url}/hc/night")
        result = quiet(job, out, sb, *flags)
        assert result.returncode == 75, result.stderr  # the systemd unit's SuccessExitStatus
        start, finish = pings(monitor)
        assert (start.path, finish.path) == ("/hc/night/start", "/hc/night")  # success, not /75
        left = runs(out)[-1]["pending"]
        assert 0 < left < 30
        body = finish.body.decode("utf-8")
        assert body.startswith(f"exit 75: the --max-duration window closed on schedule; {left} item(s) left")

        # Unreachable or rate-limited past --max-wait is also 75, but it is news: red.
        down = f"http://127.0.0.1:{free_port()}/v1/ideogram-turbo-txt-2-img"
        result = quiet(job, out, sb, "--endpoint", down, "--max-wait", "1", "--ping-url", f"{monitor.url}/hc/night")
        assert result.returncode == 75
        assert [s.path for s in pings(monitor)] == ["/hc/night/start", "/hc/night/75"]


def test_one_refused_prompt_turns_one_night_red_and_the_next_ones_green(tmp_path):
    with receiver() as monitor, sandbox_with() as sb:
        prompts = ["a harbour at dawn", "[sandbox:fail=422] a refused prompt", "a harbour at dusk"]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        ping = ("--ping-url", f"{monitor.url}/hc/nightly")
        first = quiet(job, out, sb, *ping)
        assert first.returncode == 1
        assert "why items failed: 1 × Safety check failed" in first.stderr  # what the cron mail says
        assert [s.path for s in pings(monitor)] == ["/hc/nightly/start", "/hc/nightly/1"]

        # The next night: nothing new to send, nothing new failed.
        second = quiet(job, out, sb, *ping)
        assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
        start, finish = pings(monitor)
        assert finish.path == "/hc/nightly"
        body = finish.body.decode("utf-8")
        assert "2 of 3 succeeded, 1 failed" in body and "why items failed: 1 × Safety check failed" in body
        assert "1 item(s) failed in earlier runs and nothing failed in this one" in body
        assert "--retry-failed" in body.split("to send them again:", 1)[1]

        # Retrying it is news again: the same refusal is a new failure.
        third = quiet(job, out, sb, *ping, "--retry-failed")
        assert third.returncode == 1
        assert [s.path for s in pings(monitor)] == ["/hc/nightly/start", "/hc/nightly/1"]
        assert [r["exit_code"] for r in runs(out)] == [1, 0, 1]
        assert sb.stats()["billed"] == 2


def test_runs_jsonl_names_the_run_its_host_and_its_failure_reasons(tmp_path):
    with sandbox_with() as sb:
        prompts = ["a tidy desk", "[sandbox:fail=422] refused", "[sandbox:fail=400] bad request"]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        # Real processes: the test compares the two runs' pids.
        assert run(job, out, sb, process=True).returncode == 1
        assert run(job, out, sb, process=True).returncode == 0
    first, second = runs(out)
    assert first["run_id"] != second["run_id"] and len(first["run_id"]) == 32
    assert first["host"] and isinstance(first["pid"], int) and first["pid"] != second["pid"]
    assert 0 < first["duration_s"] < 60 and first["output"] == str(out.resolve())
    reasons = {r["reason"]: r["items"] for r in first["failure_reasons"]}
    assert len(reasons) == 2 and reasons.get("Safety check failed") == 1
    assert second["failure_reasons"] == first["failure_reasons"]  # still failed, still named
