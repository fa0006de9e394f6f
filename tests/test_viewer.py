"""The HTML report's viewer in real headless Chromium, on real sandbox runs: images first, a live
X/Y/Z grid, the lightbox, filters (blank values too), paging, failures marked, picks that survive a
reload and download, and `--compare` of two runs."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from batch_runner.results.viewer import match_runs
from batch_runner.sandbox import Sandbox
from tests.helpers import REPO, run, run_cli, sandbox_config
from tests.test_report import _chrome

FAILING = "[sandbox:fail=400] a prompt the server rejects"
CUSTOM = "#1B3A4B 60% + #F2E8CF"
# 14 prompts, so the default prompt rows need two pages of 12; one has no Category.
PROMPTS = [(f"a small still life number {i}", "Still life") for i in range(10)] + [
    ("a red bicycle", "Vehicles"),
    ("a sleepy cat", "Animals"),
    ("a tall lighthouse", ""),
    (FAILING, "Broken"),
]


def viewer_job(folder: Path, prompts: list[tuple[str, str]], extra: str = "", name: str = "viewer") -> Path:
    (folder / "prompts.tsv").write_text(
        "Prompt\tCategory\n" + "".join(f"{p}\t{c}\n" for p, c in prompts), encoding="utf-8"
    )
    job = folder / f"{name}.yaml"
    seed = "" if "seed:" in extra else ", seed: 100"
    job.write_text(
        f"name: {name}\n"
        f"defaults: {{resolution: RESOLUTION_512_1536, magic_prompt_option: 'OFF'{seed}}}\n"
        "grid:\n"
        "  prompt: {file: prompts.tsv, column: Prompt}\n"
        "  style_type: [GENERAL, ANIME]\n" + (extra or "  color_palette:\n    - EMBER\n    - members:\n"
        "        - {color_hex: '#1B3A4B', color_weight: 0.6}\n        - {color_hex: '#F2E8CF'}\n"),
        encoding="utf-8",
    )  # fmt: skip
    return job


@pytest.fixture(scope="module")
def viewer_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("viewer")
    out = folder / "out"
    with Sandbox(sandbox_config(latency_s=0.01)) as sandbox:
        result = run(viewer_job(folder, PROMPTS), out, sandbox, "--concurrency", "8")
    assert result.returncode == 1, result.stderr  # the rejected prompt fails
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    return out


@pytest.fixture
def browser():
    driver = _chrome()
    yield driver
    driver.quit()


def open_report(driver, out: Path) -> None:
    driver.get((out / "report" / "index.html").resolve().as_uri())
    deadline = time.monotonic() + 10
    while not driver.execute_script("return document.body.dataset.painted === '1'"):
        assert time.monotonic() < deadline, "the grid never painted"
        time.sleep(0.05)


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def choose(driver, select_id: str, value: str) -> None:
    js(driver, "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
       "s.dispatchEvent(new Event('change'));", select_id, value)  # fmt: skip


def headers(driver) -> list[str]:
    script = "return [...document.querySelectorAll('#grid thead th:not(.corner)')].map(t => t.textContent.trim())"
    return js(driver, script)


def tiles(driver) -> list[dict]:
    return js(
        driver,
        "return [...document.querySelectorAll('#grid .tile')].map(t => ({uid: t.dataset.uid, cls: t.className,"
        " text: t.querySelector('.img').textContent, row: t.closest('tr').querySelector('th').textContent}))",
    )


def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_images_come_first_and_the_axis_pickers_change_the_grid(viewer_run, browser):
    open_report(browser, viewer_run)
    first = js(
        browser,
        "const img = document.querySelector('#grid .tile img'); const box = img.getBoundingClientRect();"
        "return new Promise(ok => img.decode().then(() => ok({top: box.top, w: img.naturalWidth}), () => ok(null)))",
    )
    assert first is not None and first["w"] > 0 and first["top"] < 400  # a real image on the first screen
    assert js(browser, "return document.getElementById('summary').open") is False  # tables wait below
    # The defaults: prompt rows × style_type columns, one page per palette.
    assert headers(browser) == ["GENERAL", "ANIME"]
    assert js(browser, "return document.getElementById('axis-page').value") == "color_palette"
    assert len(tiles(browser)) == 12 * 2  # 12 of the 14 prompt rows, one palette
    # Palettes read as people say them: a preset's name, a custom one as colours with swatches.
    choose(browser, "axis-cols", "color_palette")
    choose(browser, "axis-page", "")
    assert headers(browser) == ["EMBER", CUSTOM]
    assert js(browser, "return document.querySelectorAll('#grid thead .swatch').length") == 2
    # Rows of metadata: each cell shows all of its items (small multiples), not one.
    choose(browser, "axis-rows", "Category")
    rows = {t["row"] for t in tiles(browser)}
    assert rows == {"Still life", "Vehicles", "Animals", "(blank)", "Broken"}
    still_life = [t for t in tiles(browser) if t["row"] == "Still life"]
    # 10 prompts × 2 styles in each palette column: 16 tiles, then "+4 more", which shows the rest
    assert len(still_life) == 16 * 2
    assert js(browser, "return document.querySelector('#grid tbody tr td .cell').children.length") == 17
    js(browser, "document.querySelector('#grid .more').click()")
    assert js(browser, "return document.querySelector('#grid tbody tr td .cell').children.length") == 20
    assert severe(browser) == []


def test_the_lightbox_shows_the_full_image_and_recipe_and_arrow_keys_move(viewer_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_report(browser, viewer_run)
    browser.find_element(By.CSS_SELECTOR, "#grid .tile.succeeded .img").click()
    assert js(browser, "return document.getElementById('lightbox').hidden") is False
    image = js(
        browser,
        "const img = document.getElementById('lb-img');"
        "return new Promise(ok => img.decode().then(() => ok([img.getAttribute('src'), img.naturalWidth,"
        " img.naturalHeight]), () => ok(null)))",
    )
    assert image is not None and image[0].startswith("../images/") and image[1:] == [512, 1536]  # the full image
    recipe = browser.find_element(By.ID, "lb-recipe").text
    for name in ("item_id", "prompt", "style_type", "resolution", "seed", "magic_prompt_option", "Category",
                 "color_palette", "EMBER", "status succeeded"):  # fmt: skip
        assert name in recipe
    position = lambda: browser.find_element(By.ID, "lb-pos").text  # noqa: E731
    assert position().startswith("1 of 56")
    src = lambda: js(browser, "return document.getElementById('lb-img').getAttribute('src')")  # noqa: E731
    first = src()
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert position().startswith("2 of 56") and src() != first
    body.send_keys(Keys.ARROW_LEFT)
    assert position().startswith("1 of 56")
    for _ in range(60):  # the lightbox walks every item, across row pages and palette pages
        body.send_keys(Keys.ARROW_RIGHT)
    assert position().startswith("56 of 56")
    assert "FAILED" in browser.find_element(By.ID, "lb-stage").text  # the last item is the rejected prompt
    assert "Invalid parameters" in browser.find_element(By.ID, "lb-stage").text
    body.send_keys(Keys.ESCAPE)
    assert js(browser, "return document.getElementById('lightbox').hidden") is True
    assert severe(browser) == []


def test_paging_reaches_every_item_and_failures_are_marked(viewer_run, browser):
    open_report(browser, viewer_run)
    seen, manifest = set(), pd.read_parquet(viewer_run / "manifest.parquet")
    for palette in js(browser, "return [...document.getElementById('page-value').options].map(o => o.value)"):
        choose(browser, "page-value", palette)
        js(browser, "document.getElementById('first').click()")
        while True:
            seen |= {t["uid"] for t in tiles(browser)}
            if js(browser, "return document.getElementById('next').disabled"):
                break
            js(browser, "document.getElementById('next').click()")
        assert "rows 13–14 of 14 (page 2/2)" in js(browser, "return document.getElementById('rowrange').textContent")
    assert seen == set(manifest.item_id)
    js(browser, "document.getElementById('last').click()")
    failed = [t for t in tiles(browser) if "failed" in t["cls"]]
    assert len(failed) == 2 and all("FAILED 400" in t["text"] and "Invalid parameters" in t["text"] for t in failed)
    assert severe(browser) == []


def test_filters_narrow_the_grid_including_a_blank_value(viewer_run, browser):
    open_report(browser, viewer_run)
    choose(browser, "axis-page", "")
    options = js(browser, "return [...document.querySelector('select[data-column=Category]').options].map(o => o.text)")
    assert options[:2] == ["all", "(blank)"]
    blank = js(browser, "return document.querySelector('select[data-column=Category]').options[1].value")
    choose_filter = "const s = document.querySelector(`select[data-column='${arguments[0]}']`); s.value = arguments[1];"
    choose_filter += "s.dispatchEvent(new Event('change'));"
    js(browser, choose_filter, "Category", blank)
    shown = tiles(browser)
    assert len(shown) == 4 and {t["row"] for t in shown} == {"a tall lighthouse"}  # only the item without a Category
    js(browser, choose_filter, "Category", "Animals")
    assert {t["row"] for t in tiles(browser)} == {"a sleepy cat"} and len(tiles(browser)) == 4
    js(browser, choose_filter, "status", "failed")
    assert tiles(browser) == []
    assert "0 matching items" in js(browser, "return document.getElementById('count').textContent")
    js(browser, choose_filter, "Category", "")
    assert len(tiles(browser)) == 4 and all("failed" in t["cls"] for t in tiles(browser))
    js(browser, choose_filter, "status", "")
    browser.find_element("id", "search").send_keys("lighthouse")
    assert {t["row"] for t in tiles(browser)} == {"a tall lighthouse"}
    assert severe(browser) == []


def test_picks_survive_a_reload_and_download_as_csv_and_json(viewer_run, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = tmp_path / "run"
    shutil.copytree(viewer_run, out)  # picks are kept per results folder: start from none
    open_report(browser, out)
    uids = [t["uid"] for t in tiles(browser) if "succeeded" in t["cls"]][:3]
    for uid in uids[:2]:
        js(browser, "document.querySelector(`.tile[data-uid='${arguments[0]}'] .pick`).click()", uid)
    js(browser, "document.querySelector(`.tile[data-uid='${arguments[0]}'] .img`).click()", uids[2])
    browser.find_element(By.TAG_NAME, "body").send_keys("p")  # the lightbox's key
    assert "picked" in browser.find_element(By.ID, "lb-pick").text
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    browser.refresh()
    open_report(browser, out)
    assert browser.find_element(By.ID, "pick-count").text == "3"
    assert {t["uid"] for t in tiles(browser) if "picked" in t["cls"]} == set(uids)
    fetch = "fetch(document.getElementById(arguments[0]).href).then(r => r.text()).then(arguments[1])"
    table = list(csv.DictReader(io.StringIO(browser.execute_async_script(fetch, "download-csv"))))
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("item_id")
    assert sorted(r["item_id"] for r in table) == sorted(uids)
    for record in table:
        row = manifest.loc[record["item_id"]]
        assert record["prompt"] == row.prompt and record["Category"] == row.Category and record["seed"] == "100"
        assert record["color_palette"] == row.color_palette and record["status"] == "succeeded"
    picked = json.loads(browser.execute_async_script(fetch, "download-json"))["picked"]
    assert sorted(p["item_id"] for p in picked) == sorted(uids) and all(p["style_type"] for p in picked)
    assert js(browser, "return document.getElementById('download-csv').getAttribute('download')") == "picks.csv"
    js(browser, "document.getElementById('picks-only').click()")
    assert {t["uid"] for t in tiles(browser)} == set(uids)
    assert severe(browser) == []
    if os.environ.get("BATCH_RUNNER_SCREENSHOT"):  # how docs/viewer.png was taken
        js(browser, "document.getElementById('picks-only').click()")
        browser.set_window_size(1280, 860)
        time.sleep(0.5)
        shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
        shot.quantize(128).save(REPO / os.environ["BATCH_RUNNER_SCREENSHOT"], optimize=True)


def test_pending_items_are_marked_and_get_no_sheets(tmp_path, sandbox):
    job = viewer_job(tmp_path, PROMPTS[:6], extra="  seed: [100, 200, 300]\n")
    out = tmp_path / "out"
    run(job, out, sandbox, "--concurrency", "1", "--max-cost", "0.2")  # stops with most items pending
    frame = pd.read_parquet(out / "manifest.parquet")
    assert (frame.status == "pending").sum() > 20
    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr
    sheets = list((out / "report" / "sheets").glob("*.png"))
    seeds_done = frame[frame.status.isin(["succeeded", "failed"])].seed.nunique()
    assert len(sheets) == seeds_done  # one sheet per seed with finished images; none all PENDING
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script id="report-data" type="application/json">')[1].split("</script>")[0])
    status = data["fields"].index("status")
    assert sum(row[status] == "pending" for row in data["items"]) == (frame.status == "pending").sum()
    driver = _chrome()
    try:
        open_report(driver, out)
        marked = [t for t in tiles(driver) if "pending" in t["cls"]]
        assert marked and all("PENDING" in t["text"] for t in marked)
        assert severe(driver) == []
    finally:
        driver.quit()


def test_thumbnails_are_made_only_for_new_images(viewer_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(viewer_run, out)
    thumbs = out / "report" / "thumbs"
    before = {p.name: p.stat().st_mtime_ns for p in thumbs.glob("*.jpg")}
    assert len(before) == 52  # every succeeded item
    gone = sorted(before)[0]
    (thumbs / gone).unlink()
    time.sleep(0.05)
    assert run_cli("report", str(out)).returncode == 0
    after = {p.name: p.stat().st_mtime_ns for p in thumbs.glob("*.jpg")}
    assert set(after) == set(before) and after[gone] != before[gone]
    assert {n for n in before if after[n] != before[n]} == {gone}  # the others were not made again


def test_match_runs_by_id_then_by_parameters_but_one_then_prompt_seed_style():
    a = pd.DataFrame({"item_id": ["a1", "a2", "a3", "a4"], "prompt": ["fox", "owl", "cat", "dog"],
                      "seed": [1, 1, 1, 1], "style_type": ["ANIME"] * 4, "resolution": ["R1"] * 4,
                      "negative_prompt": [None, None, None, "x"]})  # fmt: skip
    b = pd.DataFrame({"item_id": ["a1", "b2", "b3", "b4", "b5"], "prompt": ["fox", "owl", "cat v2", "dog", "eel"],
                      "seed": [1, 1, 1, 1, 2], "style_type": ["ANIME"] * 5,
                      "resolution": ["R1", "R2", "R1", "R2", "R1"],
                      "negative_prompt": [None, None, None, "y", None]})  # fmt: skip
    matched = match_runs(a, b)
    # a1 by id; owl by all but resolution; cat by all but prompt (unique once owl is taken);
    # dog differs in two parameters, so by prompt + seed + style; the eel has no partner.
    assert matched == {"a1": "a1", "b2": "a2", "b3": "a3", "b4": "a4"}


def test_compare_lays_two_runs_side_by_side(viewer_run, tmp_path, sandbox, browser):
    folder = tmp_path / "b"
    folder.mkdir()
    # Today's run: three of yesterday's prompts at another resolution (so other item ids), one new one.
    prompts = [PROMPTS[10], PROMPTS[11], PROMPTS[12], ("a brand new prompt", "New")]
    job = viewer_job(folder, prompts, extra="  color_palette: [EMBER]\n", name="today")
    job.write_text(job.read_text().replace("RESOLUTION_512_1536", "RESOLUTION_1024_1024"), encoding="utf-8")
    other = tmp_path / "today"
    assert run(job, other, sandbox, "--concurrency", "4").returncode == 0
    a = tmp_path / "yesterday"
    shutil.copytree(viewer_run, a)
    result = run_cli("report", str(a), "--compare", str(other))
    assert result.returncode == 0, result.stderr
    assert "compared with" in result.stdout
    page = (a / "report" / "index.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script id="report-data" type="application/json">')[1].split("</script>")[0])
    assert data["runs"] == ["yesterday", "today"] and data["layout"] == {"rows": "pair", "cols": "run", "page": None}
    assert len(data["items"]) == 56 + 8

    open_report(browser, a)
    assert headers(browser) == ["yesterday", "today"]
    choose(browser, "axis-rows", "prompt")
    choose(browser, "axis-page", "color_palette")  # EMBER first
    rows = js(
        browser,
        "return [...document.querySelectorAll('#grid tbody tr')].map(tr => [tr.querySelector('th').textContent,"
        " ...[...tr.querySelectorAll('td')].map(td => td.querySelectorAll('.tile').length)])",
    )
    js(browser, "document.getElementById('last').click()")
    rows += js(
        browser,
        "return [...document.querySelectorAll('#grid tbody tr')].map(tr => [tr.querySelector('th').textContent,"
        " ...[...tr.querySelectorAll('td')].map(td => td.querySelectorAll('.tile').length)])",
    )
    by_prompt = {r[0]: r[1:] for r in rows}
    assert by_prompt["a sleepy cat"] == [2, 2] and by_prompt["a red bicycle"] == [2, 2]  # side by side
    assert by_prompt["a brand new prompt"] == [0, 2] and by_prompt[FAILING] == [2, 0]
    # The default pairs rows: each of today's items beside the item it matches from yesterday.
    choose(browser, "axis-rows", "pair")
    choose(browser, "axis-page", "")
    pairs = js(browser, "return viewer.view().order.filter(i => i.run === 'today' && !i.pair.startsWith('B:')).length")
    assert pairs == 6  # 3 prompts × 2 styles matched; the new prompt's 2 items stand alone
    # A run column for the images' own URLs: today's full images are found from yesterday's report.
    src = js(browser, "return viewer.view().order.find(i => i.run === 'today').image")
    assert (a / "report" / src).resolve() == (other / "images").resolve() / Path(src).name
    assert severe(browser) == []
