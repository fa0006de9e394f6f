"""The API key is resolved once (launch.resolve_key) for the command and for run(): a key file in
`.env` style, or a key holding whitespace or control characters, is refused before anything is
sent, with exit 2 and a hint; the key is never printed or saved, and nothing is booked."""

from __future__ import annotations

import pytest

import batch_runner
from batch_runner.launch import resolve_key
from tests.helpers import FAKE_KEY, manifest, run, run_cli, sandbox_with

TWO_LINES = FAKE_KEY + "\n" + FAKE_KEY[::-1]


def _nothing_happened(sb, out, *texts: str) -> None:
    assert sb.stats()["requests"] == 0
    assert not out.exists()  # no journal, no runs.jsonl: nothing booked, nothing saved
    for text in texts:
        assert FAKE_KEY not in text and FAKE_KEY[::-1] not in text


@pytest.mark.parametrize("line", [f"SEGMIND_API_KEY={FAKE_KEY}", f"export SEGMIND_API_KEY={FAKE_KEY}"])
def test_a_key_file_holding_a_name_value_line_is_a_configuration_error_with_a_hint(tmp_path, line):
    key_file = tmp_path / ".env"
    key_file.write_text(line + "\n", encoding="utf-8")
    with sandbox_with() as sb:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, ["never sent"]), out, sb, "--api-key-file", str(key_file))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"--api-key-file {key_file}: it holds a NAME=value line (SEGMIND_API_KEY=...)" in result.stderr
        assert "keep only the text after '='" in result.stderr
        _nothing_happened(sb, out, result.stdout, result.stderr)


@pytest.mark.parametrize("key", [TWO_LINES, FAKE_KEY[:10] + " " + FAKE_KEY[10:], FAKE_KEY + "\x1b[0m", "a\tb"])
def test_a_key_in_the_environment_holding_whitespace_or_control_characters_is_refused(tmp_path, key):
    with sandbox_with() as sb:
        out = tmp_path / "out"
        result = run(manifest(tmp_path, ["never sent"]), out, sb, key=key)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "$SEGMIND_API_KEY: the key holds whitespace or a control character" in result.stderr
        assert "Traceback" not in result.stderr
        _nothing_happened(sb, out, result.stdout, result.stderr)


def test_run_refuses_such_a_key_from_its_argument_naming_no_flag(tmp_path):
    with sandbox_with() as sb:
        out = tmp_path / "out"
        job = manifest(tmp_path, ["never sent"])
        with pytest.raises(batch_runner.KeyProblem) as refused:
            batch_runner.run(job, out, endpoint=sb.endpoint, api_key=TWO_LINES)
        message = str(refused.value)
        assert message.startswith("api_key: the key holds whitespace") and "--" not in message
        with pytest.raises(batch_runner.KeyProblem, match=r"api_key: it holds a NAME=value line \(KEY=\.\.\.\)"):
            batch_runner.run(job, out, endpoint=sb.endpoint, api_key=f"KEY={FAKE_KEY}")
        _nothing_happened(sb, out, message)


def test_resolve_key_takes_the_argument_then_the_file_then_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(f"  {FAKE_KEY}  \n\n", encoding="utf-8")
    env = {"SEGMIND_API_KEY": "envkey123"}
    assert resolve_key("argkey123", key_file, env) == "argkey123"
    assert resolve_key(None, key_file, env) == FAKE_KEY
    assert resolve_key(None, None, env) == "envkey123"
    assert resolve_key(None, None, {"SEGMIND_API_KEY": "padded==\n"}) == "padded=="  # base64 padding is a key
    with pytest.raises(batch_runner.KeyProblem, match="no API key: set SEGMIND_API_KEY or pass api_key="):
        resolve_key(None, None, {})


def test_the_command_without_any_key_names_its_flags(tmp_path):
    result = run_cli("run", str(manifest(tmp_path, ["x"])), "--output", str(tmp_path / "out"), env={"PATH": "/bin"})
    assert result.returncode == 2
    assert "no API key: set SEGMIND_API_KEY or pass --api-key-file FILE (or try the job for free with --sandbox)" in (
        result.stderr
    )
