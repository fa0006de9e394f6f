"""Plan 10^4, 10^5 and 10^6 items; print wall time and peak memory for each.

Each size runs `batch-runner plan --json` in its own process, so the peak RSS is that plan's
alone (read with wait4). Target on a 2-core machine: 10^6 items in < 15 s and < 1 GB.

    python benchmarks/bench_plan.py [--sizes 10000,100000,1000000]
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
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    print(f"{'target':>10} {'items':>10} {'seconds':>8} {'items/s':>10} {'peak MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            items, seconds, peak_mb = measure(manifest_for(size, Path(tmp)))
            print(f"{size:>10,} {items:>10,} {seconds:>8.2f} {items / seconds:>10,.0f} {peak_mb:>8.0f}")


if __name__ == "__main__":
    main()
