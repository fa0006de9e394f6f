"""batch_runner: turn a manifest of prompts into generated images, safely, cheaply and fast."""

from batch_runner.errors import ManifestError, Problem
from batch_runner.job.items import Item
from batch_runner.job.manifest import Job, load_job

__version__ = "0.1.0"

__all__ = ["Item", "Job", "ManifestError", "Problem", "RunResults", "load", "load_job", "__version__"]


def __getattr__(name: str):
    # load() needs pandas; importing it lazily keeps `batch-runner plan` quick to start.
    if name in ("load", "RunResults"):
        from batch_runner.results import summaries

        return getattr(summaries, name)
    raise AttributeError(f"module 'batch_runner' has no attribute {name!r}")
