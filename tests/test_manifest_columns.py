"""Issue 19 items 1, 2 and 8 and issue 23 item 18: every CSV column is an API parameter, metadata,
or refused; a prompt is never split; a semicolon-separated file is read; a nameless column with
values is an error. Through the real CLI, and against the sandbox where money is at stake."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError
from batch_runner.job.columns import near_parameter, normalized, parameter_named
from batch_runner.job.items import item_id_for
from batch_runner.job.manifest import load_job
from tests.helpers import run, run_cli
from tests.test_input_honesty import rejected

FAST = 30


# ------------------------------------------------------------------ 1. near-miss column names


@pytest.mark.parametrize(
    "column, meant",
    [("StyleType", "style_type"), ("Seeds", "seed"), ("style", "style_type"), ("Negative_Promt", "negative_prompt")],
)
def test_a_near_miss_column_is_refused_naming_the_parameter_and_nothing_is_sent(
    write, tmp_path, sandbox, column, meant
):
    path = write("m.csv", f"prompt,{column}\na dog,REALISTIC\n")
    result = run(path, tmp_path / "out", sandbox)
    rejected(
        result,
        f"m.csv:1: column 2 {column!r} looks like the API parameter {meant}",
        f"name it {meant} to send them, or meta_{column} to keep it as metadata",
    )
    assert sandbox.stats()["received"] == 0


def test_the_issue_reproduction_exits_2_at_plan(write):
    path = write("m.csv", "prompt,style\na dog,REALISTIC\n")
    rejected(
        run_cli("plan", str(path), timeout=FAST), "m.csv:1: column 2 'style' looks like the API parameter style_type"
    )


def test_spaced_and_hyphenated_names_are_the_parameter_and_are_sent(write, tmp_path, sandbox):
    path = write("m.csv", "Prompt,Style Type,negative-prompt,SEED\na dog,REALISTIC,blur,150\n")
    result = run(path, tmp_path / "out", sandbox, "--api", "sync")
    assert result.returncode == 0, result.stderr
    body = {"prompt": "a dog", "style_type": "REALISTIC", "negative_prompt": "blur", "seed": 150}
    assert sandbox.stats()["bodies"] == {item_id_for(body): {"received": 1, "billed": 1}}


def test_a_meta_prefix_keeps_a_near_miss_as_metadata_and_plan_says_how_each_column_is_used(write, tmp_path):
    path = write("m.csv", "prompt,meta_style,Style Type,Category,status\na dog,noir,DESIGN,animals,todo\n")
    result = run_cli("plan", str(path), timeout=FAST)
    assert result.returncode == 0, result.stderr
    assert (
        "  columns    sent: prompt, Style Type (as style_type); metadata: meta_style, Category, status (as meta_status)"
        in result.stdout
    )
    plan = json.loads(run_cli("plan", str(path), "--json", timeout=FAST).stdout)
    assert plan["columns"]["meta_style"] == "metadata (marked meta_)"
    assert plan["first_items"][0]["style_type"] == "DESIGN" and plan["first_items"][0]["meta_style"] == "noir"


def test_two_columns_naming_one_parameter_are_refused(write):
    path = write("m.csv", "prompt,style_type,Style Type\na,GENERAL,DESIGN\n")
    rejected(
        run_cli("plan", str(path), timeout=FAST), "columns 'style_type' and 'Style Type' both name the API parameter"
    )


def test_yaml_keys_follow_the_same_rule(write):
    good = write("g.yaml", "defaults:\n  Style Type: DESIGN\ngrid:\n  prompt: [a]\n")
    assert [i.params for i in load_job(good).iter_items()] == [{"style_type": "DESIGN", "prompt": "a"}]
    bad = write("b.yaml", "defaults:\n  StyleType: DESIGN\ngrid:\n  prompt: [a]\n  Seeds: [100]\n")
    rejected(
        run_cli("plan", str(bad), timeout=FAST),
        "b.yaml:2: unknown parameter 'StyleType'; did you mean style_type?",
        "b.yaml:5: unknown parameter 'Seeds'; did you mean seed?",
    )


def _separators(draw, name: str) -> str:
    words = name.split("_")
    out = words[0]
    for word in words[1:]:
        out += draw(st.sampled_from(["", " ", "-", "_", "__", " - "])) + word
    return out


@st.composite
def near_misses(draw) -> tuple[str, str]:
    """A parameter's name as people misspell it: case, separators, a plural, one typo."""
    parameter = draw(st.sampled_from(api_spec.PARAMETERS))
    name = _separators(draw, parameter)
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    kind = draw(st.sampled_from(["as is", "plural", "drop", "swap", "double"]))
    letters = [i for i, c in enumerate(name) if c.isalpha()]
    i = draw(st.sampled_from(letters[1:]))  # typos keep the first letter
    if kind == "plural":
        name += "s"
    elif kind == "drop":
        name = name[:i] + name[i + 1 :]
    elif kind == "swap" and i + 1 < len(name):
        name = name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    elif kind == "double":
        name = name[:i] + name[i] + name[i:]
    return draw(st.sampled_from([" ", ""])) + name, parameter


@settings(max_examples=300, deadline=None)
@given(case=near_misses())
def test_a_generated_near_miss_is_never_quietly_metadata(case):
    name, parameter = case
    if normalized(name) == parameter:
        assert parameter_named(name) == parameter
    else:
        assert parameter_named(name) in (None, parameter) and (parameter_named(name) or near_parameter(name))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=near_misses())
def test_a_generated_near_miss_header_is_sent_or_refused_never_dropped(tmp_path, case):
    name, parameter = case
    value = {"seed": "150", "color_palette": "EMBER"}.get(parameter, "x")
    path = tmp_path / "m.csv"
    rows = [["prompt", name], ["a dog", value]] if parameter != "prompt" else [[name, "Category"], ["a dog", "x"]]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    try:
        job = load_job(path)
    except ManifestError as exc:
        assert any(parameter in p.message for p in exc.problems), exc.problems
        return
    assert parameter in job.param_columns and name.strip() not in job.meta_columns


@pytest.mark.parametrize(
    "column", ["Category", "Challenge", "Note", "variant", "owner", "prompt_id", "seed_note", "id"]
)
def test_ordinary_metadata_columns_stay_metadata(write, column):
    job = load_job(write("m.csv", f"prompt,{column}\na dog,x\n"))
    assert job.meta_columns == [column]


# ------------------------------------------------------------------ 2. a prompt is never split


def test_a_pasted_prompt_with_a_pipe_is_one_prompt_and_sent_exactly(write, tmp_path, sandbox):
    prompt = 'a shop sign that says "SALT | PEPPER"'
    path = write("m.csv", 'prompt,negative_prompt\n"a shop sign that says ""SALT | PEPPER""",blur | noise\n')
    result = run(path, tmp_path / "out", sandbox)
    assert result.returncode == 0, result.stderr
    body = {"prompt": prompt, "negative_prompt": "blur | noise"}
    assert sandbox.stats()["bodies"] == {item_id_for(body): {"received": 1, "billed": 1}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12), min_size=2, max_size=5
    ),
    joiner=st.sampled_from([" | ", "|", " \\| ", "||"]),
)
def test_a_generated_pasted_prompt_is_one_item_exactly_as_written(tmp_path, words, joiner):
    prompt = joiner.join(words)
    if not prompt.strip():
        return
    path = tmp_path / "m.csv"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["prompt", "style_type"], [prompt, "GENERAL|ANIME"]])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    items = list(load_job(path).iter_items())
    assert [(i.params["prompt"], i.params["style_type"]) for i in items] == [(prompt, "GENERAL"), (prompt, "ANIME")]


def test_plan_names_every_row_a_cell_expanded(write):
    path = write("m.csv", "prompt,style_type,seed\na,GENERAL|ANIME,100\nb,GENERAL,100-102\nc,DESIGN,100\n")
    result = run_cli("plan", str(path), timeout=FAST)
    assert result.returncode == 0, result.stderr
    assert "  expanded   line 2: style_type × 2 = 2 items\n             line 3: seed × 3 = 3 items\n" in result.stdout
    assert "line 4" not in result.stdout


# ------------------------------------------------------------------ 8. semicolons


def test_a_semicolon_separated_file_is_read_and_plan_says_so(write, tmp_path, sandbox):
    path = write("m.csv", 'Prompt;Style_Type;Seed\n"a dog; a cat";REALISTIC;100\n')
    planned = run_cli("plan", str(path), timeout=FAST)
    assert planned.returncode == 0, planned.stderr
    assert "  note       read as semicolon-separated" in planned.stdout
    result = run(path, tmp_path / "out", sandbox)
    assert result.returncode == 0, result.stderr
    body = {"prompt": "a dog; a cat", "style_type": "REALISTIC", "seed": 100}
    assert sandbox.stats()["bodies"] == {item_id_for(body): {"received": 1, "billed": 1}}


# ------------------------------------------------------------------ 23.18 nameless columns


def test_a_nameless_column_with_values_is_an_error_naming_its_number(write, tmp_path, sandbox):
    path = write("m.csv", "prompt,,seed\na dog,REALISTIC,100\n")
    rejected(
        run(path, tmp_path / "out", sandbox),
        "m.csv:2: column 2 has no name in the header (line 1), but this row has a value in it ('REALISTIC')",
        "name the column in the header",
    )
    assert sandbox.stats()["received"] == 0


def test_a_nameless_empty_column_loses_nothing_and_is_accepted(write):
    # A spreadsheet's trailing delimiter: a column with no name and no values.
    job = load_job(write("m.csv", "prompt,seed,\na dog,100,\n"))
    assert [i.params for i in job.iter_items()] == [{"prompt": "a dog", "seed": 100}]


def test_a_nameless_column_in_a_value_file_is_an_error_too(write):
    write("values.csv", "Prompt,\na dog,oops\n")
    path = write("job.yaml", "grid:\n  prompt: {file: values.csv, column: Prompt}\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "values.csv:2: column 2 has no name in the header")
