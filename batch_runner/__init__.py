"""batch_runner: turn a manifest of prompts into generated images, safely, cheaply and fast."""

from .errors import ManifestError, Problem
from .items import Item
from .manifest import Job, load_job
from .summaries import RunResults, load

__version__ = "0.1.0"

__all__ = ["Item", "Job", "ManifestError", "Problem", "RunResults", "load", "load_job", "__version__"]
