"""The checkpointed ledger says exactly what a full replay of the journal says, and a crash
while checkpointing or folding loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.store import ledger as ledger_module
from batch_runner.store.journal import Journal, replay
from batch_runner.store.output_dir import OutputDir
from tests.helpers import FAKE_KEY, REPO, env_with_key, manifest, manifest_frame, run, run_args

IDS = ["a", "b", "0123456789abcdef", "fedcba9876543210", "é"]

sent = st.builds(
    lambda i, n, row, at: {"e": "sent", "id": i, "n": n, "at": at, **({"row": row} if row else {})},
    st.sampled_from(IDS),
    st.integers(1, 4),
    st.sampled_from([None, {"prompt": "x", "seed": 1}, {"prompt": "y", "resolution": "RESOLUTION_512_1536"}]),
    st.sampled_from([0.0, 1.5, 100.25]),
)
attempt = st.builds(
    lambda i, n, http, cost, answered, reached, latency: {
        "e": "attempt", "id": i, "n": n, "http": http, "error": None if http == 200 else f"e{http}", "cost": cost,
        "answered": answered, "latency": latency, **({} if reached else {"reached": False}),
    },
    st.sampled_from(IDS), st.integers(1, 4), st.sampled_from([None, 200, 429, 500]),
    st.sampled_from([0.0, 0.063, 0.1]), st.booleans(), st.booleans(), st.sampled_from([0.5, 12.8]),
)  # fmt: skip
done = st.builds(
    lambda i, status, n, extra: {"e": "done", "id": i, "status": status, "at": 7.5, "n": n, **extra},
    st.sampled_from(IDS),
    st.sampled_from(["succeeded", "failed"]),
    st.integers(0, 4),
    st.sampled_from(
        [
            {},
            {"cost": 0.063, "latency": 1.25, "image_path": "images/x.jpg", "seed_value": 3, "request_id": "r"},
            {"error": "rejected", "http_status": 400},
            {"recovered": True, "http_status": 200, "cost": 0.063, "image_path": "images/y.png"},
        ]
    ),
)
run_event = st.builds(
    lambda p: {"e": "run", "at": 1.0, "job": "j", "price_per_image": p}, st.sampled_from([0.063, 0.1])
)
torn = st.sampled_from([b'{"e":"sent","id":"a","n":1', b"\x00\xff garbage", b"[1, 2]", b'{"e":"done"'])
line = st.one_of(sent, attempt, done, run_event, torn)


def _bytes(event) -> bytes:
    if isinstance(event, bytes):
        return event + b"\n"  # a torn line, which the next writer's repair closed
    return (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _same(ledger, path) -> None:
    truth = replay(path)
    assert dict(ledger.items.items()) == truth.items
    assert ledger.runs == truth.runs and ledger.torn_lines == truth.torn_lines
    assert ledger.price == truth.price
    assert ledger.spent == pytest.approx(truth.spent) and ledger.unanswered == truth.unanswered
    assert ledger.rate_limited == sum(s.rate_limited for s in truth.items.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(line, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=3),
    tail=st.sampled_from([b"", b'{"e":"done","id":"a","sta']),
    small=st.booleans(),
)
def test_a_checkpoint_then_the_tail_replays_exactly_like_the_whole_journal(tmp_path, lines, cuts, tail, small):
    out = OutputDir(tmp_path / f"o{os.urandom(4).hex()}")
    out.path.mkdir()
    # Small: replay in chunks of 3 lines, merge every 2 items, and keep chains of segments.
    knobs = ("_LINES_PER_CHUNK", "_MERGE_AT", "_COMPACT_AT")
    original = tuple(getattr(ledger_module, k) for k in knobs)
    for knob, value in zip(knobs, (3, 2, 100.0) if small else original, strict=True):
        setattr(ledger_module, knob, value)
    try:
        written = 0
        with out.journal.open("wb") as f:
            for cut in sorted(cuts) + [len(lines)]:
                for event in lines[written:cut]:
                    f.write(_bytes(event))
                written = max(written, cut)
                f.flush()
                ledger_module.load(out, checkpoint_past=0 if small else None).checkpoint()
            f.write(tail)  # a line torn by a crash, not yet repaired
        ledger = ledger_module.load(out, checkpoint_past=None)
        _same(ledger, out.journal)
        ledger.checkpoint()  # a checkpoint never takes in the torn last line...
        _same(ledger_module.load(out), out.journal)
        Journal(out.journal).close()  # ...which the next writer closes, so it stays one torn line
        _same(ledger_module.load(out), out.journal)
    finally:
        for knob, value in zip(knobs, original, strict=True):
            setattr(ledger_module, knob, value)


def test_a_checkpoint_of_another_journal_is_ignored(tmp_path):
    out = OutputDir(tmp_path)
    journal = Journal(out.journal)
    for i in range(5):
        journal.sent(f"i{i}", 1, {"prompt": str(i)})
        journal.done(f"i{i}", "succeeded", n=1, cost=0.063)
    journal.close()
    assert ledger_module.load(out, checkpoint_past=None).checkpoint()
    # The journal is rewritten shorter (one done line cut out), as a test of recovery does.
    lines = out.journal.read_bytes().splitlines(keepends=True)
    out.journal.write_bytes(b"".join(line for line in lines if b'"i3","status"' not in line))
    ledger = ledger_module.load(out)
    assert not ledger.from_snapshot
    _same(ledger, out.journal)
    # Same length, different bytes: still refused.
    assert ledger_module.load(out, checkpoint_past=None).checkpoint()
    data = out.journal.read_bytes()
    out.journal.write_bytes(data.replace(b'"i1"', b'"i9"'))
    ledger = ledger_module.load(out)
    assert not ledger.from_snapshot
    _same(ledger, out.journal)


def test_an_output_of_the_previous_format_is_migrated_on_first_load(tmp_path):
    out = OutputDir(tmp_path)
    journal = Journal(out.journal)
    for i in range(30):
        journal.sent(f"{i:016x}", 1, {"prompt": str(i)})
        journal.done(f"{i:016x}", "succeeded", n=1, cost=0.063)
    journal.close()
    assert not ledger_module.segment_files(out)
    ledger = ledger_module.load(out, checkpoint_past=10)
    assert not ledger.from_snapshot and ledger_module.segment_files(out)
    again = ledger_module.load(out)
    assert again.from_snapshot and again.replayed_lines == 0
    _same(again, out.journal)


def test_a_crash_between_the_checkpoints_write_and_rename_loses_nothing(tmp_path):
    out = OutputDir(tmp_path)
    journal = Journal(out.journal)
    for i in range(50):
        journal.sent(f"{i:016x}", 1, {"prompt": str(i)})
        journal.done(f"{i:016x}", "succeeded", n=1, cost=0.063)
    journal.close()
    code = (
        "import sys; from batch_runner.store import ledger; from batch_runner.store.output_dir import OutputDir\n"
        "ledger.load(OutputDir(sys.argv[1]), checkpoint_past=0)\n"
    )
    env = {**os.environ, "BATCH_RUNNER_CRASH_AT": "ledger-before-rename"}
    died = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env)
    assert died.returncode == 137
    assert not ledger_module.segment_files(out)
    assert list(tmp_path.glob(".ledger-*.arrow.*.partial"))  # the half-done checkpoint, never read
    _same(ledger_module.load(out), out.journal)
    assert out.remove_partials() == 1


def test_kill_9_at_random_points_during_runs_checkpoints_and_folds_loses_nothing(tmp_path):
    """A small job, killed again and again at random moments (mid-request, mid-checkpoint,
    mid-manifest), then resumed to the end: every item succeeds once per billing record."""
    import random
    import time

    from batch_runner.sandbox import Sandbox, SandboxConfig
    from tests.helpers import start

    rng = random.Random(7)
    with Sandbox(SandboxConfig(keys=(FAKE_KEY,), latency_s=0.02)) as sb:
        job, out = manifest(tmp_path, [f"kill {i}" for i in range(30)]), tmp_path / "out"
        for _ in range(6):
            proc = start(job, out, sb, "--concurrency", "4")
            time.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            proc.communicate()
        # A crash inside the checkpoint's rename window, too.
        env = {**env_with_key(), "BATCH_RUNNER_CRASH_AT": "ledger-before-rename"}
        subprocess.run(run_args(job, out, sb, "--concurrency", "4"), cwd=REPO, env=env, capture_output=True)
        final = run(job, out, sb, "--concurrency", "4")
        assert final.returncode == 0, final.stderr
        frame = manifest_frame(out)
        assert (frame.status == "succeeded").sum() == 30 and frame.item_id.is_unique
        ledger = ledger_module.load(OutputDir(out))
        _same(ledger, out / "journal.jsonl")
        billed = sb.stats()["billed"]
        assert billed <= round(ledger.spent / 0.063) + ledger.unanswered


def test_an_output_of_the_previous_format_resumes_without_sending_anything(tmp_path, sandbox):
    job, out = manifest(tmp_path, [f"old format {i}" for i in range(6)]), tmp_path / "out"
    assert run(job, out, sandbox).returncode == 0
    # What the previous version left: a journal and an unstamped manifest, no checkpoint.
    for segment in out.glob("ledger-*.arrow"):
        segment.unlink()
    import pyarrow.parquet as pq

    table = pq.read_table(out / "manifest.parquet")
    pq.write_table(table.replace_schema_metadata(None), out / "manifest.parquet")
    received = sandbox.stats()["received"]
    again = run(job, out, sandbox)
    assert again.returncode == 0, again.stderr
    assert sandbox.stats()["received"] == received
    assert (manifest_frame(out).status == "succeeded").sum() == 6
    # (A journal this small is replayed whole; past 20,000 lines the run writes a checkpoint.)


def test_a_resume_with_nothing_to_do_leaves_a_current_manifest_alone(tmp_path, sandbox):
    job, out = manifest(tmp_path, ["kept a", "kept b"]), tmp_path / "out"
    assert run(job, out, sandbox).returncode == 0
    before = (out / "manifest.parquet").stat().st_mtime_ns
    again = run(job, out, sandbox)
    assert again.returncode == 0 and "2 succeeded" in again.stdout + again.stderr
    assert (out / "manifest.parquet").stat().st_mtime_ns == before
    status = subprocess.run(
        [sys.executable, "-m", "batch_runner", "status", str(out), "--json"], capture_output=True, text=True, cwd=REPO
    )
    summary = json.loads(status.stdout)
    assert summary["counts"]["succeeded"] == 2 and summary["items"] == 2 and summary["left"] == 0
