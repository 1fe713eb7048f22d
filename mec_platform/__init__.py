"""mec_platform: what the API and the workers share — settings, database tables and
migrations, API keys, the job state machine, the Celery app (tasks sent by name), and the
`mec` launcher. It imports mec_core and serving, never api or worker."""
