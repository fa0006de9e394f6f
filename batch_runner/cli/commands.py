"""Subcommands beyond `plan`, registered with the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from batch_runner.cli.report import register_export, register_recipe, register_report
from batch_runner.cli.run import register_run, register_status
from batch_runner.cli.sandbox import register as register_sandbox

REGISTER: list[Callable[[argparse._SubParsersAction], None]] = [
    register_run,
    register_status,
    register_report,
    register_export,
    register_recipe,
    register_sandbox,
]
