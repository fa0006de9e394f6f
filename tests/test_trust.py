"""The ledger never understates what may have been billed, and nothing paid for is silently lost:
crashes, unreachable endpoints, hostile proxies, full disks and bugs, over real HTTP and the
real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from batch_runner.sandbox import V1_PATH, Sandbox, SandboxConfig
from tests.helpers import (
    FAKE_KEY,
    REPO,
    done_lines,
    env_with_key,
    free_port,
    manifest,
    manifest_frame,
    run,
    run_args,
    run_cli,
    sandbox_with,
    start,
    wait_for,
)
from tests.hostile import Answer, HostileServer

PRICE = 0.063


def status_json(out: Path) -> dict:
    result = run_cli("status", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def billed_per_body(sb: Sandbox) -> dict[str, int]:
    return {item_id: v["billed"] for item_id, v in sb.stats()["bodies"].items()}


# ------------------------------------------------------------------------ money after crashes


def test_attempts_cut_off_by_kill_9_stay_possibly_billed_after_the_retry_succeeds(tmp_path):
    # Slow answers keep 4 requests in flight at the kill; the server bills them all the same.
    with sandbox_with(latency_s=0.6) as sb:
        job, out = manifest(tmp_path, [f"crash ledger {i}" for i in range(16)]), tmp_path / "out"
        proc = start(job, out, sb, "--concurrency", "4")
        wait_for(lambda: done_lines(out) >= 4 and sb.stats()["received"] >= 8)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        result = run(job, out, sb, "--concurrency", "4")
        assert result.returncode == 0, result.stderr
        assert set(manifest_frame(out).status) == {"succeeded"}
        billed = sb.stats()
        twice = sum(1 for n in billed_per_body(sb).values() if n > 1)
        assert twice >= 1  # the kill caught requests in flight, and the resume bought them again

        summary = status_json(out)
        # The invoice is the sandbox's bill: the ledger's two figures together never fall short.
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= billed["spent"] - 1e-9
        assert summary["unanswered_attempts"] >= twice
        assert summary["possibly_billed_usd"] == pytest.approx(summary["unanswered_attempts"] * PRICE)
        frame = manifest_frame(out)
        assert frame.unanswered.sum() == summary["unanswered_attempts"]
        human = run_cli("status", str(out)).stdout
        assert "possibly" in human and "may have been billed" in human
        assert "possibly billed" in result.stdout  # the final summary shows both figures too


def test_max_cost_counts_possibly_billed_attempts_across_runs(tmp_path):
    # Each run is killed with requests in flight; the resumes must count those as spent, so
    # the server's own bill never passes --max-cost.
    with sandbox_with(latency_s=0.5) as sb:
        job, out = manifest(tmp_path, [f"budget crash {i}" for i in range(30)]), tmp_path / "out"
        max_cost = 12 * PRICE
        for _ in range(2):
            proc = start(job, out, sb, "--concurrency", "4", "--max-cost", f"{max_cost}")
            before = sb.stats()["received"]
            wait_for(lambda before=before: sb.stats()["received"] >= before + 4, timeout=30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        result = run(job, out, sb, "--concurrency", "4", "--max-cost", f"{max_cost}")
        assert result.returncode == 3, result.stdout + result.stderr
        assert sb.stats()["spent"] <= max_cost + 1e-9
        summary = status_json(out)
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= sb.stats()["spent"] - 1e-9
        assert summary["spent_usd"] + summary["possibly_billed_usd"] <= max_cost + 1e-9


# ------------------------------------------------------------------------ unreachable endpoints


def test_an_unreachable_endpoint_is_not_spend_and_not_failure_and_exits_75(tmp_path):
    port = free_port()
    job, out = manifest(tmp_path, ["offline a", "offline b", "offline c"]), tmp_path / "out"
    endpoint = f"http://127.0.0.1:{port}{V1_PATH}"

    class Down:
        pass

    down = Down()
    down.endpoint = endpoint  # type: ignore[attr-defined]
    result = run(job, out, down, "--max-wait", "1.5", timeout=60)
    assert result.returncode == 75, result.stdout + result.stderr
    assert "unreachable" in result.stdout and "connection was refused" in result.stdout
    assert "run the same command later" in result.stdout
    assert "Traceback" not in result.stderr
    frame = manifest_frame(out)
    assert set(frame.status) == {"pending"} and frame.cost_usd.sum() == 0
    summary = status_json(out)
    assert summary["spent_usd"] == 0 and summary["possibly_billed_usd"] == 0
    assert summary["unanswered_attempts"] == 0

    # The endpoint comes back on the same address: the same command finishes the job.
    with Sandbox(SandboxConfig(keys=(FAKE_KEY,)), port=port) as sb:
        again = run(job, out, down)
        assert again.returncode == 0, again.stdout + again.stderr
        assert set(manifest_frame(out).status) == {"succeeded"}
        assert sb.stats()["billed"] == 3


# ------------------------------------------------------------------------ hostile answers


@pytest.mark.parametrize(
    "answer, reason",
    [
        (Answer(200, b"<html><body>Proxy login</body></html>", {"Content-Type": "text/html"}), "an HTML page"),
        (Answer(200, b'{"error": "queue full"}', {"Content-Type": "application/json"}), "queue full"),
        (Answer(200, b"\xff\xd8\xff\xe0 not really a jpeg", {"Content-Type": "image/jpeg"}), "not an image"),
    ],
    ids=["html", "json-error", "garbage"],
)
def test_a_billed_200_without_a_usable_image_is_bought_at_most_twice(tmp_path, answer, reason):
    with HostileServer(lambda seen: answer) as proxy:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, ["p1", "p2"]), out, proxy)
        assert result.returncode == 1, result.stdout + result.stderr
        assert len(proxy.posts()) == 4  # two items, one paid retry each
        frame = manifest_frame(out)
        assert set(frame.status) == {"failed"} and set(frame.attempts) == {2}
        assert frame.cost_usd.tolist() == pytest.approx([2 * PRICE, 2 * PRICE])
        [error] = set(frame.error)  # one stable reason, the same for every item
        assert reason in error and "0x" not in error


def test_the_key_never_follows_a_redirect_to_another_host(tmp_path):
    with HostileServer(lambda seen: Answer(200, b"{}")) as thief:
        moved = {"Location": thief.url + "/steal", "Content-Type": "text/plain"}
        with HostileServer(lambda seen: Answer(307, b"moved", moved)) as endpoint:
            out = tmp_path / "out"
            result = run(manifest(tmp_path, ["redirected"]), out, endpoint)
            assert result.returncode == 4, result.stdout + result.stderr
            assert "redirects to " + thief.url in result.stdout
            assert thief.seen == []  # nothing, key or not, went to the other host
            assert len(endpoint.posts()) == 1
            assert FAKE_KEY not in result.stdout + result.stderr


def test_the_key_is_redacted_from_server_text_that_is_stored_or_shown(tmp_path):
    echo = json.dumps({"error": f"key {FAKE_KEY} may not use style {FAKE_KEY[:4]}"}).encode()

    def respond(seen):
        return Answer(400 if b"echo" in seen.body else 500, echo, {"Content-Type": "application/json"})

    with HostileServer(respond) as server:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, ["echo me", "server error"]), out, server, "--max-attempts", "2")
        assert result.returncode == 1
        frame = manifest_frame(out).set_index("prompt")
        assert "[redacted]" in frame.loc["echo me", "error"]
        status = run_cli("status", str(out), "--json")
        texts = [result.stdout, result.stderr, status.stdout]
        texts += [p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()]
        assert not [t for t in texts if FAKE_KEY in t]


# Runs argv, passes its stderr on, and prints its exit code and peak RSS (kB) on stdout.
_PEAK_RSS_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "err = p.stderr.read()\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "sys.stderr.buffer.write(err)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def test_a_gzip_bomb_is_cut_off_not_inflated(tmp_path):
    # 1 GB of zeros in ~1 MB: read in full it would take over 1 GB of memory.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(1024)) + packer.flush()
    headers = {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
    with HostileServer(lambda seen: Answer(200, bomb, headers)) as server:
        out = tmp_path / "out"
        # The run is started by a small launcher, not by pytest: a child's ru_maxrss keeps its
        # parent's high-water mark across exec, and this test process is hundreds of MB itself.
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS_LAUNCHER, *run_args(manifest(tmp_path, ["bomb"]), out, server)],
            capture_output=True, text=True, cwd=REPO, env=env_with_key(), timeout=120,
        )  # fmt: skip
        returncode, peak_kb = map(int, proc.stdout.split())
        assert returncode == 1, proc.stderr
        peak_mb = peak_kb / 1024  # kilobytes on Linux
        assert peak_mb < 600, f"peak RSS {peak_mb:.0f} MB"
        row = manifest_frame(out).iloc[0]
        assert row.status == "failed" and "larger than any image" in row.error and row.attempts == 2


# ------------------------------------------------------------------------ configuration


def test_a_key_file_with_two_lines_is_refused_before_anything_is_sent(tmp_path):
    with sandbox_with() as sb:
        key_file = tmp_path / "key.txt"
        key_file.write_text(f"{FAKE_KEY}\nsecond-line-fake\n", encoding="utf-8")
        result = run(manifest(tmp_path, ["x"]), tmp_path / "out", sb, "--api-key-file", str(key_file))
        assert result.returncode == 2 and "2 non-empty lines" in result.stderr
        assert FAKE_KEY not in result.stderr
        assert sb.stats()["received"] == 0


# ------------------------------------------------------------------------ bugs and disks


def test_an_unexpected_error_in_a_worker_stops_the_run_with_70_and_leaves_items_pending(tmp_path):
    with sandbox_with(latency_s=0.05) as sb:
        job, out = manifest(tmp_path, [f"bug {i}" for i in range(8)]), tmp_path / "out"
        # The real CLI, with one fault planted: embedding the recipe fails on the third image.
        planted = (
            "import sys, batch_runner.store.recipe as r\n"
            "calls = []\n"
            "real = r.embed\n"
            "def embed(*a, **k):\n"
            "    calls.append(1)\n"
            "    if len(calls) == 3:\n"
            "        raise RuntimeError('planted bug')\n"
            "    return real(*a, **k)\n"
            "r.embed = embed\n"
            "from batch_runner.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        args = run_args(job, out, sb, "--concurrency", "1")[3:]
        result = subprocess.run(
            [sys.executable, "-c", planted, *args], capture_output=True, text=True, cwd=REPO, env=env_with_key(),
            timeout=60,
        )  # fmt: skip
        assert result.returncode == 70, result.stdout + result.stderr
        assert "internal error (RuntimeError: planted bug)" in result.stdout
        assert "Traceback" not in result.stderr
        frame = manifest_frame(out)
        assert (frame.status == "succeeded").sum() == 2 and (frame.status == "failed").sum() == 0
        assert (frame.status != "succeeded").sum() == 6
        # The image lost to the bug was billed: the ledger keeps it as possibly billed.
        summary = status_json(out)
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= sb.stats()["spent"] - 1e-9
        assert run(job, out, sb).returncode == 0
        assert set(manifest_frame(out).status) == {"succeeded"}


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 2 MB, full or read-only on demand (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {done.stderr!r}")
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_at_once_says_what_was_lost_and_resumes(tmp_path, small_disk):
    with sandbox_with(latency_s=0.02) as sb:
        job, out = manifest(tmp_path, [f"disk {i}" for i in range(80)]), small_disk / "out"
        result = run(job, out, sb, "--concurrency", "2")
        assert result.returncode == 74, result.stdout + result.stderr
        assert "the disk is full" in result.stdout and "Traceback" not in result.stderr
        saved = len([p for p in (out / "images").iterdir() if not p.name.endswith(".partial")])
        billed = sb.stats()["billed"]
        assert 0 < saved < 80
        lost = billed - saved
        if lost:
            assert f"{lost} paid image(s) arrived but could not be saved" in result.stdout
            assert "nothing is lost" not in result.stdout
        else:
            assert "no paid image was lost" in result.stdout

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        again = run(job, out, sb, "--concurrency", "2")
        assert again.returncode == 0, again.stdout + again.stderr
        assert set(manifest_frame(out).status) == {"succeeded"}
        summary = status_json(out)
        assert summary["spent_usd"] + summary["possibly_billed_usd"] >= sb.stats()["spent"] - 1e-9


def test_a_read_only_output_is_a_clear_error_not_an_internal_one(tmp_path, small_disk):
    with sandbox_with() as sb:
        job, out = manifest(tmp_path, ["read only"]), small_disk / "out"
        out.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        result = run(job, out, sb)
        assert result.returncode == 74, result.stdout + result.stderr
        assert "Read-only file system" in result.stderr and "internal error" not in result.stderr
        assert sb.stats()["received"] == 0


def test_a_v2_endpoint_is_refused_before_anything_is_sent(tmp_path):
    with sandbox_with() as sb:
        v2 = sb.url + "/v2/ideogram-turbo-txt-2-img"
        result = run_cli("run", str(manifest(tmp_path, ["queued"])), "--endpoint", v2, env=env_with_key())
        assert result.returncode == 2 and "asynchronous v2 API" in result.stderr and "/v1/" in result.stderr
        assert sb.stats()["received"] == 0
