"""Reports, summaries, exports and recipes, on a real run against the sandbox."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import batch_runner
from batch_runner.results.report import _FAILED_BG, CELL, LABEL_W, PAD
from batch_runner.sandbox import Sandbox
from tests.helpers import REPO, run, run_cli, sandbox_config

FAILING = "[sandbox:fail=400] a prompt the server rejects"


def sweep_job(folder: Path, prompts: list[tuple[str, str]]) -> Path:
    (folder / "prompts.tsv").write_text(
        "Prompt\tCategory\n" + "".join(f"{p}\t{c}\n" for p, c in prompts), encoding="utf-8"
    )
    job = folder / "sweep.yaml"
    job.write_text(
        "name: sweep\n"
        "defaults: {resolution: RESOLUTION_512_1536, magic_prompt_option: 'OFF'}\n"
        "grid:\n"
        "  prompt: {file: prompts.tsv, column: Prompt}\n"
        "  style_type: [GENERAL, ANIME]\n"
        "  seed: [100, 200]\n",
        encoding="utf-8",
    )
    return job


PROMPTS = [("a red bicycle", "Vehicles"), ("a sleepy cat", "Animals"), ("a tall lighthouse", "Outdoor"),
           (FAILING, "Broken")]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One run shared by the module's read-only tests (they work on copies of it)."""
    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "out"
    with Sandbox(sandbox_config(latency_s=0.02)) as sandbox:
        result = run(sweep_job(folder, PROMPTS), out, sandbox, "--concurrency", "4")
    assert result.returncode == 1, result.stderr  # the rejected prompt fails, the rest succeed
    return out


def copy_of(out: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(out, target)
    return target


def test_load_returns_items_and_summaries(sweep):
    results = batch_runner.load(sweep)
    items = results.items
    assert len(items) == 16 and (items.status == "succeeded").sum() == 12
    assert set(results.axes) >= {"prompt", "style_type", "seed", "Category"}
    totals = dict(zip(results.totals.metric, results.totals.value, strict=True))
    assert totals["spend_usd"] == pytest.approx(12 * 0.063) and totals["failed"] == 4
    spend = results.spend_by_axis.query("axis == 'style_type'").set_index("value")
    assert spend.loc["ANIME", "spend_usd"] == pytest.approx(6 * 0.063) and spend.loc["ANIME", "failed"] == 2
    assert results.failures.iloc[0]["items"] == 4 and "Invalid parameters" in results.failures.iloc[0]["reason"]
    assert results.latency.iloc[0]["n"] == 12 and results.latency.iloc[0]["p95_s"] >= results.latency.iloc[0]["p50_s"]
    assert dict(zip(results.by_status.status, results.by_status["items"], strict=True))["succeeded"] == 12


def test_default_sheets_are_prompt_by_style_one_per_seed_with_failures_marked(sweep, tmp_path):
    out = copy_of(sweep, tmp_path)
    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr
    assert "prompt × style_type, one set per seed" in result.stdout.replace(" by ", " × ")
    sheets = sorted((out / "report" / "sheets").glob("*.png"))
    assert len(sheets) == 2  # seeds 100 and 200
    for path in sheets:
        sheet = Image.open(path).convert("RGB")
        assert sheet.width == LABEL_W + 2 * (CELL + PAD) + PAD  # GENERAL and ANIME columns
        colours = {colour for _, colour in sheet.getcolors(maxcolors=1 << 20)}
        assert _FAILED_BG in colours  # the rejected prompt's cells are marked


def test_rows_of_metadata_keep_the_prompt_inside_the_cells(sweep, tmp_path):
    out = copy_of(sweep, tmp_path)
    result = run_cli("report", str(out), "--rows", "Category")
    assert result.returncode == 0, result.stderr
    # Category follows from the prompt, so prompts are not split onto sheets of their own:
    # one sheet per seed, Category rows × style_type columns.
    assert "one set per seed" in result.stdout
    assert len(list((out / "report" / "sheets").glob("*.png"))) == 2
    assert run_cli("report", str(out), "--rows", "Category", "--group", "prompt").returncode == 0
    names = [p.name for p in (out / "report" / "sheets").glob("*.png")]
    assert len(names) == 4 and not [n for n in names if n.startswith(("sheet-100-", "sheet-200-"))]  # replaced


def test_custom_rows_cols_group_and_a_bad_axis(sweep, tmp_path):
    out = copy_of(sweep, tmp_path)
    result = run_cli("report", str(out), "--rows", "Category", "--cols", "seed", "--group", "style_type")
    assert result.returncode == 0, result.stderr
    sheets = sorted((out / "report" / "sheets").glob("*.png"))
    assert len(sheets) == 2 and any("ANIME" in p.name for p in sheets)
    bad = run_cli("report", str(out), "--rows", "colour")
    assert bad.returncode == 2 and "--rows 'colour' is not a column" in bad.stderr and "Category" in bad.stderr


def test_large_sweeps_are_split_into_pages(tmp_path, sandbox):
    prompts = [(f"page test prompt {i}", "Pages") for i in range(20)]
    job = sweep_job(tmp_path, prompts)
    job.write_text(job.read_text().replace("  seed: [100, 200]\n", ""), encoding="utf-8")
    out = tmp_path / "out"
    assert run(job, out, sandbox, "--concurrency", "4").returncode == 0
    assert run_cli("report", str(out)).returncode == 0
    sheets = sorted((out / "report" / "sheets").glob("*.png"))
    assert len(sheets) == 3  # 20 prompt rows, 8 to a page
    heights = [Image.open(p).height for p in sheets]
    assert heights[0] == heights[1] > heights[2]


def test_csv_summaries_match_the_manifest(sweep, tmp_path):
    out = copy_of(sweep, tmp_path)
    assert run_cli("report", str(out), "--csv").returncode == 0
    spend = pd.read_csv(out / "report" / "spend_by_axis.csv")
    manifest = pd.read_parquet(out / "manifest.parquet")
    for axis in ("style_type", "seed", "Category"):
        assert spend[spend.axis == axis].spend_usd.sum() == pytest.approx(manifest.cost_usd.sum())
    assert {p.name for p in (out / "report").glob("*.csv")} == {
        "totals.csv", "by_status.csv", "spend_by_axis.csv", "latency.csv", "failures.csv", "verdict.csv"}  # fmt: skip


def test_html_report_embeds_every_item_and_the_summary(sweep, tmp_path):
    out = copy_of(sweep, tmp_path)
    assert run_cli("report", str(out)).returncode == 0
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script id="report-data" type="application/json">')[1].split("</script>")[0])
    assert len(data["items"]) == 16 and "Category" in data["filters"] and "style_type" in data["filters"]
    assert set(data["axes"]) >= {"prompt", "style_type", "seed", "Category"} and data["layout"]["page"] == "seed"
    assert "$0.76" in page and "Failure reasons" in page and "sheets/sheet-" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    thumbs = list((out / "report" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 12 and max(Image.open(t).size[1] for t in thumbs) <= 256


def _chrome():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium and chromium-driver")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1400"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_browser_loads_the_report_filters_rows_and_renders(sweep, tmp_path):
    out = copy_of(sweep, tmp_path)
    assert run_cli("report", str(out)).returncode == 0
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = _chrome()
    try:
        driver.get((out / "report" / "index.html").resolve().as_uri())
        Select(driver.find_element(By.ID, "axis-page")).select_by_value("")  # every seed on one grid
        tiles = lambda: driver.find_elements(By.CSS_SELECTOR, "#grid .tile")  # noqa: E731
        row_of = lambda tile: tile.find_element(By.XPATH, "ancestor::tr/th").text  # noqa: E731
        assert len(tiles()) == 16
        Select(driver.find_element(By.CSS_SELECTOR, 'select[data-column="Category"]')).select_by_value("Animals")
        assert len(tiles()) == 4 and all(row_of(t) == "a sleepy cat" for t in tiles())
        Select(driver.find_element(By.CSS_SELECTOR, 'select[data-column="status"]')).select_by_value("failed")
        assert len(tiles()) == 0 and "0 matching items" in driver.find_element(By.ID, "count").text
        Select(driver.find_element(By.CSS_SELECTOR, 'select[data-column="Category"]')).select_by_value("")
        assert len(tiles()) == 4 and all("FAILED" in t.text for t in tiles())
        driver.find_element(By.ID, "search").send_keys("lighthouse")
        assert len(tiles()) == 0
        Select(driver.find_element(By.CSS_SELECTOR, 'select[data-column="status"]')).select_by_value("")
        assert len(tiles()) == 4 and all(row_of(t) == "a tall lighthouse" for t in tiles())
        time.sleep(0.3)  # let lazy images paint before the screenshot
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert errors == []
    assert len(shot.getcolors(maxcolors=1 << 20)) > 50  # a blank page has one or two colours
    assert shot.size[0] >= 1000


def test_export_imagefolder_loads_with_hugging_face_and_only_adds_new(sweep, tmp_path, sandbox):
    out, dataset = copy_of(sweep, tmp_path), tmp_path / "dataset"
    first = run_cli("export", str(out), "--format", "imagefolder", "--to", str(dataset))
    assert first.returncode == 0 and "exported 12 new item(s)" in first.stdout
    again = run_cli("export", str(out), "--format", "imagefolder", "--to", str(dataset))
    assert "exported 0 new item(s)" in again.stdout and "12 were there already" in again.stdout
    lines = pd.read_parquet(dataset / "metadata.parquet").to_dict("records")
    assert len(lines) == 12 and all((dataset / line["file_name"]).exists() for line in lines)
    assert {"text", "prompt", "style_type", "seed", "Category", "item_id"} <= set(lines[0])
    card = (dataset / "README.md").read_text()
    assert card.startswith("---\n") and "dtype: image" in card and "12 images" in card

    # Columns empty in every row (negative_prompt here) keep their type: a trainer's schema
    # does not change with the data.
    code = (
        "import json, sys\nfrom datasets import load_dataset\n"
        "ds = load_dataset('imagefolder', data_dir=sys.argv[1], split='train')\n"
        "types = {k: str(v) for k, v in ds.features.items()}\n"
        "print(json.dumps({'rows': len(ds), 'size': list(ds[0]['image'].size), 'cats': sorted(set(ds['Category'])),"
        " 'negative_prompt': types['negative_prompt'], 'seed_value': types['seed_value']}))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", code, str(dataset)], capture_output=True, text=True, env=env)
    assert loaded.returncode == 0, loaded.stderr[-1500:]
    summary = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert summary == {
        "rows": 12,
        "size": [512, 1536],
        "cats": ["Animals", "Outdoor", "Vehicles"],
        "negative_prompt": "Value('string')",
        "seed_value": "Value('int64')",
    }


def test_export_webdataset_shards_and_adds_only_new_shards(tmp_path, sandbox):
    prompts = [("web one", "A"), ("web two", "B")]
    job, out, shards = sweep_job(tmp_path, prompts), tmp_path / "out", tmp_path / "wds"
    assert run(job, out, sandbox).returncode == 0  # 2 prompts × 2 styles × 2 seeds
    assert (
        run_cli("export", str(out), "--format", "webdataset", "--to", str(shards), "--shard-size", "3").returncode == 0
    )
    first = sorted(shards.glob("shard-*.tar"))
    assert [p.name for p in first] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in first}
    with tarfile.open(first[0]) as tar:
        names = tar.getnames()
        assert len(names) == 9 and {n.split(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
        record = json.load(tar.extractfile([n for n in names if n.endswith(".json")][0]))
        assert record["text"] == record["prompt"] and record["Category"] in ("A", "B")
        caption = tar.extractfile([n for n in names if n.endswith(".txt")][0]).read().decode()
        assert caption in ("web one", "web two")

    sweep_job(tmp_path, prompts + [("web three", "C")])
    assert run(job, out, sandbox).returncode == 0
    again = run_cli("export", str(out), "--format", "webdataset", "--to", str(shards), "--shard-size", "3")
    assert "exported 4 new item(s)" in again.stdout
    after = sorted(shards.glob("shard-*.tar"))
    assert len(after) == 5
    assert all(hashlib.sha256((shards / n).read_bytes()).hexdigest() == d for n, d in digests.items())
    keys = []
    for shard in after:
        with tarfile.open(shard) as tar:
            keys += [n.split(".")[0] for n in tar.getnames() if n.endswith(".json")]
    assert len(keys) == len(set(keys)) == 12


def test_every_image_carries_a_recipe_that_replans_to_the_same_item(sweep, tmp_path):
    frame = pd.read_parquet(sweep / "manifest.parquet")
    row = frame[(frame.status == "succeeded") & (frame.Category == "Animals")].iloc[0]
    result = run_cli("recipe", str(sweep / row.image_path))
    assert result.returncode == 0, result.stderr
    assert "Animals" in result.stdout  # the original item's metadata, as a comment
    manifest = tmp_path / "again.yaml"
    manifest.write_text(result.stdout, encoding="utf-8")
    plan = json.loads(run_cli("plan", str(manifest), "--json").stdout)
    assert plan["items"] == 1 and plan["first_items"][0]["item_id"] == row.item_id


def test_recipe_of_an_image_without_one_is_a_clear_error(tmp_path):
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    result = run_cli("recipe", str(plain))
    assert result.returncode == 2 and "carries no batch-runner recipe" in result.stderr
    missing = run_cli("recipe", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_report_on_a_folder_without_a_run_is_a_usage_error(tmp_path):
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2 and "no run found" in result.stderr


# ----------------------------------------------------------------- every file lands whole and durable

# A call's opening line (threads interleave: strace may finish it on a later "resumed" line).
_FSYNC = re.compile(r"\bf(?:data)?sync\(\d+<([^>]*)>")
_RENAME = re.compile(r'\brename(?:at2?)?\((?:[^,"]*, )?"([^"]+)", (?:[^,"]*, )?"([^"]+)"')


def syscalls_of(tmp_path: Path, *args: str) -> list[tuple[str, ...]]:
    """The real command under strace: ("fsync", path) and ("rename", from, to), in the order made,
    across every process it starts (thumbnails are made in worker processes)."""
    if not shutil.which("strace"):
        if os.environ.get("CI"):
            pytest.fail("CI must run the durability test: install Debian's strace")
        pytest.skip("needs strace (apt-get install strace)")
    log = tmp_path / f"strace-{len(list(tmp_path.glob('strace-*')))}.log"
    traced = ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", str(log)]
    result = subprocess.run([*traced, sys.executable, "-m", "batch_runner", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    calls: list[tuple[str, ...]] = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if match := _FSYNC.search(line):
            calls.append(("fsync", match[1]))
        elif match := _RENAME.search(line):
            calls.append(("rename", *(str((REPO / path).resolve()) for path in (match[1], match[2]))))
    return calls


def assert_landed_durably(calls: list[tuple[str, ...]], files: list[Path]) -> None:
    """Each file came from a .partial that was fsynced before its rename, and the rename itself
    was made durable by an fsync of the folder afterwards: a power cut leaves the old file or
    the whole new one, never an empty or half-written one taken for a result."""
    for path in files:
        target = str(path.resolve())
        renames = [i for i, call in enumerate(calls) if call[0] == "rename" and call[2] == target]
        assert renames, f"{path.name} was written in place, not renamed from a .partial"
        at = renames[-1]
        source = calls[at][1]
        assert source.endswith(".partial"), source
        assert ("fsync", source) in calls[:at], f"{path.name}: its .partial was renamed before it was fsynced"
        assert ("fsync", str(path.parent.resolve())) in calls[at:], f"{path.name}: its folder was not fsynced after"


def test_report_and_exports_write_every_file_through_a_fsynced_partial(sweep, tmp_path):
    out = copy_of(sweep, tmp_path)
    calls = syscalls_of(tmp_path, "report", str(out))
    report = out / "report"
    written = [report / "index.html", *report.glob("sheets/*.png"), *report.glob("thumbs/*.jpg")]
    assert len(list(report.glob("thumbs/*.jpg"))) == 12 and list(report.glob("sheets/*.png"))
    assert_landed_durably(calls, written)

    dataset = tmp_path / "dataset"
    calls = syscalls_of(tmp_path, "export", str(out), "--format", "imagefolder", "--to", str(dataset))
    images = list((dataset / "images").iterdir())
    assert len(images) == 12
    assert_landed_durably(calls, [*images, dataset / "metadata.parquet", dataset / "README.md"])

    shards = tmp_path / "wds"
    calls = syscalls_of(tmp_path, "export", str(out), "--format", "webdataset", "--to", str(shards), "--shard-size=5")
    tars = sorted(shards.glob("shard-*.tar"))
    assert len(tars) == 3
    assert_landed_durably(calls, [*tars, shards / "README.md"])
    leftovers = [p for folder in (report, dataset, shards) for p in folder.rglob("*.partial")]
    assert leftovers == []
