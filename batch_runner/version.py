"""The package's one version string (read by pyproject.toml, `--version`, runs.jsonl and dataset cards)."""

__version__ = "0.1.0"
