"""Celery workers: turn a job id into a mec_core run, with the database as the source of truth."""
