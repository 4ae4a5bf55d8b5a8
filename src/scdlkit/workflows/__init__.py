"""Workflows on top of the scverse layer: :class:`TaskRunner` and :func:`compare_models`.

Beginner objects built on the one training path (:mod:`scdlkit.pipeline`):
the runner trains, scores, plots, reports and saves one model without writing
into the data; ``compare_models`` trains several on one shared split and
scores them next to baselines. Nothing below this package imports it.
"""

from .compare import compare_models
from .runner import TaskRunner

__all__ = ["TaskRunner", "compare_models"]
