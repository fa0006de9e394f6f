"""Exports as their users load them: `datasets.load_dataset(DIR)` offline (what the Hub does with
a pushed folder) on both export kinds and on a folder merged from several outputs, `webdataset`
with OpenCLIP's rename and shard-size conventions, and pandas' nullable integers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

import batch_runner
from tests.helpers import run, run_cli, sandbox_with

SWEEP_CSV = "prompt,style_type,Category,Challenge\n" + "".join(
    f'"{p}",GENERAL|ANIME,{c},{h}\n'
    for p, c, h in [
        ('a poster that says ""OPEN"", neon', "Signs", "Text"),
        ("a red kite over the sea", "Outdoor", "Simple"),
        ("été: a café, naïve", "Food", "Unicode"),
    ]
)
# Column names that a pasted-together YAML card would break on, or let add keys of their own.
EVIL_CSV = 'prompt,"Category: x","note\nlicense: mit"\n"a cat",Animals,first\n"a dog",Animals,second\n'


def _run_csv(tmp_path: Path, name: str, text: str, sb) -> Path:
    job = tmp_path / f"{name}.csv"
    job.write_text(text, encoding="utf-8")
    out = tmp_path / f"out-{name}"
    done = run(job, out, sb)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Three outputs: a sweep with metadata columns, one plain prompt job with none, and one
    whose column names hold a colon and a line break."""
    folder = tmp_path_factory.mktemp("loaders")
    plain = folder / "plain.yaml"
    plain.write_text(
        'name: plain\ndefaults:\n  resolution: RESOLUTION_512_1536\n  magic_prompt_option: "OFF"\n'
        "grid:\n  prompt: [a blue door, a green door]\n",
        encoding="utf-8",
    )
    with sandbox_with() as sb:
        sweep = _run_csv(folder, "sweep", SWEEP_CSV, sb)
        evil = _run_csv(folder, "evil", EVIL_CSV, sb)
        assert run(plain, folder / "out-plain", sb).returncode == 0
    return {"sweep": sweep, "plain": folder / "out-plain", "evil": evil}


def export(output: Path, kind: str, to: Path, *flags: str) -> str:
    done = run_cli("export", str(output), "--format", kind, "--to", str(to), *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout


def load_offline(tmp_path: Path, code: str, *args: str) -> dict:
    """Run code in a fresh interpreter with the Hub out of reach; it prints one JSON line."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LOAD_DIR = """
import json, sys
from datasets import load_dataset
ds = load_dataset(sys.argv[1], split="train")
image = sys.argv[2]
rows = [
    {"caption": row[sys.argv[3]], "size": list(row[image].size), "key": row.get("__key__"),
     "json": row.get("json"), "row": {k: v for k, v in row.items() if k not in (image, "json")}}
    for row in ds
]
print(json.dumps({"features": sorted(ds.features), "rows": rows}, default=str))
"""


def prompts_of(output: Path) -> list[str]:
    items = batch_runner.load(output).items
    return sorted(items[items.status == "succeeded"].prompt)


def front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_load_dataset_dir_reads_the_webdataset_export_with_images_and_exact_captions(outputs, tmp_path):
    to = tmp_path / "wds"
    export(outputs["sweep"], "webdataset", to, "--shard-size", "4")
    got = load_offline(tmp_path, LOAD_DIR, str(to), "jpg", "txt")
    assert {"jpg", "txt", "json", "__key__"} <= set(got["features"])
    assert sorted(r["caption"] for r in got["rows"]) == prompts_of(outputs["sweep"])
    assert all(r["size"] == [1024, 1024] for r in got["rows"])
    record = got["rows"][0]["json"]
    assert record["key"] == got["rows"][0]["key"] == record["item_id"]
    assert record["caption"] == record["text"] == got["rows"][0]["caption"]
    assert (record["width"], record["height"]) == (1024, 1024) and len(record["sha256"]) == 64
    assert record["Category"] in ("Signs", "Outdoor", "Food")


def test_load_dataset_dir_reads_the_imagefolder_export(outputs, tmp_path):
    to = tmp_path / "images"
    export(outputs["sweep"], "imagefolder", to)
    got = load_offline(tmp_path, LOAD_DIR, str(to), "image", "text")
    assert sorted(r["caption"] for r in got["rows"]) == prompts_of(outputs["sweep"])
    assert all(r["size"] == [1024, 1024] for r in got["rows"])
    assert {r["row"]["Challenge"] for r in got["rows"]} == {"Text", "Simple", "Unicode"}


def test_a_merged_imagefolder_keeps_every_column_of_every_output(outputs, tmp_path):
    to = tmp_path / "merged"
    export(outputs["sweep"], "imagefolder", to)
    export(outputs["plain"], "imagefolder", to)  # no metadata columns at all
    frame = pd.read_parquet(to / "metadata.parquet")
    assert len(frame) == 8
    swept = frame[frame.prompt.isin(prompts_of(outputs["sweep"]))]
    assert sorted(swept.Category) == ["Food", "Food", "Outdoor", "Outdoor", "Signs", "Signs"]
    assert set(swept.Challenge) == {"Text", "Simple", "Unicode"}
    assert frame[frame.prompt.str.contains("door")].Category.isna().all()

    export(outputs["sweep"], "imagefolder", to)  # again, in the other order: nothing new, nothing lost
    assert pd.read_parquet(to / "metadata.parquet").Category.notna().sum() == 6
    got = load_offline(tmp_path, LOAD_DIR, str(to), "image", "text")
    every = sorted(prompts_of(outputs["sweep"]) + prompts_of(outputs["plain"]))
    assert sorted(r["caption"] for r in got["rows"]) == every
    assert sorted(str(r["row"]["Category"]) for r in got["rows"]).count("None") == 2


def test_a_merged_webdataset_loads_every_shard_with_every_column(outputs, tmp_path):
    to = tmp_path / "merged-wds"
    export(outputs["plain"], "webdataset", to)
    export(outputs["sweep"], "webdataset", to)  # later shards gain columns the first lacks
    got = load_offline(tmp_path, LOAD_DIR, str(to), "jpg", "txt")
    assert len(got["rows"]) == 8
    categories = sorted(str(r["json"]["Category"]) for r in got["rows"])
    assert categories == ["Food", "Food", "None", "None", "Outdoor", "Outdoor", "Signs", "Signs"]


def test_webdataset_streams_through_openclip_style_rename_and_counts_its_shards(outputs, tmp_path):
    to = tmp_path / "clip"
    export(outputs["sweep"], "webdataset", to, "--shard-size", "4")
    code = """
import ast, glob, json, os, sys
import webdataset as wds
urls = sorted(glob.glob(sys.argv[1] + "/shard-*.tar"))
# OpenCLIP's get_dataset_size(): sizes.json beside the shards, keyed by file name.
sizes = json.load(open(os.path.join(os.path.dirname(urls[0]), "sizes.json")))
total = sum(int(sizes[os.path.basename(u)]) for u in urls)
stream = (wds.WebDataset(urls, shardshuffle=False).decode("pilrgb")
          .rename(image="jpg;png;jpeg;webp", text="txt").to_tuple("image", "text"))
pairs = [(list(image.size), text) for image, text in stream]
print(json.dumps({"total": total, "pairs": pairs}))
"""
    got = load_offline(tmp_path, code, str(to))
    assert got["total"] == len(got["pairs"]) == 6
    assert sorted(text for _, text in got["pairs"]) == prompts_of(outputs["sweep"])
    stats = [json.loads(p.read_text()) for p in sorted(to.glob("shard-*_stats.json"))]
    assert [(s["shard"], s["count"]) for s in stats] == [("shard-000000.tar", 4), ("shard-000001.tar", 2)]
    assert all(s["bytes"] == (to / s["shard"]).stat().st_size for s in stats)


def test_a_broken_shard_is_set_aside_and_its_samples_exported_again(outputs, tmp_path):
    to = tmp_path / "broken"
    export(outputs["sweep"], "webdataset", to, "--shard-size", "4")
    first = to / "shard-000000.tar"
    first.write_bytes(first.read_bytes()[:3000])  # a shard cut short (a copy that died, a bad disk)
    (to / "shard-000000_stats.json").unlink()
    done = run_cli("export", str(outputs["sweep"]), "--format", "webdataset", "--to", str(to), "--shard-size", "4")
    assert done.returncode == 0, done.stderr
    assert "exported 4 new item(s)" in done.stdout and "shard-000000.tar is not a whole tar file" in done.stdout
    assert (to / "shard-000000.tar.broken").exists() and not first.exists()
    keys = []
    for shard in sorted(to.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            keys += [n.split(".")[0] for n in tar.getnames() if n.endswith(".json")]
    assert len(keys) == len(set(keys)) == 6
    assert sum(json.loads((to / "sizes.json").read_text()).values()) == 6


@pytest.mark.parametrize("kind", ["imagefolder", "webdataset"])
def test_column_names_with_a_colon_or_a_line_break_stay_quoted_in_the_card(outputs, tmp_path, kind):
    to = tmp_path / kind
    export(outputs["evil"], kind, to)
    front = front_matter(to)
    assert front["license"] == "other"  # the column "note\nlicense: mit" did not become a key
    assert set(front) == {
        "license", "license_name", "license_link", "task_categories", "tags", "size_categories", "configs",
        "dataset_info",
    }  # fmt: skip
    features = front["dataset_info"]["features"]
    names = [f["name"] for f in features] if kind == "imagefolder" else [f["name"] for f in features[2]["struct"]]
    assert "Category: x" in names and "note\nlicense: mit" in names
    image, caption = ("image", "text") if kind == "imagefolder" else ("jpg", "txt")
    got = load_offline(tmp_path, LOAD_DIR, str(to), image, caption)
    assert sorted(r["caption"] for r in got["rows"]) == ["a cat", "a dog"]


def test_the_card_says_sandbox_images_are_placeholders_and_names_its_licence(outputs, tmp_path):
    real = tmp_path / "real"
    export(outputs["sweep"], "imagefolder", real)  # run against an --endpoint: real images as far as it knows
    assert "placeholder" not in (real / "README.md").read_text(encoding="utf-8")
    assert "Segmind's and Ideogram's" in (real / "LICENSE.md").read_text(encoding="utf-8")

    job = tmp_path / "sandboxed.yaml"
    job.write_text("name: sandboxed\ndefaults:\n  resolution: RESOLUTION_512_1536\ngrid:\n  prompt: [a drum]\n")
    done = run_cli("run", str(job), "--sandbox", "--output", str(tmp_path / "sandboxed"), "--progress", "quiet")
    assert done.returncode == 0, done.stderr
    to = tmp_path / "card"
    export(tmp_path / "sandboxed", "imagefolder", to)
    front = front_matter(to)
    assert (front["license"], front["license_link"]) == ("other", "LICENSE.md") and front["license_name"]
    assert "placeholder" in front["tags"]
    card = (to / "README.md").read_text(encoding="utf-8")
    assert "placeholder images drawn by batch-runner's local sandbox, not images made by Ideogram" in card
    assert "pypi.org" not in card
    assert "placeholders" in (to / "LICENSE.md").read_text(encoding="utf-8")


def test_pandas_reads_nullable_integers_once_items_failed_or_are_pending(tmp_path):
    job = tmp_path / "mixed.yaml"
    job.write_text(
        "name: mixed\ndefaults:\n  resolution: RESOLUTION_512_1536\ngrid:\n  prompt:\n"
        '    - "fine"\n    - "[sandbox:fail=422] refused"\n    - "also fine"\n    - "later"\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    with sandbox_with(credits=2 * 0.063 + 0.001) as sb:
        assert run(job, out, sb, "--concurrency", "1").returncode in (1, 3)
    items = batch_runner.load(out).items
    assert set(items.status) >= {"failed", "succeeded"} and len(items) == 4
    for column in ("http_status", "seed_value", "seed"):
        assert str(items[column].dtype) == "Int64", column
    assert items.seed_value.isna().any() and items.seed_value.notna().any()

    to = tmp_path / "dataset"
    export(out, "imagefolder", to)
    frame = pd.read_parquet(to / "metadata.parquet")  # plain pandas, no options
    assert str(frame.seed.dtype) == "Int64" and frame.seed.isna().all()
    assert str(frame.seed_value.dtype) == "Int64" and frame.seed_value.notna().all()
