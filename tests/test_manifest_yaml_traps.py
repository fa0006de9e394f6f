"""Issue 19 item 7: a YAML trap gets a message that shows the quoting that fixes it, and every
bad palette member and grid value is reported at once. Through the real CLI: exit 2, the file,
the line and the fix, and nothing sent."""

from __future__ import annotations

import pytest

from tests.helpers import run, run_cli
from tests.test_input_honesty import rejected

FAST = 30


@pytest.mark.parametrize("word", ["ON", "OFF", "on", "Off"])
def test_an_unquoted_on_or_off_says_to_quote_it(write, word):
    path = write("j.yaml", f"grid:\n  prompt: [a dog]\n  magic_prompt_option: [{word}]\n")
    shown = word.upper()
    rejected(
        run_cli("plan", str(path), timeout=FAST),
        f"j.yaml:3: magic_prompt_option: YAML reads an unquoted {shown} as",
        f'write it in quotes: magic_prompt_option: "{shown}"',
    )


def test_a_quoted_on_is_sent(write, tmp_path, sandbox):
    path = write("j.yaml", 'grid:\n  prompt: [a dog]\n  magic_prompt_option: ["ON", "OFF"]\n')
    result = run(path, tmp_path / "out", sandbox)
    assert result.returncode == 0, result.stderr
    assert sandbox.stats()["billed"] == 2


def test_an_unquoted_hex_colour_in_a_block_names_its_own_line_and_the_quoting(write, tmp_path, sandbox):
    path = write(
        "j.yaml",
        "grid:\n  prompt: [a dog]\ndefaults:\n  color_palette:\n    members:\n"
        '      - color_hex: "#00FF00"\n      - color_hex: #FF0000\n',
    )
    rejected(
        run(path, tmp_path / "out", sandbox),
        "j.yaml:7: color_palette member 2 color_hex: an unquoted #FF0000 starts a YAML comment, so the colour is "
        'lost; quote it: color_hex: "#FF0000"',
    )
    assert sandbox.stats()["received"] == 0


def test_an_unquoted_hex_colour_in_a_flow_mapping_names_a_line_inside_the_file(write):
    text = "grid:\n  prompt: [a dog]\ndefaults:\n  color_palette: {members: [{color_hex: #FF0000}]}\n"
    path = write("j.yaml", text)
    stderr = rejected(
        run_cli("plan", str(path), timeout=FAST),
        "j.yaml:4: broken YAML: an unquoted #FF0000 starts a comment, which cuts the line short; "
        'quote the colour: "#FF0000"',
    )
    assert "j.yaml:5" not in stderr  # the file has 4 lines


def test_a_broken_file_never_blames_a_line_past_its_end(write):
    path = write("j.yaml", "grid:\n  prompt: [a dog\n")
    stderr = rejected(run_cli("plan", str(path), timeout=FAST), "broken YAML")
    assert "j.yaml:3" not in stderr


@pytest.mark.parametrize("key", ["prompt", "negative_prompt"])
def test_a_prompt_holding_colon_space_says_to_quote_it(write, key):
    path = write("j.yaml", f"defaults:\n  prompt: a cat\ngrid:\n  {key}:\n    - a sign that says: hello\n")
    if key == "prompt":
        path = write("j.yaml", "grid:\n  prompt:\n    - a sign that says: hello\n")
    line = 5 if key == "negative_prompt" else 3
    stderr = rejected(
        run_cli("plan", str(path), timeout=FAST),
        f"j.yaml:{line}: {key} 'a sign that says: hello' was read by YAML as a key and a value",
        f'quote the whole {key}: "a sign that says: hello"',
    )
    assert "_LineDict" not in stderr


def test_every_bad_palette_member_is_reported(write):
    path = write(
        "j.yaml",
        "grid:\n  prompt: [a dog]\ndefaults:\n  color_palette:\n    members: "
        '[{color_hex: red}, {color_hex: "#fff"}, {color_hex: blue}, {color_hex: "#000", color_weight: 3}]\n',
    )
    stderr = rejected(
        run_cli("plan", str(path), timeout=FAST),
        "color_palette member 1 color_hex 'red' is not a colour",
        "color_palette member 3 color_hex 'blue' is not a colour",
        "color_palette member 4 color_weight 3 is out of range",
    )
    assert "member 2" not in stderr


def test_a_key_in_defaults_and_grid_still_has_its_grid_values_checked(write):
    path = write("j.yaml", "defaults:\n  style_type: GENERAL\ngrid:\n  prompt: [a dog]\n  style_type: [FOO, anime]\n")
    rejected(
        run_cli("plan", str(path), timeout=FAST),
        "j.yaml:5: style_type is both in defaults: and grid:; remove it from one of them",
        "style_type 'FOO' is not valid",
        "style_type 'anime' is not valid; did you mean ANIME?",
    )
