"""A realistic job: the 1,632 PartiPrompts crossed with seeds and styles."""

from __future__ import annotations

import csv
import json

from tests.helpers import run_cli


def test_partiprompts_crossed_with_seeds_and_styles(write, tmp_path, parti_prompts):
    with parti_prompts.open(encoding="utf-8", newline="") as f:
        # A TSV has no quoting: a prompt that begins with a quote keeps it.
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 1632
    job = write(
        "parti.yaml",
        f"""
name: parti
grid:
  prompt: {{file: {parti_prompts}, column: Prompt}}
  seed: {{random: 3, base: 11}}
  style_type: [GENERAL, REALISTIC, ANIME, DESIGN]
""",
    )
    items_file = tmp_path / "items.jsonl"
    result = run_cli("plan", str(job), "--json", "--items", str(items_file))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    distinct_prompts = len({r["Prompt"] for r in rows})
    assert plan["items"] == distinct_prompts * 3 * 4
    assert plan["estimated_cost_usd"] == round(plan["items"] * 0.063, 6)

    items = [json.loads(line) for line in items_file.read_text(encoding="utf-8").splitlines()]
    assert len(items) == plan["items"]
    category = {r["Prompt"]: r["Category"] for r in rows}
    assert all(item["Category"] == category[item["prompt"]] for item in items)
    assert {item["prompt"] for item in items} == {r["Prompt"] for r in rows}
    assert any(item["prompt"].startswith('"G I G G L E" painted') for item in items)
    assert len({item["seed"] for item in items}) == 3
