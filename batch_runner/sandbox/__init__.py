"""A local stand-in for Segmind's Ideogram Turbo endpoint, for tests, benchmarks and trials."""

from batch_runner.sandbox.api import DEFAULT_KEY, V1_PATH, V2_PATH, SandboxConfig
from batch_runner.sandbox.server import Sandbox

__all__ = ["DEFAULT_KEY", "V1_PATH", "V2_PATH", "Sandbox", "SandboxConfig"]
