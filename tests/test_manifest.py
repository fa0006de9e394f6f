"""Manifests expand into exactly the items they describe, and bad ones say what to fix."""

from __future__ import annotations

import csv
import json

import pytest

from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError
from batch_runner.job.items import Deduplicated, item_id_for
from batch_runner.job.manifest import load_job
from tests.helpers import run_cli


def items_of(path):
    return list(Deduplicated(load_job(path).iter_items()))


def problems_of(path) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        items_of(path)
    return [str(p) for p in exc.value.problems]


def test_grid_is_the_cartesian_product_with_defaults_applied(write):
    path = write(
        "job.yaml",
        """
name: sweep
defaults: {resolution: RESOLUTION_1280_800}
grid:
  prompt: [a cat, a dog]
  style_type: [GENERAL, ANIME, DESIGN]
  seed: [100, 200]
""",
    )
    items = items_of(path)
    assert len(items) == 12
    combos = {(i.params["prompt"], i.params["style_type"], i.params["seed"]) for i in items}
    assert len(combos) == 12
    assert all(i.params["resolution"] == "RESOLUTION_1280_800" for i in items)


def test_zip_advances_together_and_crosses_the_grid(write):
    path = write(
        "job.yaml",
        """
zip:
  prompt: [a cat, a dog, a cow]
  negative_prompt: [no dogs, no cats, no milk]
grid:
  seed: [100, 101]
""",
    )
    items = items_of(path)
    assert len(items) == 6
    pairs = {(i.params["prompt"], i.params["negative_prompt"]) for i in items}
    assert pairs == {("a cat", "no dogs"), ("a dog", "no cats"), ("a cow", "no milk")}


def test_zip_lists_of_unequal_length_are_reported(write):
    path = write("job.yaml", "zip:\n  prompt: [a, b]\n  negative_prompt: [x]\n")
    [message] = problems_of(path)
    assert "job.yaml:1" in message and "prompt has 2, negative_prompt has 1" in message


def test_seed_range_random_and_list_all_become_concrete_numbers(write):
    path = write(
        "job.yaml",
        """
defaults: {prompt: p}
grid:
  seed: [150, "300-302"]
""",
    )
    assert sorted(i.params["seed"] for i in items_of(path)) == [150, 300, 301, 302]

    random_job = write("r.yaml", "defaults: {prompt: p}\ngrid:\n  seed: {random: 50, base: 3}\n")
    first = [i.params["seed"] for i in items_of(random_job)]
    again = [i.params["seed"] for i in items_of(random_job)]
    assert first == again and len(set(first)) == 50
    assert all(api_spec.SEED_MIN <= s <= api_spec.SAFE_SEED_MAX for s in first)


def test_value_file_rides_its_other_columns_along_as_metadata(write):
    write("prompts.tsv", "Prompt\tCategory\tNote\na cat\tAnimals\tcute\na car\tVehicles\tfast\n")
    path = write("job.yaml", "grid:\n  prompt: {file: prompts.tsv, column: Prompt}\n  seed: [100, 101]\n")
    items = items_of(path)
    assert len(items) == 4
    by_prompt = {i.params["prompt"]: i.meta for i in items}
    assert by_prompt["a car"] == {"Category": "Vehicles", "Note": "fast"}
    assert load_job(path).meta_columns == ["Category", "Note"]


def test_plain_text_value_file_keeps_each_line_exactly(write):
    write("p.txt", '  leading spaces\n"quoted", with comma\nünïcödé ✓\n\n')
    path = write("job.yaml", "grid:\n  prompt: {file: p.txt}\n")
    assert [i.params["prompt"] for i in items_of(path)] == ["  leading spaces", '"quoted", with comma', "ünïcödé ✓"]


def test_templates_fill_from_vars_and_other_axes(write):
    path = write(
        "job.yaml",
        """
grid:
  prompt: ["a {animal} in {place}, {style_type}"]
  style_type: [ANIME]
vars:
  animal: [cat, owl]
  place: [space]
""",
    )
    items = items_of(path)
    assert sorted(i.params["prompt"] for i in items) == ["a cat in space, ANIME", "a owl in space, ANIME"]
    assert {i.meta["animal"] for i in items} == {"cat", "owl"}


def test_template_with_unknown_name_and_escaped_braces(write):
    bad = write("bad.yaml", "grid:\n  prompt: ['a {beast}']\n")
    [message] = problems_of(bad)
    assert "{beast}" in message and "vars:" in message and "bad.yaml:2" in message
    ok = write("ok.yaml", "grid:\n  prompt: ['a sign that says {{hi}}']\n")
    assert [i.params["prompt"] for i in items_of(ok)] == ["a sign that says {hi}"]


def test_prompts_from_files_are_never_templates(write):
    write("p.txt", "a sign that says {hello}\n")
    path = write("job.yaml", "grid:\n  prompt: {file: p.txt}\n")
    assert [i.params["prompt"] for i in items_of(path)] == ["a sign that says {hello}"]


def test_palette_presets_and_custom_members(write):
    path = write(
        "job.yaml",
        """
defaults: {prompt: p}
grid:
  color_palette:
    - MELON
    - {name: PASTEL}
    - members: [{color_hex: "#fff"}, {color_hex: "#00FF00", color_weight: 0.5}]
""",
    )
    palettes = [i.params["color_palette"] for i in items_of(path)]
    assert palettes[0] == {"name": "MELON"} and palettes[1] == {"name": "PASTEL"}
    assert palettes[2]["members"][1] == {"color_hex": "#00FF00", "color_weight": 0.5}


def test_identical_items_are_sent_once_and_counted(write):
    path = write("job.yaml", "grid:\n  prompt: [a, b, a]\n  seed: [100, 100]\n")
    unique = Deduplicated(load_job(path).iter_items())
    assert len(list(unique)) == 2 and unique.duplicates == 4


def test_item_id_depends_only_on_the_request():
    a = item_id_for({"prompt": "x", "seed": 100})
    assert a == item_id_for({"seed": 100, "prompt": "x"})
    assert a != item_id_for({"prompt": "x ", "seed": 100})
    assert a != item_id_for({"prompt": "x", "seed": 101})


def test_ids_survive_an_edited_manifest(write):
    before = {i.item_id for i in items_of(write("a.yaml", "grid:\n  prompt: [a, b]\n  seed: [100]\n"))}
    after = {i.item_id for i in items_of(write("b.yaml", "name: renamed\ngrid:\n  seed: [100]\n  prompt: [a, b, c]\n"))}
    assert before < after and len(after - before) == 1


def test_csv_rows_with_pipes_expand_and_unknown_columns_are_metadata(write):
    path = write(
        "ab.csv",
        'Prompt,STYLE_TYPE,seed,variant\n"a ""quoted"", prompt ",GENERAL|ANIME,100|101,A\nplain,DESIGN,,B\n',
    )
    items = items_of(path)
    assert len(items) == 5
    quoted = [i for i in items if i.meta["variant"] == "A"]
    assert {i.params["prompt"] for i in quoted} == {'a "quoted", prompt '}
    plain = [i for i in items if i.meta["variant"] == "B"]
    assert plain[0].params == {"prompt": "plain", "style_type": "DESIGN"}


def test_tsv_delimiter_is_detected_in_a_csv_named_file(write):
    path = write("tabs.csv", "prompt\tseed\na, b and c\t100\n")
    [item] = items_of(path)
    assert item.params == {"prompt": "a, b and c", "seed": 100}


def test_a_prompt_cell_is_sent_as_written_pipes_and_backslashes_included(write):
    # Issue 19: a '|' in a pasted prompt is text, not syntax ('\\|' was the old escape for it).
    path = write("p.csv", "prompt\na \\| b\nSALT | PEPPER\n")
    assert [i.params["prompt"] for i in items_of(path)] == ["a \\| b", "SALT | PEPPER"]


def test_every_problem_is_reported_at_once_with_lines_and_fixes(write):
    path = write(
        "bad.yaml",
        """name: bad
defaults:
  resolution: RESOLUTION_1000_1000
grid:
  prompt: ["ok", ""]
  style_type: [anime, PHOTO]
  seed: [5, 100-99]
  magic_prompt_option: [MAYBE]
  colour_palette: [EMBER]
concurency: 4
""",
    )
    problems = problems_of(path)
    text = "\n".join(problems)
    assert "bad.yaml:3: resolution 'RESOLUTION_1000_1000' is not valid; did you mean RESOLUTION_1024_1024?" in text
    assert "bad.yaml:5: prompt is empty" in text
    assert "style_type 'anime' is not valid; did you mean ANIME?" in text
    assert "seed 5 is out of range" in text
    assert "runs backwards; write 99-100" in text
    assert "magic_prompt_option 'MAYBE'" in text
    assert "bad.yaml:9: unknown parameter 'colour_palette'; did you mean color_palette?" in text
    assert "bad.yaml:10: unknown key 'concurency'; did you mean concurrency?" in text
    assert len(problems) >= 8


def test_a_seed_range_reads_the_same_in_yaml_and_in_a_csv_cell(write):
    # One reader for both: a range that runs backwards says so first, even when an end is also
    # out of range (turning it round is the first fix either way).
    ranges = ["100-99", "300-200", "5-150", "150-152"]
    yaml_path = write("r.yaml", "grid:\n  prompt: [a]\n  seed: [" + ", ".join(ranges) + "]\n")
    csv_path = write("r.csv", "prompt,seed\n" + "".join(f"p{i},{r}\n" for i, r in enumerate(ranges)))
    expected = [
        "seed range '100-99' runs backwards; write 99-100",
        "seed range '300-200' runs backwards; write 200-300",
        "seed 5 is out of range; use an integer from 100 to 999999",
    ]
    assert [p.split(": ", 1)[1] for p in problems_of(yaml_path)] == expected
    shown = [p[p.index("r.csv:") :] for p in problems_of(csv_path)]
    assert shown == [f"r.csv:{line}: {message}" for line, message in zip((2, 3, 4), expected, strict=True)]
    good = write("g.csv", "prompt,seed\na,150-152|100\n")
    assert [item.params["seed"] for item in items_of(good)] == [150, 151, 152, 100]


@pytest.mark.parametrize(
    "palette, fragment",
    [
        ("{members: []}", "1 to 8"),
        ("{members: [{color_hex: red}]}", "is not a colour"),
        ("{members: [{color_hex: '#fff', color_weight: 2}]}", "out of range"),
        ("{name: EMBER, members: []}", "exactly one of"),
        ("NEON", "not valid"),
    ],
)
def test_bad_palettes(write, palette, fragment):
    path = write("p.yaml", f"defaults:\n  prompt: p\n  color_palette: {palette}\n")
    [message] = problems_of(path)
    assert fragment in message and "p.yaml:3" in message


def test_csv_problems_name_the_line(write):
    path = write("bad.csv", "prompt,resolution\nok,RESOLUTION_1024_1024\n,RESOLUTION_1024_1024\nok,1024x1024\n")
    problems = problems_of(path)
    assert any("bad.csv:3: prompt is empty" in p for p in problems)
    assert any("bad.csv:4:" in p and "did you mean RESOLUTION_1024_1024?" in p for p in problems)


def test_missing_referenced_file_and_broken_yaml(write):
    missing = write("m.yaml", "grid:\n  prompt: {file: nowhere.txt}\n")
    [message] = problems_of(missing)
    assert "m.yaml:2" in message and "'nowhere.txt' not found" in message
    broken = write("b.yaml", "grid:\n  prompt: [a, b\n  seed: 1\n")
    [message] = problems_of(broken)
    assert "broken YAML" in message and "b.yaml:" in message


def test_cli_plan_reports_problems_with_exit_code_2_and_no_traceback(write):
    path = write("bad.yaml", "grid:\n  prompt: [a]\n  resolution: [RESOLUTION_999_999]\n")
    result = run_cli("plan", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bad.yaml:3" in result.stderr and "resolution" in result.stderr


def test_cli_plan_json_and_items_file(write, tmp_path):
    path = write(
        "job.yaml",
        "name: j\ngrid:\n  prompt: ['a, \"b\"', c]\n  seed: [100, 101]\n"
        "  style_type: [GENERAL]\nprice_per_image: 0.1\n",
    )
    items_csv = tmp_path / "items.csv"
    result = run_cli("plan", str(path), "--json", "--items", str(items_csv))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["items"] == 4 and plan["estimated_cost_usd"] == pytest.approx(0.4)
    with items_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["prompt"] == 'a, "b"' and set(rows[0]) >= {"item_id", "seed", "style_type"}

    jsonl = tmp_path / "items.jsonl"
    assert run_cli("plan", str(path), "--items", str(jsonl)).returncode == 0
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [r["item_id"] for r in lines] == [r["item_id"] for r in rows]


def test_cli_flags_override_manifest_settings(write):
    path = write("job.yaml", "grid:\n  prompt: [a]\nconcurrency: 2\nrpm: 5\n")
    plan = json.loads(run_cli("plan", str(path), "--json", "--concurrency", "8").stdout)
    assert plan["concurrency"] == 8 and plan["rpm"] == 5


def test_human_plan_shows_counts_cost_duration_and_first_items():
    result = run_cli("plan", "jobs/quickstart.yaml")
    assert result.returncode == 0
    assert "12 unique (0 duplicates dropped)" in result.stdout
    assert "$0.76 estimated (12 × $0.063)" in result.stdout
    assert "first 5 items:" in result.stdout


def test_every_example_job_plans():
    from pathlib import Path

    jobs = sorted(p for p in Path("jobs").iterdir() if p.suffix in (".yaml", ".csv"))
    assert len(jobs) >= 4
    for job in jobs:
        result = run_cli("plan", str(job), "--json")
        assert result.returncode == 0, (job, result.stderr)
        assert json.loads(result.stdout)["items"] > 0
