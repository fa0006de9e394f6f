"""The README's systemd unit is hardened, and systemd's own tools say so: `systemd-analyze
verify` accepts it, and `systemd-analyze security --offline` rates its exposure 2.0 or less, with
the key passed as a credential rather than a file the service user can read."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cron import DOC_PROGRAM, option, readme_unit

SERVICE = "batch-runner-nightly.service"
MAX_EXPOSURE = 2.0


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("CI must check the unit: install systemd (it brings systemd-analyze)")
        pytest.skip("systemd-analyze is not installed: the unit's hardening was not checked")
    return found


def settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, value = line.split("=", 1)
            found.setdefault(name, []).append(value)
    return found


def unit_here(tmp_path: Path) -> Path:
    # verify wants ExecStart's program to exist: this environment's Python stands in for the .venv.
    path = tmp_path / SERVICE
    path.write_text(readme_unit(SERVICE).replace(DOC_PROGRAM, sys.executable), encoding="utf-8")
    return path


def test_the_unit_takes_the_key_as_a_credential_and_writes_only_its_output():
    unit = settings(readme_unit(SERVICE))
    for name, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert unit.get(name) == [value], name
    [credential] = unit["LoadCredential"]
    name, source = credential.split(":", 1)
    words = shlex.split(unit["ExecStart"][0])
    assert option(words, "--api-key-file") == f"%d/{name}"  # %d: the service's credentials folder
    assert source.startswith("/etc/") and not source.startswith("/srv/images")
    assert unit["ReadWritePaths"] == [str(Path(option(words, "--output")).parent)]


def test_systemd_analyze_verifies_the_unit_and_rates_it_well(tmp_path):
    tool = analyze()
    path = unit_here(tmp_path)
    verified = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stdout + verified.stderr
    rated = subprocess.run(
        [tool, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    text = rated.stdout + rated.stderr
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d)", text)
    assert level, text
    assert float(level.group(1)) <= MAX_EXPOSURE and rated.returncode == 0, text
