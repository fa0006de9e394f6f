"""Tests for batch_runner. A package, so that `from tests.helpers import ...` works under plain `pytest`."""
