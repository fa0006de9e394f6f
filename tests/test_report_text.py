"""The report's text check and verdict, on the shared sweep (tests/sweeps.py): Tesseract reads the
sandbox's rendered text, text_ok agrees with what the sandbox drew, the verdict names the better
style, a second report reads nothing again, and without OCR the report still succeeds and says why."""

from __future__ import annotations

import csv
import json
import os

import pandas as pd
import pytest

import batch_runner
from batch_runner.results.ocr import CACHE, expected_text, score
from batch_runner.results.verdict import wilson
from batch_runner.sandbox import images
from tests.helpers import REPO, run_cli
from tests.sweeps import ODD, WORDS, copy_of, text_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return text_sweep(tmp_path_factory)


def test_text_ok_agrees_with_what_the_sandbox_drew(sweep):
    items = batch_runner.load(sweep.out).items.set_index("item_id")
    quoted = items[items.text_expected.notna()]
    assert len(quoted) == 60 and len(sweep.drawn) == 60  # 30 quoting prompts × 2 styles
    assert set(quoted.text_expected) == set(WORDS)
    truth = pd.Series({i: text == items.loc[i, "text_expected"] for i, text in sweep.drawn.items()})
    assert 3 <= (~truth).sum() <= 40  # the sandbox did misspell some, not all
    disagree = [i for i in truth.index if bool(quoted.loc[i, "text_ok"]) != truth[i]]
    assert len(disagree) <= 2, quoted.loc[disagree, ["text_expected", "text_read", "text_score"]]
    for item_id, drawn in sweep.drawn.items():  # what was read is what was drawn, misspelling and all
        if item_id not in disagree:
            assert drawn.casefold() in quoted.loc[item_id, "text_read"].casefold()
    assert quoted.text_score.between(0, 1).all()
    assert (quoted[quoted.text_ok].text_score == 1).all() and (quoted[~quoted.text_ok].text_score < 1).all()
    odd = items[items.prompt.isin(ODD)]
    assert len(odd) == 6 and odd.text_expected.isna().all() and odd.text_ok.isna().all()  # nothing quoted


def test_the_verdict_names_the_better_style_on_screen_and_in_csv(sweep):
    assert "verdict: style_type: text right most often: GENERAL" in sweep.report_stdout
    assert "the intervals do not overlap" in sweep.report_stdout
    table = pd.read_csv(sweep.out / "report" / "verdict.csv").set_index(["axis", "value"])
    general, anime = table.loc[("style_type", "GENERAL")], table.loc[("style_type", "ANIME")]
    items = batch_runner.load(sweep.out).items
    for row, style in ((general, "GENERAL"), (anime, "ANIME")):
        checked = items[(items.style_type == style) & items.text_ok.notna()]
        assert row.text_checked == len(checked) == 30 and row.text_ok == int(checked.text_ok.sum())
        low, high = wilson(int(row.text_ok), int(row.text_checked))
        assert (row.text_low, row.text_high) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
        assert row.images == 33 and row.failed == 0 and row.cost_usd == pytest.approx(33 * 0.063)
    assert general.text_accuracy > anime.text_accuracy and general.text_low > anime.text_high
    assert general.text_mark == "▲" and anime.text_mark == "▼"
    page = (sweep.out / "report" / "index.html").read_text(encoding="utf-8")
    first_screen = page.split('<div class="bar" id="axes">')[0]
    assert 'id="verdict"' in first_screen and "text right most often: GENERAL" in first_screen


def test_wilson_intervals_match_the_textbook():
    # Agresti & Coull's example values: 0 of 10 and 10 of 10 stay inside 0..1.
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    low, high = wilson(27, 30)
    assert (round(low, 3), round(high, 3)) == (0.744, 0.965)


def test_csv_cells_that_would_run_as_formulas_are_quoted(sweep):
    report = sweep.out / "report"
    cells = [cell for path in report.glob("*.csv") for row in csv.reader(path.open(encoding="utf-8")) for cell in row]
    formula = [c for c in cells if "HYPERLINK" in c]
    assert formula and all(c.startswith("'=HYPERLINK") for c in formula)
    assert not [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not _number(c))]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_odd_prompts_are_drawn_on_the_sheets(sweep):
    # U+2029 and U+0085 once made raqm fail (exit 70) while drawing a sheet's row label.
    assert any(ODD[0] == p for p in batch_runner.load(sweep.out).items.prompt)
    assert len(list((sweep.out / "report" / "sheets").glob("*.png"))) == 5  # 33 prompt rows, 8 a page


def test_a_second_report_reads_nothing_again_and_a_new_image_is_read(sweep, tmp_path):
    out = copy_of(sweep.out, tmp_path)
    cache = (out / CACHE).read_bytes()
    again = run_cli("report", str(out))
    assert again.returncode == 0, again.stderr
    assert "60 image(s) quote text; 0 read now, 60 unchanged since the last report" in again.stdout
    assert (out / CACHE).read_bytes() == cache
    items = batch_runner.load(out).items
    target = items[items.text_expected.notna()].iloc[0]
    image = out / target.image_path
    image.write_bytes(image.read_bytes())  # the same image made again: newer, so read again
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    third = run_cli("report", str(out))
    assert "1 read now, 59 unchanged" in third.stdout
    lines = [json.loads(line) for line in (out / CACHE).read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 61 and lines[-1]["item_id"] == target.item_id
    assert batch_runner.load(out).items.text_ok.notna().sum() == 60


def test_without_ocr_the_report_succeeds_and_says_how_to_install_it(sweep, tmp_path):
    out = copy_of(sweep.out, tmp_path)
    (out / CACHE).unlink()
    blocker = tmp_path / "no-ocr"
    blocker.mkdir()
    (blocker / "tesserocr.py").write_text("raise ImportError('blocked for this test')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"}
    result = run_cli("report", str(out), env=env, process=True)  # PYTHONPATH hides tesserocr from a new process
    assert result.returncode == 0, result.stderr
    assert "text check skipped for 60 image(s)" in result.stderr and "tesserocr is not installed" in result.stderr
    assert "pip install 'batch-runner[ocr]'" in result.stderr and "apt-get install tesseract-ocr" in result.stderr
    assert (out / "report" / "index.html").exists() and not (out / CACHE).exists()
    assert batch_runner.load(out).items.text_ok.isna().all()
    no_data = run_cli("report", str(out), env={**os.environ, "TESSDATA_PREFIX": str(blocker)}, process=True)
    assert no_data.returncode == 0 and "eng.traineddata) was not found" in no_data.stderr


def test_picks_feed_the_verdict_and_the_export(sweep, tmp_path):
    out = copy_of(sweep.out, tmp_path)
    items = batch_runner.load(out).items
    anime = items[(items.style_type == "ANIME") & items.text_expected.notna()].item_id.tolist()
    general = items[(items.style_type == "GENERAL") & items.text_expected.notna()].item_id.tolist()
    picked = [{"item_id": i, "picked": True, "rating": 5} for i in anime[:12]]
    picked += [
        {"item_id": general[0], "picked": True, "rating": 2},
        {"item_id": general[1], "picked": False, "rating": 1},
    ]
    picks = tmp_path / "picks.json"
    picks.write_text(json.dumps({"report": "text-sweep", "picked": picked}), encoding="utf-8")
    result = run_cli("report", str(out), "--picks", str(picks), "--csv")
    assert result.returncode == 0, result.stderr
    assert "picks: 13 picked, 14 rated" in result.stdout and "style_type: " in result.stdout
    assert "most picked: ANIME (ANIME 12, GENERAL 1)" in result.stdout
    table = pd.read_csv(out / "report" / "verdict.csv").set_index(["axis", "value"])
    assert table.loc[("style_type", "ANIME"), "picks"] == 12 and table.loc[("style_type", "GENERAL"), "picks"] == 1
    assert table.loc[("style_type", "ANIME"), "pick_share"] == pytest.approx(12 / 13, abs=1e-4)
    assert table.loc[("style_type", "ANIME"), "pick_mark"] == "▲"
    assert table.loc[("style_type", "GENERAL"), "rating_mean"] == 1.5
    dataset = tmp_path / "winners"
    exported = run_cli("export", str(out), "--format", "imagefolder", "--to", str(dataset), "--picks", str(picks))
    assert exported.returncode == 0, exported.stderr
    assert "exported 13 new item(s)" in exported.stdout
    assert set(pd.read_parquet(dataset / "metadata.parquet").item_id) == {*anime[:12], general[0]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"picked": [{"item_id": anime[0], "rating": 9}]}), encoding="utf-8")
    refused = run_cli("report", str(out), "--picks", str(bad))
    assert refused.returncode == 2 and f"--picks {bad}, pick 1: rating 9 is not 1 to 5" in refused.stderr
    missing = run_cli("export", str(out), "--format", "imagefolder", "--to", str(dataset), "--picks", "nope.json")
    assert missing.returncode == 2 and "nope.json: no such file" in missing.stderr


def test_the_sandbox_misspells_each_style_at_its_rate_the_same_way_every_time():
    params = [{"prompt": f'a sign that says "{w}"', "style_type": s} for w in WORDS for s in ("GENERAL", "ANIME")]
    rates = (("ANIME", 1.0), ("*", 0.0))
    for p in params:
        drawn = images.drawn_text(p, 100, rates)
        expected = expected_text(p["prompt"])
        assert drawn == images.drawn_text(p, 100, rates)  # deterministic
        if p["style_type"] == "GENERAL":
            assert drawn == expected
        else:
            assert len(drawn) == len(expected) and sum(a != b for a, b in zip(drawn, expected, strict=True)) == 1
            assert score(expected, drawn) < 1
    assert images.drawn_text({"prompt": "no quotes here"}, 100, rates) is None
    bad = run_cli("sandbox", "--misspell", "ANIME=2")
    assert bad.returncode == 2 and "--misspell 'ANIME=2'" in bad.stderr and "ANIME=0.3" in bad.stderr


def test_expected_text_and_score_normalize_case_punctuation_and_space():
    assert expected_text('a sign that says "Hello, World!" and \u201cbye\u201d') == "Hello, World! / bye"
    assert expected_text("a cat's hat, no quotes") is None
    assert score("Hello, World! / bye", "HELLO   world\nbye now style GENERAL") == 1.0
    assert score("OPEN LATE", "0PEN LATE") < 1
    assert score("Gone Fishing", "some other words entirely") < 0.5
