"""Properties of expansion and validation that must hold for any manifest."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batch_runner.api import spec as api_spec
from batch_runner.errors import ManifestError
from batch_runner.job.items import Deduplicated
from batch_runner.job.manifest import load_job
from tests.helpers import run_cli

# Characters YAML treats specially inside a scalar: line breaks (YAML 1.1, which PyYAML reads,
# counts NEL U+0085, LS U+2028 and PS U+2029 as breaks, and folds or normalises them), the BOM,
# tab, and controls and non-characters that a YAML file may hold only as escapes. Drawn often
# on purpose: arbitrary text would rarely reach them.
YAML_SPECIAL = "\x85\u2028\u2029\r\n\t\ufeff\x00\x0b\x0c\x1b\x7f\x9f\ufffe\uffff"
# Any text, but no lone surrogates (not characters; a manifest refuses them) and no braces
# (a YAML prompt with {x} is a template; test_manifest.py covers those).
prompts = st.text(
    st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), st.sampled_from(YAML_SPECIAL)),
    min_size=1,
).filter(lambda s: s.strip())
# A NUL byte makes a file binary (the product refuses it), and CSV has no escape for one.
csv_prompts = prompts.filter(lambda s: "\x00" not in s)


class ManifestDumper(yaml.SafeDumper):
    """yaml.safe_dump(allow_unicode=True), but with NEL written as a person must write it: escaped.

    PyYAML's emitter writes NEL (U+0085) raw inside a single-quoted scalar, as a line break, without
    the extra break that line folding needs, so its own loader reads it back as a space:
    yaml.safe_load(yaml.safe_dump(["a\x85b"], allow_unicode=True)) == ["a b"]. Double-quoted,
    the emitter escapes it ("a\\Nb"). Every other character round-trips through the emitter as is.
    """


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\x85" in value else None)


ManifestDumper.add_representer(str, _represent_str)


def yaml_text(doc: object) -> str:
    return yaml.dump(doc, Dumper=ManifestDumper, allow_unicode=True)


axes = st.fixed_dictionaries(
    {},
    optional={
        "style_type": st.lists(st.sampled_from(api_spec.STYLE_TYPES), min_size=1, max_size=5),
        "seed": st.lists(st.integers(api_spec.SEED_MIN, api_spec.SEED_MAX), min_size=1, max_size=5),
        "resolution": st.lists(st.sampled_from(api_spec.RESOLUTIONS), min_size=1, max_size=4),
        "magic_prompt_option": st.lists(st.sampled_from(api_spec.MAGIC_PROMPT_OPTIONS), min_size=1, max_size=3),
    },
)
fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz
@given(prompt_list=st.lists(prompts, min_size=1, max_size=6), grid=axes)
@example(prompt_list=["a\x85b", "\x85 x", "x\x85", "a \x85 b", "x\n\x85\u2028\x85y"], grid={})
@example(prompt_list=["a\u2028b", "a\u2029b", "a \u2028 b", "\u2028x", "x\u2029"], grid={})
@example(prompt_list=["a\rb", "a\r\nb", "x\r", "a\nb", " a\n", "a\n\nb"], grid={})
@example(prompt_list=["\ufeffa", "a\tb", "a\x00b", "a\x0bb\x0c", "\x1b[1m", "a\x7f\x9f", "\ufffe\uffff"], grid={})
def test_expansion_is_the_product_of_distinct_values_and_keeps_prompts_exact(tmp_path, prompt_list, grid):
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text({"grid": {"prompt": prompt_list, **grid}}), encoding="utf-8")
    unique = Deduplicated(load_job(path).iter_items())
    items = list(unique)
    expected = math.prod(len(set(values)) for values in [prompt_list, *grid.values()])
    assert len(items) == expected
    assert len({i.item_id for i in items}) == expected
    assert {i.params["prompt"] for i in items} == set(prompt_list)
    total = math.prod(len(v) for v in [prompt_list, *grid.values()])
    assert unique.duplicates == total - expected


@pytest.mark.parametrize(
    "written, prompt",
    [
        (r'"a\Nb"', "a\x85b"),  # YAML's own escapes for its line-break characters
        (r'"a\Lb"', "a\u2028b"),
        (r'"a\Pb"', "a\u2029b"),
        (r'"a\x85b"', "a\x85b"),
        (r'"a\u0085b \u2028 \u2029"', "a\x85b \u2028 \u2029"),  # JSON-style escapes
        (r'"a\rb\r\nc"', "a\rb\r\nc"),
        (r'"\ud83e\udd8a fox"', "\U0001f98a fox"),  # a surrogate pair, as JSON writes one
        ("a\u2028b", "a\u2028b"),  # LS and PS written raw stay (NEL raw is a YAML 1.1 line break)
    ],
)
def test_yaml_escapes_put_any_character_into_a_prompt(write, written, prompt):
    path = write("job.yaml", f"grid:\n  prompt: [{written}]\n")
    assert [item.params["prompt"] for item in load_job(path).iter_items()] == [prompt]


@fuzz
@given(rows=st.lists(st.tuples(csv_prompts, st.sampled_from(api_spec.STYLE_TYPES)), min_size=1, max_size=8))
@example(rows=[("a\x85b", "GENERAL"), ("a\u2028b", "ANIME"), ("a\rb", "DESIGN"), ("a\r\nb\n", "GENERAL")])
def test_csv_prompts_round_trip_exactly(tmp_path, rows):
    import csv

    rows = [(p.replace("|", "/"), s) for p, s in rows]
    path = tmp_path / "job.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Prompt", "style_type"])
        writer.writerows(rows)
    items = list(load_job(path).iter_items())
    assert [(i.params["prompt"], i.params["style_type"]) for i in items] == rows


@fuzz
@given(value=st.one_of(st.integers(), st.text(max_size=20), st.floats(allow_nan=False), st.booleans(), st.none()))
def test_seed_validation_accepts_exactly_the_documented_range(value):
    valid = isinstance(value, int) and not isinstance(value, bool) and api_spec.SEED_MIN <= value <= api_spec.SEED_MAX
    assert (api_spec.check_seed(value) is None) == valid


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=False), st.text(max_size=30)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from([*api_spec.PARAMETERS, "file", "random", "base", "members", "name"]),
                st.text(max_size=8),
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
manifest_docs = st.dictionaries(
    st.sampled_from(["name", "defaults", "grid", "zip", "vars", "concurrency", "rpm", "max_cost", "bogus"]),
    yaml_values,
    max_size=5,
)


@fuzz
@given(doc=manifest_docs)
def test_fuzzed_manifests_either_plan_or_raise_manifest_error(tmp_path, doc):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        for _ in Deduplicated(load_job(path).iter_items()):
            pass
    except ManifestError as exc:
        assert exc.problems and all(p.file.endswith("fuzz.yaml") or "fuzz" not in p.file for p in exc.problems)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_garbage_files_never_show_a_traceback_through_the_cli(tmp_path, raw):
    for name in ("garbage.yaml", "garbage.csv"):
        path = tmp_path / name
        path.write_bytes(raw)
        result = run_cli("plan", str(path), "--json")
        assert "Traceback" not in result.stderr
        assert result.returncode in (0, 2)
        if result.returncode == 0:
            assert json.loads(result.stdout)["items"] >= 1
        else:
            assert name in result.stderr
