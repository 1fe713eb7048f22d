"""Keep the lease of a running job alive from a background thread."""

from __future__ import annotations

import threading

from mec_platform import jobs
from mec_platform.db import session_scope
from worker.prometheus import LEASE_RENEWALS


class LeaseKeeper:
    """Renews the lease every `every` seconds while the job runs; `lost` turns true when
    the job stops being ours (another worker reaped it after a stall)."""

    def __init__(self, job_id: int, owner: str, lease_seconds: float, every: float) -> None:
        self.job_id, self.owner = job_id, owner
        self.lease_seconds, self.every = lease_seconds, every
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.every):
            try:
                with session_scope() as s:
                    if not jobs.renew(s, self.job_id, self.owner, self.lease_seconds):
                        self.lost = True
                        LEASE_RENEWALS.labels("lost").inc()
                        return
                LEASE_RENEWALS.labels("renewed").inc()
            except Exception:  # the database may be down for a moment; try next beat
                LEASE_RENEWALS.labels("error").inc()
                continue

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
