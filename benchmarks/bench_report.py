"""How long `batch-runner report` takes on a big run, and how fast its page opens.

A real sandbox run (zero latency) makes --real items, every prompt quoting a text the sandbox
draws (misspelt in 30% of ANIME's images); the manifest is then grown synthetically to --items
rows: new item ids and prompts (quoting the same text), each pointing at a hard link of a real
image (so every thumbnail and every text check still decodes a real JPEG), some failed with a
reason and some left pending. Then:

- `batch-runner report OUT` cold (no thumbnails, no text read yet: every succeeded image goes
  through Tesseract) and warm (thumbnails and text checks reused), with the text check's own
  seconds per image;
- the page in headless Chromium (Debian's chromium + chromedriver): time to DOMContentLoaded and
  to the first grid paint (the page sets window.__gridPaintedAt), and the HTML's size.

    python benchmarks/bench_report.py [--items 10000] [--real 2000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batch_runner.sandbox import Sandbox, SandboxConfig  # noqa: E402

KEY = "bench-key-not-real"
WORDS = ["OPEN LATE", "Fresh Bread", "SALE TODAY", "Gone Fishing", "NO PARKING", "Mind the gap", "Night Market"]


def real_run(folder: Path, n: int) -> Path:
    prompts = max(1, n // 4)
    (folder / "prompts.tsv").write_text(
        "Prompt\tCategory\n"
        + "".join(f'bench poster {i} that says "{WORDS[i % len(WORDS)]} {i}"\tcat{i % 7}\n' for i in range(prompts)),
        encoding="utf-8",
    )
    job = folder / "bench.yaml"
    job.write_text(
        "name: bench\ndefaults: {resolution: RESOLUTION_1024_1024, magic_prompt_option: 'OFF'}\n"
        "grid:\n  prompt: {file: prompts.tsv, column: Prompt}\n  style_type: [GENERAL, ANIME]\n  seed: [100, 200]\n",
        encoding="utf-8",
    )
    out = folder / "out"
    env = {**os.environ, "SEGMIND_API_KEY": KEY}
    config = SandboxConfig(keys=(KEY,), latency_s=0, credits=1e9, misspell=(("ANIME", 0.3),))
    with Sandbox(config) as sandbox:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "batch_runner", "run", str(job), "--output", str(out), "--endpoint",
             sandbox.endpoint, "--progress", "quiet", "--concurrency", "16"],
            cwd=REPO, env=env, check=False,
        )  # fmt: skip
    print(f"sandbox run: {prompts * 4} items in {time.perf_counter() - started:.1f} s")
    return out


def grow(out: Path, total: int) -> None:
    """Add synthetic rows until the manifest has `total`: 2% failed, 3% pending, the rest succeeded."""
    table = pq.read_table(out / "manifest.parquet")
    frame = table.to_pandas()
    done = frame[frame.status == "succeeded"]
    rows, k = [], 0
    while len(frame) + len(rows) < total:
        base = done.iloc[k % len(done)].to_dict()
        new_id = hashlib.sha1(f"synthetic {k}".encode()).hexdigest()[:16]
        row = {**base, "item_id": new_id, "prompt": f"{base['prompt']} (variant {k // len(done) + 1})"}
        if k % 50 == 7:
            row.update(status="failed", error="HTTP 400: Invalid parameters (synthetic)", image_path=None, cost_usd=0.0)
        elif k % 33 == 5:
            row.update(status="pending", image_path=None, cost_usd=0.0, latency_s=None)
        else:
            target = out / "images" / f"{new_id}.jpg"
            if not target.exists():
                os.link(out / base["image_path"], target)
            row["image_path"] = f"images/{new_id}.jpg"
        rows.append(row)
        k += 1
    grown = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    pq.write_table(pa.Table.from_pandas(grown, schema=table.schema, preserve_index=False), out / "manifest.parquet")
    print(f"manifest grown to {len(grown)} rows ({len(rows)} synthetic)")


def report(out: Path, label: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "batch_runner", "report", str(out)], cwd=REPO, capture_output=True, text=True
    )
    took = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sheets = next(line for line in lines if "contact sheet(s)" in line)
    print(f"report ({label}): {took:.1f} s — {sheets}")
    for line in lines:
        if line.startswith("text check:"):
            match = re.search(r"; (\d+) read now.*\(([\d.]+) s\)", line)
            read, seconds = (int(match[1]), float(match[2])) if match else (0, 0.0)
            per = f"{seconds / read:.3f} s an image, {os.cpu_count()} cores" if read else "nothing read"
            print(f"  {line}  → {per}")
        elif line.startswith("verdict:"):
            print(f"  {line}")
    return took


def open_page(index: Path) -> None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("page: skipped (needs Debian's chromium and chromium-driver)")
        return
    from tests.test_report import _chrome

    driver = _chrome()
    try:
        for attempt in ("first", "again"):
            driver.get("about:blank")
            started = time.perf_counter()
            driver.get(index.resolve().as_uri())
            while not driver.execute_script("return window.__gridPaintedAt !== undefined"):
                time.sleep(0.01)
            wall = time.perf_counter() - started
            dcl, painted, tiles = driver.execute_script(
                "const nav = performance.getEntriesByType('navigation')[0];"
                "return [nav.domContentLoadedEventEnd, window.__gridPaintedAt,"
                " document.querySelectorAll('#grid .tile').length]"
            )
            print(
                f"page ({attempt}): DOMContentLoaded {dcl / 1000:.2f} s, first grid paint {painted / 1000:.2f} s "
                f"({tiles} tiles), wall {wall:.2f} s"
            )
        started = time.perf_counter()
        driver.execute_script(
            "const s = document.getElementById('axis-rows'); s.value = 'Category'; s.dispatchEvent(new Event('change'))"
        )
        print(f"page: switching rows to Category re-drew the grid in {time.perf_counter() - started:.2f} s")
    finally:
        driver.quit()
    print(f"page: index.html is {index.stat().st_size / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--real", type=int, default=2_000, help="items made by a real sandbox run")
    parser.add_argument("--keep", type=Path, help="build the run in this folder and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        out = real_run(folder, args.real)
        grow(out, args.items)
        report(out, "cold: every thumbnail made")
        report(out, "warm: thumbnails reused")
        open_page(out / "report" / "index.html")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
