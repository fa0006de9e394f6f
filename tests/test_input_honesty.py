"""Input is taken at its word or refused with file, line and fix: through the real CLI.

Settings are checked like flags, prompts are sent exactly as written, user columns never
collide with the tool's own, and hostile input fails fast with exit code 2, never a hang or
a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from batch_runner import settings
from batch_runner.job.items import OUTPUT_COLUMNS
from tests.helpers import REPO, run_cli

FAST = 30  # seconds: every rejection here takes well under one


def rejected(result, *fragments: str) -> str:
    """Exit 2, no traceback, and every fragment in the message."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result.stderr


def planned_items(path, tmp_path) -> list[dict]:
    """Every item `plan --items` writes, as the JSON objects a script would read."""
    out = tmp_path / "items.jsonl"
    result = run_cli("plan", str(path), "--items", str(out), timeout=FAST)
    assert result.returncode == 0, result.stderr
    # Lines end at "\n" only: a prompt may hold U+2028, which str.splitlines() would split at.
    return [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]


# ------------------------------------------------------------------------ 5. settings like flags


def test_manifest_settings_out_of_range_are_errors_with_line_and_fix(write):
    path = write(
        "s.yaml",
        "grid:\n  prompt: [a]\nconcurrency: 100000000\nrpm: .nan\nmax_cost: -1\nprice_per_image: 1e9\n",
    )
    rejected(
        run_cli("plan", str(path), timeout=FAST),
        "s.yaml:3: concurrency 100,000,000 is out of range; use a whole number from 1 to 256",
        "s.yaml:4: rpm nan is not a finite number; use a number from 0.01 to 100,000",
        "s.yaml:5: max_cost -1 is out of range; use a number of dollars from 0 to 10,000,000",
        "s.yaml:6: price_per_image 1,000,000,000 is out of range; use a number of dollars above 0, up to 100",
    )
    path = write(
        "s2.yaml",
        "grid:\n  prompt: [a]\nrpm: .inf\nmax_cost: 1e9\nconcurrency: 4.5\nprice_per_image: 0\n",
    )
    rejected(
        run_cli("plan", str(path), timeout=FAST),
        "s2.yaml:3: rpm inf is not a finite number",
        "s2.yaml:4: max_cost 1,000,000,000 is out of range",
        "s2.yaml:5: concurrency 4.5 is not a whole number",
        "s2.yaml:6: price_per_image 0 is out of range",
    )


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--concurrency", "100000000", "concurrency 100,000,000 is out of range; use a whole number from 1 to 256"),
        ("--concurrency", "0", "concurrency 0 is out of range"),
        ("--concurrency", "2.5", "concurrency 2.5 is not a whole number"),
        ("--rpm", "nan", "rpm nan is not a finite number"),
        ("--rpm", "0", "rpm 0 is out of range; use a number from 0.01 to 100,000"),
        ("--max-cost", "inf", "max_cost inf is not a finite number"),
        ("--max-cost", "-1", "max_cost -1 is out of range"),
        ("--price-per-image", "1e9", "price_per_image 1,000,000,000 is out of range"),
        ("--price-per-image", "ten", "price_per_image 'ten' is not a number"),
    ],
)
def test_flags_use_the_same_limits_as_the_manifest(write, flag, value, message):
    path = write("ok.yaml", "grid:\n  prompt: [a]\n")
    rejected(run_cli("plan", str(path), flag, value, timeout=FAST), f"argument {flag}: {message}")
    # The same text, from the same table, for the manifest's key.
    key = flag[2:].replace("-", "_")
    bad = write("bad.yaml", f"grid:\n  prompt: [a]\n{key}: {value}\n")
    rejected(run_cli("plan", str(bad), timeout=FAST), f"bad.yaml:3: {message}")


def test_run_refuses_a_bad_flag_before_sending_anything(write, tmp_path):
    path = write("ok.yaml", "grid:\n  prompt: [a]\n")
    result = run_cli("run", str(path), "--sandbox", "--output", str(tmp_path / "out"), "--concurrency", "1e8")
    rejected(result, "argument --concurrency: concurrency 100,000,000 is out of range")
    assert not (tmp_path / "out").exists()


def test_settings_at_the_limits_are_accepted_and_numbers_written_as_text_are_read(write):
    path = write(
        "edge.yaml",
        "grid:\n  prompt: [a]\nconcurrency: 256\nrpm: 1e3\nmax_cost: 0\nprice_per_image: '0.5'\n",
    )
    result = run_cli("plan", str(path), "--json", timeout=FAST)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["concurrency"], plan["rpm"], plan["max_cost"], plan["price_per_image"]) == (256, 1000, 0, 0.5)


def test_the_limits_are_one_table():
    # Every numeric setting has its limits in the table; the two text settings have their own checks.
    assert set(settings.LIMITS) | {"ping_url", "api"} == {f for f in settings.RunSettings.__dataclass_fields__}
    assert settings.check_url("ping_url", "ftp://x") and not settings.check_url("ping_url", "https://hc-ping.com/x")
    assert settings.check_api("api", "v3") and not settings.check_api("api", "async")
    for name in settings.LIMITS:
        for bad in (float("nan"), float("inf"), -1, 10**12, True, "x"):
            assert settings.check_setting(name, bad), (name, bad)


# ----------------------------------------------------------------- 6. prompts exactly as written


def test_tsv_manifest_is_read_literally(write, tmp_path):
    path = write("job.tsv", 'prompt\tnote\n"quoted" start\t"x"\nback\\slash \\n stays\t\n')
    items = planned_items(path, tmp_path)
    assert [i["prompt"] for i in items] == ['"quoted" start', "back\\slash \\n stays"]
    assert items[0]["note"] == '"x"'


def test_tsv_row_with_an_extra_tab_names_its_line(write):
    path = write("job.tsv", "prompt\tseed\nok\t100\na\ttab\t101\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "job.tsv:3: row has 3 cells but the header has 2", "tab")


def test_items_tsv_is_written_literally_and_reads_back_the_same(write, tmp_path):
    path = write("q.csv", 'prompt,note\n"say ""hi""",x\n')
    items_tsv = tmp_path / "items.tsv"
    assert run_cli("plan", str(path), "--items", str(items_tsv), timeout=FAST).returncode == 0
    assert items_tsv.read_text(encoding="utf-8").splitlines()[1].split("\t")[1:] == ['say "hi"', "x"]
    [again] = planned_items(items_tsv, tmp_path)
    assert again["prompt"] == 'say "hi"'


def test_tsv_value_file_is_read_literally(write, tmp_path):
    write(
        "parti.tsv",
        'Prompt\tCategory\n"G I G G L E" painted on a wall\tWriting\nsay "hi"\t"Quoted"\n',
    )
    path = write("job.yaml", "grid:\n  prompt: {file: parti.tsv, column: Prompt}\n")
    items = planned_items(path, tmp_path)
    assert [(i["prompt"], i["Category"]) for i in items] == [
        ('"G I G G L E" painted on a wall', "Writing"),
        ('say "hi"', '"Quoted"'),
    ]


def test_text_value_file_splits_only_at_line_ends(write, tmp_path):
    (tmp_path / "p.txt").write_bytes("one\u2028still one\x0cand one\r\ntwo\rthree\n".encode())
    path = write("job.yaml", "grid:\n  prompt: {file: p.txt}\n")
    assert [i["prompt"] for i in planned_items(path, tmp_path)] == ["one\u2028still one\x0cand one", "two", "three"]


def test_csv_text_after_a_closing_quote_names_its_line(write):
    path = write("bad.csv", 'prompt,seed\nok,100\n"abc"def,101\nfine,102\n')
    rejected(run_cli("plan", str(path), timeout=FAST), "bad.csv:3: text 'def' follows the closing quote", '""')


def test_csv_unclosed_quote_names_the_line_where_the_cell_starts(write):
    at_end = write("eof.csv", 'prompt,seed\nok,100\n"unclosed,101\nfine,102\nmore,103\n')
    rejected(run_cli("plan", str(at_end), timeout=FAST), "eof.csv:3: a quoted cell starts on this line", "close it")
    # The quote "closes" at a later row's quote: Python's csv module would merge rows 3-5.
    later = write("later.csv", 'prompt,seed\nok,100\n"unclosed,101\nfine,102\n"later" quoted,103\n')
    stderr = rejected(
        run_cli("plan", str(later), timeout=FAST), "later.csv:3: the quoted cell that starts on this line"
    )
    assert "later.csv:5" not in stderr
    # It closes cleanly, but swallowed a line break and left the row short of cells.
    short = write("short.csv", 'prompt,seed,note\nok,100,x\n"swallow,102,z\nmore",103\n')
    rejected(run_cli("plan", str(short), timeout=FAST), "short.csv:3: a quoted cell on this line runs on to line 4")


def test_csv_quoted_cell_may_hold_a_line_break(write, tmp_path):
    path = write("ok.csv", 'prompt,seed\n"two\nlines, ""quoted""",100\nnext,101\n')
    assert [i["prompt"] for i in planned_items(path, tmp_path)] == ['two\nlines, "quoted"', "next"]


def test_csv_value_file_errors_name_the_value_file(write):
    write("values.csv", 'Prompt,Category\nok,A\n"broken,B\nfine,C\n')
    path = write("job.yaml", "grid:\n  prompt: {file: values.csv, column: Prompt}\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "values.csv:3: a quoted cell starts on this line")


def test_prompts_are_never_split_and_backslashes_are_kept(write, tmp_path):
    # Issue 19: a '|' splits only a parameter cell of names or numbers (seed here), never a
    # prompt, which is sent exactly as written.
    path = write("pipes.csv", 'prompt,seed,note\n"a \\| b",100,x \\| y\nC:\\path\\n \\ end,101,\nred|blue,102|103,\n')
    items = planned_items(path, tmp_path)
    assert [i["prompt"] for i in items] == ["a \\| b", "C:\\path\\n \\ end", "red|blue", "red|blue"]
    assert [i["seed"] for i in items] == [100, 101, 102, 103]
    assert items[0]["note"] == "x \\| y"  # metadata is never split: kept as written


# ------------------------------------------------------------------- 7. columns never collide


def test_output_columns_match_what_results_writes():
    from batch_runner.store import fold as results

    assert set(OUTPUT_COLUMNS) == {"item_id", *results.STATE_COLUMNS, "file_name", "text"}
    assert "seed_value" in OUTPUT_COLUMNS


def test_plan_stays_light_with_the_reserved_names():
    # The reserved names live in items.py so that `plan` never loads pandas or pyarrow.
    code = (
        "import sys; from batch_runner.cli.main import main; main(['plan', 'jobs/quickstart.yaml', '--json']); "
        "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=FAST)
    assert result.returncode == 0 and result.stderr.strip() == "[]", result.stderr


def test_plan_renames_metadata_columns_that_clash(write, tmp_path):
    path = write("cols.csv", "prompt,status,item_id,text,STATUS_x,Cost_USD\na cat,todo,x1,hi,s,3\n")
    result = run_cli("plan", str(path), timeout=FAST)
    assert result.returncode == 0, result.stderr
    assert "  renamed    status → meta_status (clashes with an output column)" in result.stdout
    assert "  renamed    item_id → meta_item_id (clashes with an output column)" in result.stdout
    assert "  renamed    text → meta_text (clashes with an output column)" in result.stdout
    assert "  renamed    Cost_USD → meta_Cost_USD (clashes with an output column)" in result.stdout
    assert "STATUS_x →" not in result.stdout
    plan = json.loads(run_cli("plan", str(path), "--json", timeout=FAST).stdout)
    assert plan["renamed_columns"] == {
        "status": "meta_status",
        "item_id": "meta_item_id",
        "text": "meta_text",
        "Cost_USD": "meta_Cost_USD",
    }
    [item] = planned_items(path, tmp_path)
    assert item["item_id"] != "x1" and item["meta_item_id"] == "x1"
    assert (item["meta_status"], item["meta_text"], item["STATUS_x"]) == ("todo", "hi", "s")


def test_renamed_columns_never_collide_with_each_other(write, tmp_path):
    path = write("both.csv", "prompt,status,meta_status\na,one,two\n")
    [item] = planned_items(path, tmp_path)
    assert (item["meta_meta_status"], item["meta_status"]) == ("one", "two")


def test_vars_and_value_file_columns_are_renamed_but_templates_use_the_written_names(write, tmp_path):
    write("animals.tsv", "name\tfile_name\tSeed_Value\ncat\tc.png\t7\n")
    path = write(
        "job.yaml",
        "grid:\n  prompt: ['a {status} {animal} from {file_name}']\n"
        "vars:\n  status: [new]\n  animal: {file: animals.tsv, column: name}\n",
    )
    [item] = planned_items(path, tmp_path)
    assert item["prompt"] == "a new cat from c.png"
    assert (item["meta_status"], item["meta_file_name"], item["meta_Seed_Value"]) == ("new", "c.png", "7")


def test_a_repeated_column_is_an_error(write):
    path = write("dup.csv", "prompt,variant,Variant\na,1,2\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "dup.csv:1: column 'Variant' repeats column 'variant'")


def test_sandbox_run_keeps_user_columns_beside_real_state(write, tmp_path):
    pd = pytest.importorskip("pandas")
    path = write("clash.csv", "prompt,status,item_id,text\na cat,todo,x1,hello\na dog,done,x2,bye\n")
    out = tmp_path / "out"
    result = run_cli("run", str(path), "--sandbox", "--output", str(out), "--progress", "quiet", timeout=120)
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out / "manifest.parquet").sort_values("meta_item_id")
    assert list(frame["meta_status"]) == ["todo", "done"]
    assert list(frame["meta_text"]) == ["hello", "bye"]
    assert list(frame["status"]) == ["succeeded", "succeeded"]
    assert not set(frame["item_id"]) & {"x1", "x2"}
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["meta_text"] for r in lines) == ["bye", "hello"]
    assert sorted(r["text"] for r in lines) == ["a cat", "a dog"]


# ------------------------------------------------------------- 10. hostile input fails fast


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_fifo_is_refused_without_being_opened(write, tmp_path):
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    rejected(run_cli("plan", str(fifo), timeout=FAST), "x.yaml: is not a regular file")
    os.mkfifo(tmp_path / "values.txt")
    path = write("job.yaml", "grid:\n  prompt: {file: values.txt}\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "job.yaml:2: referenced file 'values.txt' is not a regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused():
    rejected(run_cli("plan", "/dev/zero", timeout=FAST), "/dev/zero: is not a regular file")


def test_a_grid_too_large_is_refused_before_expanding(write):
    values = ", ".join(f"v{i}" for i in range(100))
    path = write(
        "big.yaml",
        f"name: big\ngrid:\n  prompt: ['a {{x}} {{y}} {{z}}']\n  seed: 100-10099\n"
        f"vars:\n  x: [{values}]\n  y: [{values}]\n  z: [{values}]\n",
    )
    rejected(
        run_cli("plan", str(path), timeout=FAST),
        "big.yaml:2: the job expands to 10,000,000,000 items (prompt 1 × seed 10,000 × x 100 × y 100 × z 100)",
        "more than the 10,000,000",
        "split the job",
    )


def test_csv_rows_too_many_items_are_refused(write):
    # A prompt cell no longer splits (issue 19), so the row's grid is styles × seeds.
    styles = "|".join(("GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"))
    path = write(
        "big.csv",
        f"prompt,style_type,seed\na,,100\nb,,100-199\nc,{styles},100-999999\nd,{styles},100-999999\ne,{styles},100-999999\n",
    )
    rejected(
        run_cli("plan", str(path), timeout=FAST),
        "big.csv:6: the rows up to this one expand to 14,998,601 items, more than the 10,000,000",
        "(this row: 4,999,500 = style_type 5 × seed 999,900)",
    )


@pytest.mark.parametrize(
    "template, shown",
    [
        ("a {seed:.2f} cat", "{seed:.2f}"),
        ("a {animal!z}", "{animal!z}"),
        ("a {animal!r}", "{animal!r}"),
        ("a {animal:>>>}", "{animal:>>>}"),
        ("a {animal:{seed}}", "{animal:{seed}}"),
        ("a {animal[0]}", "{animal[0]}"),
        ("a {animal.x}", "{animal.x}"),
        ("a {animal!}", "malformed"),
    ],
)
def test_template_formats_are_refused_at_load_time(write, template, shown):
    path = write("t.yaml", f"grid:\n  prompt: [{json.dumps(template)}]\n  seed: [100]\nvars:\n  animal: [cat]\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "t.yaml:2: prompt template", shown, "{{")


def test_lone_surrogates_are_refused_and_pairs_joined(write, tmp_path):
    bad = write("s.yaml", 'grid:\n  prompt: ["ok", "bad \\udc80 x"]\n')
    rejected(run_cli("plan", str(bad), timeout=FAST), "s.yaml:2:", "\\udc80", "not valid Unicode")
    pair = write("p.json", '{"grid": {"prompt": ["smile \\ud83d\\ude00"]}}')
    assert [i["prompt"] for i in planned_items(pair, tmp_path)] == ["smile \U0001f600"]
    (tmp_path / "s.csv").write_bytes(b"prompt\nok\nbad \xed\xb2\x80 x\n")
    rejected(run_cli("plan", str(tmp_path / "s.csv"), timeout=FAST), "s.csv:3:", "not valid UTF-8")


def test_deep_yaml_is_refused(write):
    path = write("deep.yaml", "grid:\n  prompt: " + "[" * 10_000 + "]" * 10_000 + "\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "deep.yaml:2: values are nested more than")
    flat = write("deep2.yaml", "[" * 10_000 + "]" * 10_000 + "\n")
    rejected(run_cli("plan", str(flat), timeout=FAST), "deep2.yaml:1:")


def test_alias_bombs_are_refused(write):
    lines = ["x:", '  a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    path = write("lol.yaml", "\n".join(lines) + "\ngrid:\n  prompt: *a8\n")
    rejected(run_cli("plan", str(path), timeout=FAST), "lol.yaml:", "anchors and aliases")


def test_numbers_too_long_and_json_too_deep_are_refused(write):
    digits = "1" * 5000
    rejected(
        run_cli("plan", str(write("n.yaml", f"grid:\n  prompt: [a]\n  seed: [{digits}]\n")), timeout=FAST), "n.yaml:3:"
    )
    rejected(
        run_cli("plan", str(write("n.csv", f"prompt,seed\na,{digits}\nb,{digits}-200\n")), timeout=FAST),
        "n.csv:2:",
        "n.csv:3:",
    )
    deep = '"' + '{""a"":' * 5000 + "1" + "}" * 5000 + '"'
    rejected(run_cli("plan", str(write("j.csv", f"prompt,color_palette\na,{deep}\n")), timeout=FAST), "j.csv:2:")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_a_folder_and_a_missing_file_name_the_fix(tmp_path):
    rejected(run_cli("plan", str(tmp_path), timeout=FAST), "is a folder; give a .yaml, .csv or .tsv manifest")
    rejected(run_cli("plan", str(tmp_path / "nope.yaml"), timeout=FAST), "nope.yaml: no such file; check the path")
