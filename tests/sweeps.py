"""One A/B sweep, run and reported once per test session, that the report and viewer tests share
(each works on a copy, or only reads it).

30 prompts quote a text for the image; the sandbox misspells it in 10% of GENERAL's images and in
80% of ANIME's (3 and 21 of 30, as the seeded draws fall), and its request log says what it drew:
the ground truth for the text check. The prompts are zipped with negative prompts (one axis, not
two), and three odd prompts ride along: one with U+2029 and U+0085 (which once failed the sheets'
text layout), one holding "<!--<script>" (which once blanked the viewer) and one starting with "="
(a formula to a spreadsheet).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import run, run_cli, sandbox_with

MISSPELL = (("GENERAL", 0.1), ("ANIME", 0.8))
WORDS = [
    "OPEN LATE", "Fresh Bread", "SALE TODAY", "Gone Fishing", "NO PARKING", "Mind the gap", "Hello World",
    "BEST COFFEE", "Welcome Home", "Night Market", "FREE WIFI", "Good Morning", "Book Club", "Summer Camp",
    "LAST CHANCE", "Happy Hour", "Garden Party", "Star Cinema", "Pizza Night", "RIVER WALK", "Blue Harbor",
    "Main Street", "ROCK SHOW", "Tea Garden", "Snow Day", "Bike Shop", "Jazz Club", "Green Market",
    "Fast Track", "Quiet Zone",
]  # fmt: skip
ODD = [
    "a torn poster with a \u2029 paragraph break and a \u0085 next line",
    "a note that reads <!--<script> in chalk",
    "=HYPERLINK(evil) on a wall",
]
PROMPTS = [f'a shop sign that says "{w}"' for w in WORDS] + ODD


@dataclass(frozen=True)
class Sweep:
    out: Path  # the run, reported once (report/ holds its thumbnails, sheets and text check)
    drawn: dict[str, str]  # item_id -> the text the sandbox drew, for prompts that quote one
    report_stdout: str


def _job(folder: Path) -> Path:
    job = folder / "text-sweep.yaml"
    prompts = ", ".join(json.dumps(p) for p in PROMPTS)
    negatives = ", ".join(json.dumps(f"blurry {i}") for i in range(len(PROMPTS)))
    job.write_text(
        "name: text-sweep\n"
        "defaults: {resolution: RESOLUTION_1024_1024, magic_prompt_option: 'OFF', seed: 100}\n"
        f"zip:\n  prompt: [{prompts}]\n  negative_prompt: [{negatives}]\n"
        "grid:\n  style_type: [GENERAL, ANIME]\n",
        encoding="utf-8",
    )
    return job


_MADE: dict[str, Sweep] = {}


def text_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The session's sweep, made on first use (one run, one report with the text check)."""
    if "sweep" not in _MADE:
        folder = tmp_path_factory.mktemp("text-sweep")
        out = folder / "out"
        with sandbox_with(latency_s=0.01, misspell=MISSPELL) as sandbox:
            result = run(_job(folder), out, sandbox, "--concurrency", "8")
            log = sandbox.stats()["log"]
        assert result.returncode == 0, result.stderr[-2000:]
        drawn = {entry["item_id"]: entry["drawn"] for entry in log if entry.get("drawn") and entry["status"] == 200}
        report = run_cli("report", str(out), "--csv")
        assert report.returncode == 0, report.stderr[-2000:]
        _MADE["sweep"] = Sweep(out, drawn, report.stdout)
    return _MADE["sweep"]


def copy_of(out: Path, to: Path) -> Path:
    target = to / "run"
    shutil.copytree(out, target)
    return target
