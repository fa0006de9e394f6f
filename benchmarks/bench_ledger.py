"""Resume and `status` on a finished output of 10^4, 10^5 and 10^6 items; the fold's cost.

For each size, a job (PartiPrompts x 5 styles x seeds, as in bench_plan.py) and a synthetic
journal in the journal's own format (per item: `sent` with its row, then `done` succeeded) are
written; no images. Then, each in its own process so its peak RSS is its own (os.wait4):

1. `batch-runner run JOB --sandbox` with nothing to send, twice: the first run on a journal no
   snapshot covers yet (what an output of the previous format costs, once), then the steady state;
2. `batch-runner status --json`.

3. the fold, in a process of its own too: a checkpoint of the ledger after 1% of the items got
   news (the periodic cost during a long run), then the final manifest.parquet and
   metadata.jsonl written from the whole plan, with that process's peak RSS.

Targets (issue 14): a no-op resume and `status` under 10 s at 10^6 items, and every process
under 500 MB at any size.

    python benchmarks/bench_ledger.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_plan import manifest_for  # noqa: E402


def synthesize(job_path: Path, out: Path) -> int:
    """A journal where every item of the job succeeded; returns the item count."""
    from batch_runner.job.items import Deduplicated
    from batch_runner.job.manifest import load_job

    job = load_job(job_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    now = time.time()
    count = 0
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with open(out / "journal.jsonl", "w", encoding="utf-8") as f:
        f.write(dumps({"e": "run", "at": now, "job": job.name, "sandbox": True, "price_per_image": 0.063}) + "\n")
        for item in Deduplicated(job.iter_items()):
            count += 1
            i = item.item_id
            f.write(dumps({"e": "sent", "id": i, "n": 1, "at": now, "row": item.row()}) + "\n")
            f.write(
                dumps(
                    {"e": "done", "id": i, "status": "succeeded", "at": now + 1, "n": 1, "http_status": 200,
                     "error": None, "cost": 0.063, "latency": 12.8, "image_path": f"images/{i}.jpg",
                     "seed_value": 1234, "request_id": f"req-{i}", "remaining_credits": 100.0}
                )
                + "\n"
            )  # fmt: skip
    return count


def measure_wait4(*args: str) -> tuple[float, float, str]:
    """Wall time and the process's own peak RSS (MB), read with wait4."""
    with tempfile.TemporaryFile() as sink, tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "batch_runner", *args], stdout=sink, stderr=errors, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        sink.seek(0)
        errors.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{args} failed: {errors.read().decode()[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024, sink.read().decode()


def fold_cost(job_path: Path, out: Path) -> tuple[float, float]:
    """Seconds for one periodic fold after 1% of the items got news, then the final manifest."""
    from batch_runner.job.manifest import load_job
    from batch_runner.store import ledger as ledger_module
    from batch_runner.store.fold import write_manifest
    from batch_runner.store.journal import Journal
    from batch_runner.store.output_dir import OutputDir

    job = load_job(job_path)
    od = OutputDir(out)
    led = ledger_module.load(od)
    ids = list(itertools.islice(led.item_ids(), max(1, len(led) // 100)))
    journal = Journal(od.journal)
    for i in ids:
        journal.write({"e": "attempt", "id": i, "n": 2, "http": 500, "error": "x", "cost": 0.0, "answered": True,
                       "latency": 1.0})  # fmt: skip
    journal.close()
    start = time.perf_counter()
    led = ledger_module.load(od)
    led.checkpoint()
    checkpoint = time.perf_counter() - start
    from batch_runner.job.items import Deduplicated

    start = time.perf_counter()
    write_manifest(od, Deduplicated(job.iter_items()), led, job.meta_columns)
    manifest = time.perf_counter() - start
    return checkpoint, manifest


def measure_fold(job: Path, out: Path) -> tuple[float, float, float]:
    """fold_cost() in a process of its own: (checkpoint s, manifest s, peak RSS MB)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
        "from benchmarks.bench_ledger import fold_cost\n"
        "print(json.dumps(fold_cost(Path(sys.argv[2]), Path(sys.argv[3]))))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO), str(job), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the fold failed: {stderr.decode()[-2000:]}")
    checkpoint, manifest = json.loads(stdout)
    return checkpoint, manifest, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--no-fold", action="store_true")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    args = parser.parse_args()
    print(
        f"{'items':>9} {'journal MB':>10} | {'1st resume s':>12} {'MB':>5} | {'resume s':>8} {'MB':>5} | "
        f"{'status s':>8} {'MB':>5} | {'checkpoint s':>12} {'manifest s':>10} {'MB':>5}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            job = manifest_for(size, Path(tmp))
            out = Path(tmp) / f"out-{size}"
            items = synthesize(job, out)
            journal_mb = (out / "journal.jsonl").stat().st_size / 1e6
            run = ("run", str(job), "--output", str(out), "--sandbox", "--progress", "quiet")
            first_s, first_mb, _ = measure_wait4(*run)
            again_s, again_mb, _ = measure_wait4(*run)
            status_s, status_mb, text = measure_wait4("status", str(out), "--json")
            summary = json.loads(text)
            assert summary["counts"]["succeeded"] == items, summary
            checkpoint_s = manifest_s = fold_mb = float("nan")
            if not args.no_fold:
                checkpoint_s, manifest_s, fold_mb = measure_fold(job, out)
            print(
                f"{items:>9,} {journal_mb:>10.0f} | {first_s:>12.2f} {first_mb:>5.0f} | {again_s:>8.2f} "
                f"{again_mb:>5.0f} | {status_s:>8.2f} {status_mb:>5.0f} | {checkpoint_s:>12.2f} {manifest_s:>10.2f} "
                f"{fold_mb:>5.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
