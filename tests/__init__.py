"""Tests for batch_runner. A package, so that `from tests.conftest import ...` works under plain `pytest`."""
