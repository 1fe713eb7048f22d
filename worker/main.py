"""Celery entry point: `celery -A worker.main worker -Q gpu --pool solo`.

`--pool solo` runs the task in the worker process itself: one training job per worker
(per GPU, with CUDA_VISIBLE_DEVICES), and a killed worker takes its job down with it, so
the lease expires and the job resumes elsewhere.
"""

from mec_platform.queue import app
from worker import runtime, tasks  # noqa: F401  (registers tasks and signal handlers)

__all__ = ["app"]
