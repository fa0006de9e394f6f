"""Plan 10^4, 10^5 and 10^6 items; print wall time and peak memory for each.

Each size runs `batch-runner plan --json` in its own process, so the peak RSS is that plan's
alone (read with wait4). Target on a 2-core machine: 10^6 items in < 15 s and < 1 GB. A YAML
grid (PartiPrompts × styles × seeds) reads one value file; a CSV manifest of one row per item
puts the strict CSV reader and the per-row checks to work (--csv-sizes).

    python benchmarks/bench_plan.py [--sizes 10000,100000,1000000] [--csv-sizes 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTI = REPO / "jobs" / "data" / "PartiPrompts.tsv"


def manifest_for(size: int, folder: Path) -> Path:
    """PartiPrompts × 5 styles × enough random seeds to reach at least size items."""
    prompts = 1632
    seeds = -(-size // (prompts * 5))
    path = folder / f"bench-{size}.yaml"
    path.write_text(
        f"name: bench-{size}\n"
        f"grid:\n"
        f"  prompt: {{file: {PARTI}, column: Prompt}}\n"
        f"  style_type: [GENERAL, REALISTIC, DESIGN, RENDER_3D, ANIME]\n"
        f"  seed: {{random: {seeds}, base: 1}}\n"
        f"defaults: {{resolution: RESOLUTION_1024_1024, magic_prompt_option: 'OFF'}}\n",
        encoding="utf-8",
    )
    return path


def csv_manifest_for(size: int, folder: Path) -> Path:
    """One row per item: a quoted prompt with a comma, a style, a seed, two metadata columns."""
    styles = ("GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME")
    path = folder / f"bench-{size}.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("prompt,style_type,seed,Category,note\n")
        for i in range(size):
            f.write(f'"prompt number {i}, with a comma",{styles[i % 5]},{100 + i % 900_000},cat{i % 7},n{i}\n')
    return path


def measure(path: Path) -> tuple[int, float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_runner", "plan", str(path), "--json"],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"plan failed for {path}")
    return json.loads(out)["items"], elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--csv-sizes", default="100000")
    args = parser.parse_args()
    runs = [(int(s), "yaml", manifest_for) for s in args.sizes.split(",") if s]
    runs += [(int(s), "csv", csv_manifest_for) for s in args.csv_sizes.split(",") if s]
    print(f"{'manifest':>8} {'target':>10} {'items':>10} {'seconds':>8} {'items/s':>10} {'peak MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size, kind, make in runs:
            items, seconds, peak_mb = measure(make(size, Path(tmp)))
            print(f"{kind:>8} {size:>10,} {items:>10,} {seconds:>8.2f} {items / seconds:>10,.0f} {peak_mb:>8.0f}")


if __name__ == "__main__":
    main()
