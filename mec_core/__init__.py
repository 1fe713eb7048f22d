"""mec_core: Maximum Entropy Coding (NeurIPS 2022) — loss, models, data, trainer, evaluation.

A plain library: no web, queue or database imports.
"""

__version__ = "0.1.0"
