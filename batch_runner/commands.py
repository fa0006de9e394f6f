"""Subcommands beyond `plan`, registered with the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .sandbox_command import register as register_sandbox

REGISTER: list[Callable[[argparse._SubParsersAction], None]] = [register_sandbox]
