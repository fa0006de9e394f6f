"""The viewer as a place to decide, in real headless Chromium on the shared text sweep
(tests/sweeps.py): a tally of picks per variant, 1-5 ratings, multi-select filters, rows per page,
the view in the URL hash, zipped axes as one, "only rows whose variants differ in text accuracy",
text badges, and a lightbox that works at 390 px with swipe. Picks go back to the CLI."""

from __future__ import annotations

import csv
import io
import json
import time
from urllib.parse import unquote

import pandas as pd
import pytest

import batch_runner
from tests.helpers import run_cli
from tests.sweeps import ODD, copy_of, text_sweep
from tests.test_report import _chrome

ZIPPED = "prompt+negative_prompt"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return text_sweep(tmp_path_factory)


@pytest.fixture(scope="module")
def driver():
    browser = _chrome()
    browser.set_window_size(1400, 1000)
    yield browser
    browser.quit()


@pytest.fixture
def page(sweep, driver, tmp_path):
    """The sweep's report, opened fresh: a copy of the run (picks and ratings are kept per folder)."""
    out = copy_of(sweep.out, tmp_path)
    url = (out / "report" / "index.html").resolve().as_uri()
    open_page(driver, url)
    js(driver, "localStorage.clear(); sessionStorage.clear()")  # the browser outlives the test; its picks do not
    open_page(driver, url)
    yield out
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def open_page(driver, url: str) -> None:
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + 10
    while not driver.execute_script("return document.body && document.body.dataset.painted === '1'"):
        assert time.monotonic() < deadline, "the grid never painted"
        time.sleep(0.05)


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def rows(driver) -> list[str]:
    return js(driver, "return [...document.querySelectorAll('#grid tbody th.rowhead')].map(t => t.textContent)")


def tiles(driver) -> list[dict]:
    return js(
        driver,
        "return [...document.querySelectorAll('#grid .tile')].map(t => ({uid: t.dataset.uid,"
        " text: (t.querySelector('.text') || {}).textContent || null,"
        " row: t.closest('tr').querySelector('th').textContent,"
        " col: document.querySelectorAll('#grid thead th')[t.closest('td').cellIndex].textContent}))",
    )


def choose(driver, select_id: str, *values: str) -> None:
    js(driver, "const s = document.getElementById(arguments[0]);"
       "for (const o of s.options) o.selected = arguments[1].includes(o.value);"
       "s.dispatchEvent(new Event('change'))", select_id, list(values))  # fmt: skip


def choose_filter(driver, column: str, *values: str) -> None:
    js(driver, "const s = document.querySelector(`select[data-column='${arguments[0]}']`);"
       "for (const o of s.options) o.selected = arguments[1].includes(o.value);"
       "s.dispatchEvent(new Event('change'))", column, list(values))  # fmt: skip


def test_zipped_axes_are_one_axis_and_text_badges_agree_with_the_check(page, driver):
    assert js(driver, "return [...document.getElementById('axis-rows').options].map(o => o.value)").count(ZIPPED) == 1
    assert js(driver, "return ['axis-rows', 'axis-cols', 'axis-page'].map(i => document.getElementById(i).value)") == [
        ZIPPED, "style_type", ""]  # fmt: skip
    shown = tiles(driver)
    assert len(shown) == 12 * 2  # every row has both styles: no diagonal of a prompt × negative_prompt grid
    assert all(" · blurry " in t["row"] for t in shown)
    items = batch_runner.load(page).items.set_index("item_id")
    for t in shown:
        ok = items.loc[t["uid"], "text_ok"]
        assert t["text"] == (None if pd.isna(ok) else "text ✓" if ok else "text ✗")
    assert "text right most often: GENERAL" in driver.find_element("id", "verdict").text  # on the first screen
    box = js(driver, "return document.getElementById('verdict').getBoundingClientRect().bottom")
    assert box < js(driver, "return innerHeight")


def test_multi_select_filters_rows_per_page_and_text_wrong(page, driver):
    items = batch_runner.load(page).items
    values = js(
        driver, f"return [...document.querySelector(\"select[data-column='{ZIPPED}']\").options].map(o => o.value)"
    )
    assert values[0] == "" and len(values) == 1 + 33
    choose_filter(driver, ZIPPED, values[1], values[5])
    assert sorted({t["row"] for t in tiles(driver)}) == sorted([values[1], values[5]]) and len(tiles(driver)) == 4
    choose_filter(driver, "style_type", "GENERAL", "ANIME")  # both: the same as all
    assert len(tiles(driver)) == 4
    choose_filter(driver, ZIPPED, "")
    choose_filter(driver, "text_ok", "false")  # "text wrong"
    wrong = items[items.text_ok.fillna(True) == False]  # noqa: E712
    assert js(driver, "return document.querySelector(\"select[data-column='text_ok']\").selectedOptions[0].text") == (
        "text wrong")  # fmt: skip
    choose(driver, "per-page", "0")
    assert {t["uid"] for t in tiles(driver)} == set(wrong.item_id) and all(t["text"] == "text ✗" for t in tiles(driver))
    choose_filter(driver, "text_ok", "")
    choose(driver, "per-page", "25")
    assert len(rows(driver)) == 25 and "rows 1–25 of 33 (page 1/2)" in driver.find_element("id", "rowrange").text
    choose(driver, "per-page", "0")
    assert len(rows(driver)) == 33


def test_only_rows_whose_variants_differ_in_text_accuracy(page, driver):
    items = batch_runner.load(page).items
    checked = items[items.text_ok.notna()]
    differ = checked.groupby("prompt").text_ok.nunique()
    expected = set(differ[differ > 1].index)
    assert 10 <= len(expected) < 30
    js(driver, "document.getElementById('differ-only').click()")
    choose(driver, "per-page", "0")
    shown = {r.split(" · ")[0] for r in rows(driver)}
    assert shown == expected
    for row in rows(driver):  # each row shows one right and one wrong image
        assert sorted(t["text"] for t in tiles(driver) if t["row"] == row) == ["text ✓", "text ✗"]


def test_picks_ratings_and_the_tally_per_variant_go_back_to_the_cli(page, driver, tmp_path):
    from selenium.webdriver.common.by import By

    shown = tiles(driver)
    anime = [t["uid"] for t in shown if t["col"] == "ANIME"][:3]
    general = [t["uid"] for t in shown if t["col"] == "GENERAL"][:1]
    for uid in anime + general:
        js(driver, "document.querySelector(`.tile[data-uid='${arguments[0]}'] .pick`).click()", uid)
    js(driver, "document.querySelector(`.tile[data-uid='${arguments[0]}'] .img`).click()", anime[0])
    driver.find_element(By.CSS_SELECTOR, "#lb-rate button[data-n='4']").click()
    assert js(driver, "return viewer.ratings.get(arguments[0])", anime[0]) == 4
    driver.find_element(By.TAG_NAME, "body").send_keys("2")  # the keys 1-5 rate too
    assert js(driver, "return viewer.ratings.get(arguments[0])", anime[0]) == 2
    driver.find_element(By.CSS_SELECTOR, "#lb-rate button[data-n='5']").click()
    driver.find_element(By.ID, "lb-close").click()
    tally = lambda: js(driver, "return Object.fromEntries([...document.querySelectorAll('#tally .entry')]"  # noqa: E731
                       ".map(e => [e.dataset.key, e.textContent]))")  # fmt: skip
    assert tally()["ANIME"].startswith("ANIME ★3 · 5.0/5 · text ") and tally()["GENERAL"].startswith(
        "GENERAL ★1 · text "
    )
    assert js(driver, "return document.querySelector(`.tile[data-uid='${arguments[0]}'] .rating`).textContent",
              anime[0]) == "5/5"  # fmt: skip
    driver.refresh()
    open_page(driver, driver.current_url)
    assert tally()["ANIME"].startswith("ANIME ★3 · 5.0/5")  # kept in the browser
    fetch = "fetch(document.getElementById(arguments[0]).href).then(r => r.text()).then(arguments[1])"
    picks = tmp_path / "picks.json"
    picks.write_text(driver.execute_async_script(fetch, "download-json"), encoding="utf-8")
    records = json.loads(picks.read_text(encoding="utf-8"))["picked"]
    assert {r["item_id"] for r in records} == set(anime + general)
    assert {r["item_id"]: r["rating"] for r in records}[anime[0]] == 5
    # The CLI reads the download back: the verdict counts the picks, export takes only them.
    result = run_cli("report", str(page), "--picks", str(picks))
    assert result.returncode == 0, result.stderr
    assert "picks: 4 picked, 1 rated" in result.stdout and "ANIME 3, GENERAL 1" in result.stdout
    dataset = tmp_path / "winners"
    exported = run_cli("export", str(page), "--format", "webdataset", "--to", str(dataset), "--picks", str(picks))
    assert exported.returncode == 0 and "exported 4 new item(s)" in exported.stdout


def test_picks_csv_neutralises_formulas(page, driver):
    items = batch_runner.load(page).items
    formula = items[items.prompt == ODD[2]].item_id.iloc[0]
    js(driver, "viewer.picks.add(arguments[0]); viewer.render()", formula)
    fetch = "fetch(document.getElementById(arguments[0]).href).then(r => r.text()).then(arguments[1])"
    table = list(csv.DictReader(io.StringIO(driver.execute_async_script(fetch, "download-csv"))))
    assert table[0]["prompt"] == "'" + ODD[2] and table[0]["item_id"] == formula


def test_a_value_holding_an_html_comment_and_script_does_not_blank_the_page(page, driver):
    html = (page / "report" / "index.html").read_text(encoding="utf-8")
    data = html.split('<script id="report-data" type="application/json">')[1].split("</script>")[0]
    assert "<" not in data and ODD[1] in json.dumps(json.loads(data), ensure_ascii=False)
    choose(driver, "per-page", "0")
    assert len(tiles(driver)) == 66 and any("<!--<script>" in r for r in rows(driver))


def test_the_view_round_trips_through_the_url_hash(page, driver):
    choose(driver, "axis-rows", "style_type")
    choose(driver, "axis-cols", "")
    choose_filter(driver, "text_ok", "false", "true")
    choose(driver, "per-page", "25")
    url = driver.current_url
    assert "#view=" in url
    view = json.loads(unquote(url.split("#view=")[1]))
    assert (
        view["rows"] == "style_type"
        and sorted(view["filters"]["text_ok"]) == ["false", "true"]
        and view["perPage"] == 25
    )
    before = (rows(driver), len(tiles(driver)))
    js(driver, "sessionStorage.clear()")  # the hash alone carries the view
    open_page(driver, url)
    assert js(driver, "return document.getElementById('axis-rows').value") == "style_type"
    assert js(driver, "return [...document.querySelector(\"select[data-column='text_ok']\").selectedOptions]"
              ".map(o => o.value)") == ["true", "false"]  # fmt: skip
    assert (rows(driver), len(tiles(driver))) == before
    # Editing the hash (a pasted link) changes the view in place.
    other = json.dumps({**view, "rows": ZIPPED, "cols": "style_type", "filters": {}, "perPage": 12})
    js(driver, "location.hash = 'view=' + encodeURIComponent(arguments[0])", other)
    assert len(rows(driver)) == 12 and js(driver, "return document.getElementById('axis-rows').value") == ZIPPED


def test_the_lightbox_at_390_px_keeps_every_control_on_screen_and_swipes(page, driver):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})  # fmt: skip
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    try:
        open_page(driver, (page / "report" / "index.html").resolve().as_uri())
        assert js(driver, "return innerWidth") == 390
        js(driver, "document.querySelector('#grid .tile.succeeded .img').click()")
        boxes = js(driver, "return [...document.querySelectorAll('#lb-controls button')].map(b => {"
                   "const r = b.getBoundingClientRect();"
                   "return [b.id || b.textContent, r.left, r.top, r.right, r.bottom]})")  # fmt: skip
        assert len(boxes) == 9  # previous, next, pick, close, ratings 1-5
        for name, left, top, right, bottom in boxes:
            assert 0 <= left and right <= 390 and 0 <= top and bottom <= 844, name
            assert bottom - top >= 30, name  # big enough for a finger
        image = js(driver, "const r = document.getElementById('lb-img').getBoundingClientRect();"
                   "return [r.left, r.top, r.right, r.bottom, r.width]")  # fmt: skip
        assert image[0] >= 0 and image[2] <= 390 and image[3] <= 844 and image[4] > 200
        position = lambda: driver.find_element("id", "lb-pos").text  # noqa: E731
        assert position().startswith("1 of 66")
        for start, end in (((320, 300), (60, 310)), ((320, 300), (60, 310)), ((60, 300), (320, 290))):
            for kind, (x, y) in (("touchStart", start), ("touchMove", end), ("touchEnd", end)):
                points = [] if kind == "touchEnd" else [{"x": x, "y": y}]
                driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
        assert position().startswith("2 of 66")  # two swipes left, one right
        driver.find_element("id", "lb-pick").click()
        assert driver.find_element("id", "pick-count").text == "1"
        driver.find_element("id", "lb-close").click()
        assert js(driver, "return document.getElementById('lightbox').hidden") is True
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
