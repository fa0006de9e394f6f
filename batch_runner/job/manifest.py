"""Read a job manifest (YAML or CSV/TSV) into a validated Job that streams its items.

The parts, in the order a manifest meets them: files.py (reading a text file safely),
yaml_lines.py / tables.py (YAML with line numbers; the strict CSV/TSV reader), yaml_manifest.py /
csv_manifest.py (the two kinds of manifest), and what both use: reader.py (collecting problems),
values.py (value files, text cells typed), seeds.py, templates.py, columns.py (metadata column
names), and blocks.py (the Job, whose blocks expand into items).
"""

from __future__ import annotations

import os
from pathlib import Path

from batch_runner.errors import ManifestError, Problem
from batch_runner.job.blocks import MAX_ITEMS, Axis, Job
from batch_runner.job.columns import clash_reason
from batch_runner.job.csv_manifest import CsvManifest
from batch_runner.job.files import display, file_problem, read_text
from batch_runner.job.yaml_manifest import TOP_LEVEL_KEYS, YamlManifest

__all__ = ["MAX_ITEMS", "TOP_LEVEL_KEYS", "Axis", "Job", "clash_reason", "load_job"]


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a manifest; raise ManifestError listing every problem found."""
    path = Path(path)
    shown = display(path)
    if problem := file_problem(path, "a .yaml, .csv or .tsv manifest"):
        raise ManifestError([Problem(shown, None, problem)])
    text = read_text(path, shown)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return CsvManifest(path, shown, text).job()
    if suffix in (".yaml", ".yml", ".json"):
        return YamlManifest(path, shown, text).job()
    raise ManifestError([Problem(shown, None, "unknown manifest type; use .yaml, .yml, .csv or .tsv")])
