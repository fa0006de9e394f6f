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


def test_the_fold_streamed_in_small_row_groups_keeps_exactly_the_rows_a_replay_gives(tmp_path, monkeypatch):
    """manifest.parquet and metadata.jsonl, written a few rows at a time, say for every item what
    the plain replay of the journal says; items the plan no longer has stay, as not in_plan."""
    import pandas as pd

    from batch_runner.job.items import Deduplicated
    from batch_runner.job.manifest import load_job
    from batch_runner.store import fold

    job = load_job(manifest(tmp_path, [f"fold {i}" for i in range(40)], extra="  seed: [100, 101, 102]\n"))
    items = list(Deduplicated(job.iter_items()))
    out = OutputDir(tmp_path / "out")
    out.path.mkdir()
    journal = Journal(out.journal)
    journal.run_started(job="fold", price_per_image=0.063)
    for n, item in enumerate(items):
        kind = n % 5  # 0 succeeded, 1 failed, 2 cut off mid-request, 3 a 500 then pending, 4 never sent
        if kind == 4:
            continue
        journal.sent(item.item_id, 1, item.row())
        if kind == 0:
            journal.done(item.item_id, "succeeded", n=1, http_status=200, cost=0.063, latency=1.5,
                         image_path=f"images/{item.item_id}.jpg", seed_value=n, request_id=f"r{n}")  # fmt: skip
        elif kind == 1:
            journal.done(item.item_id, "failed", error="rejected", http_status=400)
        elif kind == 3:
            journal.attempt(item.item_id, 1, 500, "HTTP 500", 0.0, True, 0.25)
    for n in range(9):  # paid for by an earlier version of the job, gone from today's plan
        journal.sent(f"{n:016x}", 1, {"prompt": f"dropped {n}", "seed": 200 + n})
        journal.done(f"{n:016x}", "succeeded", n=1, cost=0.063, image_path=f"images/{n:016x}.jpg", seed_value=n)
    journal.close()
    ledger = ledger_module.load(out)

    written = {}
    for batch in (7, 100_000):
        monkeypatch.setattr(fold, "_BATCH", batch)
        rows = fold.write_manifest(out, iter(items), ledger, job.meta_columns)
        written[batch] = (pd.read_parquet(out.manifest), out.metadata.read_text(encoding="utf-8"))
        assert rows == len(items) + 9
    (frame, lines), (whole, whole_lines) = written[7], written[100_000]
    pd.testing.assert_frame_equal(frame, whole)
    assert lines == whole_lines

    truth = replay(out.journal).items
    planned = {item.item_id: item for item in items}
    assert frame.item_id.is_unique and set(frame.item_id) == set(planned) | set(truth)
    for row in frame.itertuples():
        state = truth.get(row.item_id)
        assert row.in_plan == (row.item_id in planned)
        assert row.status == (state.status if state else "pending")
        assert row.attempts == (state.attempts if state else 0)
        assert row.cost_usd == pytest.approx(state.cost_usd if state else 0.0)
        assert row.unanswered == (state.unanswered if state else 0)
        assert (None if pd.isna(row.image_path) else row.image_path) == (state.image_path if state else None)
        assert (None if pd.isna(row.http_status) else row.http_status) == (state.http_status if state else None)
        expected = planned[row.item_id].params if row.item_id in planned else state.row
        assert (row.prompt, row.seed) == (expected["prompt"], expected["seed"])
    finished = frame[(frame.status == "succeeded") & frame.image_path.notna()]
    records = [json.loads(line) for line in lines.splitlines()]
    assert [r["item_id"] for r in records] == list(finished.item_id)
    assert all(r["file_name"] == truth[r["item_id"]].image_path for r in records)
    assert all(r["text"] == r["prompt"] and r["seed_value"] == truth[r["item_id"]].seed_value for r in records)
    assert len(records) == 24 + 9


def test_taking_rows_a_batch_at_a_time_gives_what_arrow_take_gives():
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(3)
    sizes = [5, 1, 9, 4]
    parts = [pa.table({"id": [f"{n}-{i}" for i in range(k)], "n": list(range(k))}) for n, k in enumerate(sizes)]
    table = pa.concat_tables(parts)
    assert len(table.to_batches()) == 4
    picks = (np.arange(19), np.array([18, 0, 6, 5, 5, 17, 2]), rng.integers(0, 19, 40), np.array([], dtype=np.int64))
    for rows in picks:
        assert ledger_module._take(table, rows).to_pylist() == table.take(pa.array(rows, pa.int64())).to_pylist()


def test_a_long_migration_checkpoints_as_it_goes_and_gives_the_replays_state(tmp_path, monkeypatch):
    """An old output's whole journal, replayed in small chunks with checkpoints (and compactions)
    along the way, ends in exactly the state a plain replay gives, read back from the files."""
    monkeypatch.setattr(ledger_module, "_LINES_PER_CHUNK", 5)
    monkeypatch.setattr(ledger_module, "_MERGE_AT", 7)
    out = OutputDir(tmp_path)
    journal = Journal(out.journal)
    journal.run_started(job="old", price_per_image=0.063)
    for i in range(300):
        item = f"{(i * 7919) % 300:016x}"  # ids out of order, as hashes are
        journal.sent(item, 1, {"prompt": f"p{i}", "seed": 100 + i})
        if i % 4 == 0:
            journal.attempt(item, 1, 500, "HTTP 500", 0.0, True, 0.5)
            journal.sent(item, 2, None)
        if i % 9:
            journal.done(item, "succeeded", n=2 if i % 4 == 0 else 1, cost=0.063, image_path=f"images/{item}.jpg")
    for i in range(0, 300, 11):  # later news for items already checkpointed
        journal.done(f"{(i * 7919) % 300:016x}", "failed", error="rejected", http_status=400)
    journal.close()
    migrated = ledger_module.load(out, checkpoint_past=10)
    assert len(ledger_module.segment_files(out)) >= 1 and migrated.replayed_lines > 600
    _same(migrated, out.journal)  # the migrating object itself, its mapped pages released
    again = ledger_module.load(out)
    assert again.from_snapshot and again.replayed_lines == 0
    _same(again, out.journal)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"e":"sent","id":"a","n":1}\n',
        '{"e":"done","id":"é","status":"succeeded"}\n'.encode(),
        b'\xef\xbb\xbf{"e":"sent","id":"bom","n":1}\n',  # a UTF-8 BOM: json.loads takes it
        '{"e":"sent","id":"u16","n":1}\n'.encode("utf-16-le"),  # json.loads detects UTF-16
        b'{"e":"sent","id":"\xff"}\n',
        b"[1, 2]\n",
        b'{"e":"sent","id":"a","n":1\n',
    ],
)
def test_a_journal_line_means_to_the_ledger_what_it_means_to_the_replay(raw):
    try:
        expected = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        expected = None
    assert ledger_module._parse(raw) == expected
