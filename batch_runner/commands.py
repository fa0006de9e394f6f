"""Subcommands beyond `plan`, registered with the CLI."""

from __future__ import annotations

REGISTER: list = []
