"""`batch-runner run` against the sandbox over real HTTP: outcomes, stops, resumes, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from batch_runner.job.items import item_id_for
from batch_runner.sandbox import V1_PATH, Sandbox
from batch_runner.store.journal import replay
from tests.helpers import (
    FAKE_KEY,
    assert_images_valid,
    done_lines,
    manifest,
    manifest_frame,
    run,
    run_cli,
    sandbox_with,
    start,
    wait_for,
)


def generation_statuses(sb: Sandbox) -> dict[int, int]:
    """Answers to generation requests only (the runner also asks for the credit balance)."""
    counts: dict[int, int] = {}
    for entry in sb.stats()["log"]:
        if entry["path"] == V1_PATH:
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return counts


def body(prompt: str) -> dict:
    return {"prompt": prompt, "resolution": "RESOLUTION_512_1536"}


def test_every_item_succeeds_once_with_images_manifest_and_metadata(tmp_path, sandbox):
    prompts = [f"prompt number {i}" for i in range(10)]
    out = tmp_path / "out"
    result = run(manifest(tmp_path, prompts), out, sandbox, "--concurrency", "4")
    assert result.returncode == 0, result.stderr
    assert "10 of 10 succeeded" in result.stdout

    frame = manifest_frame(out)
    assert len(frame) == 10 and set(frame.status) == {"succeeded"}
    assert frame.cost_usd.sum() == pytest.approx(10 * 0.063)
    assert frame.remaining_credits.notna().all() and frame.request_id.notna().all()
    assert (frame.attempts == 1).all() and (frame.http_status == 200).all()
    assert_images_valid(out, frame)

    stats = sandbox.stats()
    assert stats["billed"] == 10 and stats["max_in_flight"] <= 4
    assert all(stats["bodies"][item_id_for(body(p))] == {"received": 1, "billed": 1} for p in prompts)

    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all((out / line["file_name"]).exists() for line in lines)
    assert {line["text"] for line in lines} == set(prompts)


def test_a_second_run_sends_nothing_and_new_items_are_simply_new(tmp_path, sandbox):
    out = tmp_path / "out"
    assert run(manifest(tmp_path, ["a", "b"]), out, sandbox).returncode == 0
    again = run(manifest(tmp_path, ["a", "b"]), out, sandbox)
    assert again.returncode == 0 and sandbox.stats()["received"] == 2
    grown = run(manifest(tmp_path, ["a", "b", "c"]), out, sandbox)
    assert grown.returncode == 0
    assert sandbox.stats()["received"] == 3 and len(manifest_frame(out)) == 3


@pytest.mark.parametrize("code", [400, 422])
def test_rejected_items_fail_at_once_with_the_message_and_the_run_goes_on(tmp_path, sandbox, code):
    bad = f"[sandbox:fail={code}] bad"
    out = tmp_path / "out"
    result = run(manifest(tmp_path, ["good one", bad, "good two"]), out, sandbox)
    assert result.returncode == 1
    frame = manifest_frame(out).set_index("prompt")
    assert frame.loc[bad, "status"] == "failed" and frame.loc[bad, "http_status"] == code
    assert frame.loc[bad, "error"]
    assert list(frame.drop(bad).status) == ["succeeded", "succeeded"]
    assert sandbox.stats()["bodies"][item_id_for(body(bad))]["received"] == 1


@pytest.mark.parametrize("code", [500, 502, 504])
def test_server_errors_are_retried(tmp_path, sandbox, code):
    prompt = f"[sandbox:fail-once={code}] flaky"
    out = tmp_path / "out"
    assert run(manifest(tmp_path, [prompt]), out, sandbox).returncode == 0
    row = manifest_frame(out).iloc[0]
    assert row.status == "succeeded" and row.attempts == 2
    assert sandbox.stats()["bodies"][item_id_for(body(prompt))] == {"received": 2, "billed": 1}


def test_persistent_server_errors_fail_the_item_after_max_attempts(tmp_path, sandbox):
    prompt = "[sandbox:fail=500] always broken"
    out = tmp_path / "out"
    result = run(manifest(tmp_path, [prompt, "fine"]), out, sandbox, "--max-attempts", "3")
    assert result.returncode == 1
    assert sandbox.stats()["bodies"][item_id_for(body(prompt))]["received"] == 3
    frame = manifest_frame(out).set_index("prompt")
    assert frame.loc[prompt, "status"] == "failed" and frame.loc[prompt, "attempts"] == 3


@pytest.mark.parametrize("code", [403, 404, 410])
def test_configuration_errors_stop_the_run_with_exit_4(tmp_path, sandbox, code):
    prompts = [f"[sandbox:fail={code}] first"] + [f"later {i}" for i in range(20)]
    out = tmp_path / "out"
    result = run(manifest(tmp_path, prompts), out, sandbox, "--concurrency", "1")
    assert result.returncode == 4, result.stderr
    assert "stopped: the API refused the configuration" in result.stdout
    assert sandbox.stats()["received"] == 1
    assert (manifest_frame(out).status == "pending").sum() == 21


def test_a_wrong_key_stops_with_exit_4_and_is_never_shown(tmp_path, sandbox):
    wrong = "fake-wrong-key-zzzz-9999"
    out = tmp_path / "out"
    result = run(manifest(tmp_path, [f"p{i}" for i in range(10)]), out, sandbox, "--concurrency", "2", key=wrong)
    assert result.returncode == 4 and "HTTP 401" in result.stdout
    assert sandbox.stats()["received"] <= 2
    assert wrong not in result.stdout + result.stderr


def test_wrong_endpoint_path_is_404_and_stops(tmp_path, sandbox):
    out = tmp_path / "out"
    job = manifest(tmp_path, ["x"])
    result = run(job, out, sandbox, "--endpoint", sandbox.url + "/v1/no-such-model")
    assert result.returncode == 4 and "404" in result.stdout


def test_a_429_pauses_every_worker_until_the_reset_time(tmp_path, sandbox):
    limited = "[sandbox:fail-once=429] told to wait"
    prompts = [f"busy {i}" for i in range(12)] + [limited] + [f"busy {i}" for i in range(12, 30)]
    out = tmp_path / "out"
    assert run(manifest(tmp_path, prompts), out, sandbox, "--concurrency", "4").returncode == 0
    log = sandbox.stats()["log"]
    [told] = [e for e in log if e["status"] == 429]
    # The sandbox asked for a one-second pause. A request another worker started in the
    # moment before the 429 reached the client may still go (150 ms allowed for that race,
    # for a busy machine); after that no worker may start one until the pause is over.
    # Without the shared pause, 4 workers would start ~60 in that time (~50 ms a request).
    started_during_pause = [e for e in log if told["ended"] + 0.15 < e["started"] < told["ended"] + 0.95]
    assert started_during_pause == []
    assert [e for e in log if e["started"] > told["ended"] + 0.95]  # and work went on after it
    assert manifest_frame(out).set_index("prompt").loc[limited, "rate_limited"] == 1
    assert generation_statuses(sandbox) == {200: 31, 429: 1}


def test_client_rpm_meets_a_rolling_limit_without_429s(tmp_path):
    # The sandbox allows 4 requests per rolling 2 s (120 rpm); --rpm 120 spaces sends to fit.
    with sandbox_with(rpm=120, rate_window_s=2.0) as sb:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, [f"r{i}" for i in range(9)]), out, sb, "--concurrency", "4", "--rpm", "120")
        assert result.returncode == 0
        statuses = generation_statuses(sb)
        # Sends are spaced 1% wider than the limit; a send that the scheduler delays by more
        # than that can still meet one 429 on a busy machine (and is retried).
        assert statuses[200] == 9 and statuses.get(429, 0) <= 1


def test_429_storm_without_client_rpm_still_completes(tmp_path):
    with sandbox_with(rpm=120, rate_window_s=1.0) as sb:  # 2 per rolling second
        out = tmp_path / "out"
        result = run(manifest(tmp_path, [f"s{i}" for i in range(8)]), out, sb, "--concurrency", "4")
        assert result.returncode == 0
        statuses = generation_statuses(sb)
        assert statuses[200] == 8 and sb.stats()["billed"] == 8
        assert statuses.get(429, 0) <= 3 * 4  # the pool pauses together: few waves of 429s


def test_406_stops_cleanly_nothing_sent_after_and_resume_finishes(tmp_path):
    with sandbox_with(credits=5 * 0.063 + 0.01, latency_s=0.1) as sb:
        prompts = [f"credit {i}" for i in range(20)]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        result = run(job, out, sb, "--concurrency", "3")
        assert result.returncode == 3, result.stderr
        assert "out of credits" in result.stdout and "Insufficient credits" in result.stdout
        assert "add credits, then resume with:" in result.stdout and "batch-runner run" in result.stdout
        assert "warning: the account has $0.33 of credits; this run may need $1.26" in result.stderr
        log = sb.stats()["log"]
        first_406 = min(e["ended"] for e in log if e["status"] == 406)
        assert [e for e in log if e["started"] > first_406] == []
        frame = manifest_frame(out)
        assert (frame.status == "succeeded").sum() == 5 and (frame.status == "pending").sum() == 15

        sb.api.add_credits(10)
        resumed = run(job, out, sb, "--concurrency", "3")
        assert resumed.returncode == 0
        assert set(manifest_frame(out).status) == {"succeeded"}
        assert all(v["billed"] == 1 for v in sb.stats()["bodies"].values())


def test_406_for_a_spend_limit_says_so(tmp_path):
    with sandbox_with(spend_limit=0.1) as sb:
        result = run(manifest(tmp_path, ["a", "b", "c"]), tmp_path / "out", sb, "--concurrency", "1")
        assert result.returncode == 3 and "spend limit" in result.stdout


@pytest.mark.parametrize(
    "kind, code, phrase",
    [("406-spend-limit", 3, "spend limit is reached"), ("406-content-type", 4, "rejected the request's content type")],
)
def test_each_kind_of_406_says_which_it_is(tmp_path, sandbox, kind, code, phrase):
    prompts = [f"[sandbox:fail={kind}] first"] + [f"after {i}" for i in range(5)]
    result = run(manifest(tmp_path, prompts), tmp_path / "out", sandbox, "--concurrency", "1")
    assert result.returncode == code and phrase in result.stdout
    assert sandbox.stats()["received"] == 1


def test_max_cost_is_never_exceeded_counting_requests_in_flight(tmp_path):
    with sandbox_with(latency_s=0.2) as sb:
        out = tmp_path / "out"
        job = manifest(tmp_path, [f"budget {i}" for i in range(12)])
        result = run(job, out, sb, "--concurrency", "4", "--max-cost", "0.2")
        assert result.returncode == 3 and "--max-cost" in result.stdout and "raise --max-cost" in result.stdout
        assert sb.stats()["spent"] <= 0.2 and sb.stats()["billed"] == 3
        assert manifest_frame(out).cost_usd.sum() <= 0.2
        again = run(job, out, sb, "--concurrency", "4", "--max-cost", "0.2")
        assert again.returncode == 3 and sb.stats()["billed"] == 3  # the budget spans runs of this output


@pytest.mark.parametrize("shape", ["bytes", "json", "url"])
def test_all_three_response_shapes(tmp_path, shape):
    with sandbox_with(response=shape) as sb:
        out = tmp_path / "out"
        assert run(manifest(tmp_path, ["shape a", "shape b"]), out, sb).returncode == 0
        frame = manifest_frame(out)
        assert set(frame.status) == {"succeeded"}
        assert_images_valid(out, frame)


def test_broken_image_is_retried_and_both_attempts_are_paid_for(tmp_path, sandbox):
    prompt = "[sandbox:fault-once=broken] glitch"
    out = tmp_path / "out"
    assert run(manifest(tmp_path, [prompt]), out, sandbox).returncode == 0
    row = manifest_frame(out).iloc[0]
    assert row.status == "succeeded" and row.attempts == 2 and row.cost_usd == pytest.approx(2 * 0.063)
    assert_images_valid(out, manifest_frame(out))


def test_wrong_sized_image_fails_after_retries(tmp_path, sandbox):
    prompt = "[sandbox:fault=wrong-size] stretched"
    out = tmp_path / "out"
    assert run(manifest(tmp_path, [prompt]), out, sandbox, "--max-attempts", "2").returncode == 1
    row = manifest_frame(out).iloc[0]
    assert row.status == "failed" and "not the requested 512x1536" in row.error
    assert not list((out / "images").iterdir())


def test_dropped_connection_is_retried(tmp_path, sandbox):
    prompt = "[sandbox:fault-once=drop] cut off"
    out = tmp_path / "out"
    assert run(manifest(tmp_path, [prompt]), out, sandbox).returncode == 0
    assert manifest_frame(out).iloc[0].attempts == 2


def test_a_trickling_body_hits_the_overall_deadline(tmp_path):
    # The body trickles in over a minute; the run must give up after --timeout 1, well
    # inside the 30 s this test allows (a per-read timeout alone would wait the minute out).
    with sandbox_with(slow_s=60.0) as sb:
        out = tmp_path / "out"
        job = manifest(tmp_path, ["[sandbox:fault=slow] drip"])
        result = run(job, out, sb, "--timeout", "1", "--max-attempts", "1", timeout=30)
        assert result.returncode == 1
        assert "longer than 1 s" in manifest_frame(out).iloc[0].error


def test_failed_items_are_retried_only_with_retry_failed(tmp_path, sandbox):
    prompt = "[sandbox:fail-once=400] second time lucky"
    job, out = manifest(tmp_path, [prompt, "ok"]), tmp_path / "out"
    assert run(job, out, sandbox).returncode == 1
    # Nothing new failed on the second run: exit 0 (issue 22: an earlier failure fails no later night).
    assert run(job, out, sandbox).returncode == 0
    assert sandbox.stats()["bodies"][item_id_for(body(prompt))]["received"] == 1
    assert run(job, out, sandbox, "--retry-failed").returncode == 0
    assert set(manifest_frame(out).status) == {"succeeded"}


def test_kill_9_mid_run_loses_nothing_and_resume_completes(tmp_path):
    with sandbox_with(latency_s=0.15) as sb:
        prompts = [f"crash test {i}" for i in range(40)]
        job, out = manifest(tmp_path, prompts), tmp_path / "out"
        proc = start(job, out, sb, "--concurrency", "4")
        wait_for(lambda: done_lines(out) >= 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

        result = run(job, out, sb, "--concurrency", "4")
        assert result.returncode == 0, result.stderr
        frame = manifest_frame(out)
        assert len(frame) == 40 and set(frame.status) == {"succeeded"}
        assert_images_valid(out, frame)
        assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
        stats = sb.stats()
        assert stats["billed"] - 40 <= 4  # only requests in flight at the kill can be paid twice
        assert stats["billed"] == generation_statuses(sb)[200]


def test_sigint_stops_gracefully_with_exit_130_then_resumes(tmp_path):
    with sandbox_with(latency_s=0.2) as sb:
        job, out = manifest(tmp_path, [f"interrupt {i}" for i in range(30)]), tmp_path / "out"
        proc = start(job, out, sb, "--concurrency", "3")
        wait_for(lambda: done_lines(out) >= 4)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "stopped: interrupted" in stdout and "resume with" in stdout
        assert "Traceback" not in stderr
        frame = manifest_frame(out)
        assert (frame.status == "succeeded").sum() >= 4 and (frame.status == "pending").sum() > 0
        # Everything in flight was let finish: nothing was billed that is not on record.
        assert sb.stats()["billed"] == (frame.status == "succeeded").sum()
        assert run(job, out, sb, "--concurrency", "3").returncode == 0


def test_a_second_sigint_exits_at_once_without_corrupting_anything(tmp_path):
    with sandbox_with(latency_s=1.5) as sb:
        job, out = manifest(tmp_path, [f"impatient {i}" for i in range(12)]), tmp_path / "out"
        proc = start(job, out, sb, "--concurrency", "2")
        wait_for(lambda: any(e["path"] == V1_PATH for e in sb.stats()["log"]))
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 130 and "second interrupt" in stderr
        assert replay(out / "journal.jsonl").torn_lines == 0
        assert len(manifest_frame(out)) == 12  # the manifest on disk is whole
        assert run(job, out, sb, "--concurrency", "4").returncode == 0
        assert set(manifest_frame(out).status) == {"succeeded"}


def test_metadata_loads_as_a_hugging_face_imagefolder(tmp_path, sandbox):
    out = tmp_path / "out"
    prompts = ["hf one", "hf two", "[sandbox:fail=400] not in the dataset"]
    run(manifest(tmp_path, prompts, extra="  style_type: [ANIME, DESIGN]\n"), out, sandbox)
    code = (
        "import json, sys\n"
        "from datasets import load_dataset\n"
        "ds = load_dataset('imagefolder', data_dir=sys.argv[1], split='train')\n"
        "print(json.dumps({'rows': len(ds), 'size': list(ds[0]['image'].size),"
        " 'texts': sorted(set(ds['text'])), 'styles': sorted(set(ds['style_type']))}))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"rows": 4, "size": [512, 1536], "texts": ["hf one", "hf two"], "styles": ["ANIME", "DESIGN"]}


def test_a_second_run_on_the_same_output_is_refused_and_the_lock_survives_no_kill(tmp_path):
    with sandbox_with(latency_s=0.3) as sb:
        job, out = manifest(tmp_path, [f"lock {i}" for i in range(30)]), tmp_path / "out"
        first = start(job, out, sb, "--concurrency", "1")
        wait_for(lambda: done_lines(out) >= 1)
        second = run(job, out, sb)
        assert second.returncode == 5 and "in use by a running batch-runner" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        third = run(job, out, sb, "--concurrency", "4")
        assert third.returncode == 0


def test_no_key_anywhere_in_output_files_or_messages(tmp_path, sandbox):
    out = tmp_path / "out"
    prompts = ["[sandbox:fail=400] rejected", "[sandbox:fail-once=500] flaky", "fine"]
    result = run(manifest(tmp_path, prompts), out, sandbox)
    status = run_cli("status", str(out), "--json")
    texts = [result.stdout, result.stderr, status.stdout, status.stderr]
    texts += [p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()]
    assert not [t for t in texts if FAKE_KEY in t]


def test_status_reports_counts_spend_and_what_is_left(tmp_path):
    with sandbox_with(credits=2 * 0.063 + 0.001) as sb:
        out = tmp_path / "out"
        run(manifest(tmp_path, ["s1", "s2", "s3", "[sandbox:fail=400] s4"]), out, sb, "--concurrency", "1")
        result = run_cli("status", str(out), "--json")
        summary = json.loads(result.stdout)
        assert summary["counts"]["succeeded"] == 2
        assert summary["spent_usd"] == pytest.approx(2 * 0.063)
        assert summary["left"] == 4 - 2 - summary["counts"]["failed"]
        human = run_cli("status", str(out))
        assert "succeeded" in human.stdout and "$0.13" in human.stdout


def test_cron_gets_plain_log_lines_not_a_bar(tmp_path, sandbox):
    result = run(manifest(tmp_path, ["log me"]), tmp_path / "out", sandbox)
    assert " progress 1/1 " in result.stderr and "\r" not in result.stderr


def test_sandbox_flag_runs_without_a_key_and_says_so(tmp_path):
    job = manifest(tmp_path, ["sandbox quick"])
    # Log mode: a quiet run that succeeds prints nothing at all, banner included (test_nightly.py).
    result = run_cli("run", str(job), "--sandbox", "--output", str(tmp_path / "out"), "--progress", "log",
                     env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "No credits are spent and the images are placeholders" in result.stderr
    assert manifest_frame(tmp_path / "out").status.tolist() == ["succeeded"]


def test_missing_key_is_a_usage_error(tmp_path):
    result = run_cli("run", str(manifest(tmp_path, ["x"])), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "SEGMIND_API_KEY" in result.stderr


def test_bad_manifest_exits_2_before_any_request(tmp_path, sandbox):
    job = manifest(tmp_path, ["fine"], extra="  seed: [5]\n")
    result = run(job, tmp_path / "out", sandbox)
    assert result.returncode == 2 and "seed 5 is out of range" in result.stderr
    assert sandbox.stats()["received"] == 0


def test_api_key_file_is_read_and_a_missing_one_is_a_usage_error(tmp_path, sandbox):
    key_file = tmp_path / "key.txt"
    key_file.write_text(FAKE_KEY + "\n", encoding="utf-8")
    job, out = manifest(tmp_path, ["from a key file"]), tmp_path / "out"
    result = run(job, out, sandbox, "--api-key-file", str(key_file), key="fake-env-key-that-is-ignored")
    assert result.returncode == 0, result.stdout + result.stderr
    missing = run(job, tmp_path / "other", sandbox, "--api-key-file", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "nope.txt: cannot read it" in missing.stderr


def test_progress_bar_when_asked_for_one(tmp_path, sandbox):
    result = run(manifest(tmp_path, ["bar one", "bar two"]), tmp_path / "out", sandbox, "--progress", "bar")
    assert result.returncode == 0
    assert "2/2" in result.stderr and "img" in result.stderr and "spent $0.13" in result.stderr
