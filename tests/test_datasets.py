"""Datasets a trainer takes as they are, read back by the real loaders; images whose standard
metadata fields say what made them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import batch_runner
from tests.helpers import run, run_cli, sandbox_with

PALETTE_JOB = """name: palettes
defaults:
  resolution: RESOLUTION_512_1536
  magic_prompt_option: "OFF"
grid:
  prompt: ["a poster that says \\"HELLO\\"", "a red kite"]
  color_palette:
    - EMBER
    - members: [{color_hex: "#1B3A4B", color_weight: 0.6}, {color_hex: "#F2E8CF"}]
"""


@pytest.fixture(scope="module")
def palette_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("palettes")
    job = folder / "palettes.yaml"
    job.write_text(PALETTE_JOB, encoding="utf-8")
    with sandbox_with() as sb:
        assert run(job, folder / "out", sb).returncode == 0
    return folder / "out"


def offline_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def test_webdataset_shards_stream_with_captions_through_the_real_loaders(palette_run, tmp_path):
    shards = tmp_path / "wds"
    assert run_cli("export", str(palette_run), "--format", "webdataset", "--to", str(shards)).returncode == 0
    code = (
        "import json, sys, glob, webdataset as wds\n"
        "from datasets import load_dataset\n"
        "urls = sorted(glob.glob(sys.argv[1] + '/shard-*.tar'))\n"
        "stream = wds.WebDataset(urls, shardshuffle=False).decode()\n"
        "samples = [(s['txt'], s['json']['color_palette']) for s in stream]\n"
        "hf = load_dataset('webdataset', data_files={'train': urls}, split='train')\n"
        "palettes = [row['json']['color_palette'] for row in hf]\n"
        "print(json.dumps({'samples': samples, 'hf': palettes, 'keys': sorted(hf.features)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(shards)], capture_output=True, text=True,
                          env=offline_env(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(t for t, _ in got["samples"]) == sorted(['a poster that says "HELLO"'] * 2 + ["a red kite"] * 2)
    assert {"jpg", "txt", "json"} <= set(got["keys"])
    custom = [p for p in got["hf"] if p["name"] is None]
    assert len(custom) == 2 and custom[0]["members"][0] == {"color_hex": "#1B3A4B", "color_weight": 0.6}
    assert [p["members"] for p in got["hf"] if p["name"] == "EMBER"] == [[], []]
    card = (shards / "README.md").read_text()
    assert "text-to-image" in card and "4 images" in card and "webdataset" in card.lower()


def test_load_returns_real_dtypes(palette_run):
    items = batch_runner.load(palette_run).items
    assert isinstance(items.finished_at.dtype, pd.DatetimeTZDtype)
    assert str(items.http_status.dtype) == "Int64" and str(items.seed_value.dtype) == "Int64"
    assert items.cost_usd.dtype == "float64" and items.attempts.dtype == "int64"


def test_exiftool_shows_the_prompt_and_the_ai_marker(palette_run):
    if not shutil.which("exiftool"):
        if os.environ.get("CI"):
            pytest.fail("CI must run the metadata test: install Debian's libimage-exiftool-perl")
        pytest.skip("needs exiftool (apt-get install libimage-exiftool-perl)")
    frame = pd.read_parquet(palette_run / "manifest.parquet")
    row = frame[frame.prompt == "a red kite"].iloc[0]
    shown = subprocess.run(["exiftool", "-j", "-Description", "-DigitalSourceType", "-CreatorTool",
                            str(palette_run / row.image_path)], capture_output=True, text=True)  # fmt: skip
    [tags] = json.loads(shown.stdout)
    assert tags["Description"] == "a red kite"
    assert tags["DigitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert "batch-runner" in tags["CreatorTool"]
