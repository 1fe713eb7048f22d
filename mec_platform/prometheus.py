"""The platform's figures for Prometheus, read from the database and the broker when
Prometheus scrapes (nothing is kept in memory between scrapes, so every API process
answers the same and a restart loses nothing): jobs by status, queue and kind, queue
depths, job durations and waits, live workers, deployments, gallery sizes.

Each family is one grouped query; the histograms count their buckets in SQL, so a scrape
reads a few rows whatever the number of jobs (docs/performance.md, "Monitoring").
"""

from __future__ import annotations

from collections.abc import Iterator

from kombu.exceptions import ChannelError
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from mec_platform import workers
from mec_platform.jobs import FINISHED
from mec_platform.queue import Queue, app
from mec_platform.tables import Gallery, GalleryItem, Job, Model

# seconds; jobs run from seconds (evaluations) to days (pretraining)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _seconds(session: Session, start, end):
    """SQL for `end - start` in seconds on the session's database."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _job_families(session: Session) -> Iterator[Metric]:
    """`mec_jobs` by status, queue and kind, and the histograms of run time (finished
    jobs, last start to end) and wait (started jobs, enqueued to last start) by queue and
    kind, from one scan of the jobs: a grouped query over a materialized CTE that computes
    each job's two durations once (SQLite would otherwise parse the timestamps again for
    every bucket); each bucket is a SUM, added up over the statuses here."""
    per_job = select(Job.status, Job.queue, Job.kind,
                     case((Job.status.in_(FINISHED),
                           _seconds(session, Job.started_at, Job.finished_at))).label("run"),
                     _seconds(session, Job.enqueued_at, Job.started_at).label("wait")) \
        .cte("per_job").prefix_with("MATERIALIZED")
    columns = [func.count()]
    for seconds, buckets in ((per_job.c.run, DURATION_BUCKETS), (per_job.c.wait, WAIT_BUCKETS)):
        columns += [func.count(seconds), func.sum(seconds)]
        columns += [func.sum(case((seconds <= b, 1), else_=0)) for b in buckets]
    jobs = GaugeMetricFamily("mec_jobs", "Jobs by status, queue and kind.",
                             labels=["status", "queue", "kind"])
    # (queue, kind) -> [count, sum, bucket counts...] of each histogram, over all statuses
    run: dict[tuple[str, str], list[float]] = {}
    wait: dict[tuple[str, str], list[float]] = {}
    for status, queue, kind, n, *values in session.execute(
            select(per_job.c.status, per_job.c.queue, per_job.c.kind, *columns)
            .group_by(per_job.c.status, per_job.c.queue, per_job.c.kind)):
        jobs.add_metric([status, queue, kind], n)
        split = len(DURATION_BUCKETS) + 2
        for into, part in ((run, values[:split]), (wait, values[split:])):
            total = into.setdefault((queue, kind), [0.0] * len(part))
            into[(queue, kind)] = [a + float(b or 0) for a, b in zip(total, part)]
    yield jobs
    for name, doc, figures, buckets in (
            ("mec_job_duration_seconds", "Run time of finished jobs (last start to end).",
             run, DURATION_BUCKETS),
            ("mec_job_wait_seconds", "Time started jobs waited in their queue (enqueued to "
             "last start).", wait, WAIT_BUCKETS)):
        family = HistogramMetricFamily(name, doc, labels=["queue", "kind"])
        for (queue, kind), (n, total, *cumulative) in sorted(figures.items()):
            if n:
                family.add_metric([queue, kind], [(str(float(b)), int(c)) for b, c in
                                                  zip(buckets, cumulative)]
                                  + [("+Inf", int(n))], total)
        yield family


def queue_depths() -> dict[str, int]:
    """Messages waiting on each broker queue (Redis: all its priority lists; the embedded
    broker: its visible rows), read on a fresh connection so the count is current."""
    depths = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for queue in Queue:
            try:
                depths[queue.value] = channel.queue_declare(queue=queue.value,
                                                            passive=True).message_count
            except ChannelError:  # Redis: a queue that never held a message has no key
                depths[queue.value] = 0
    return depths


class PlatformCollector(Collector):
    """The `mec_` families, computed from `session` (and the broker) at collect time."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        s = self.session
        yield from _job_families(s)

        depth = GaugeMetricFamily("mec_queue_depth", "Messages waiting on each broker queue.",
                                  labels=["queue"])
        for queue, n in queue_depths().items():
            depth.add_metric([queue], n)
        yield depth

        live = workers.live(s)
        count = GaugeMetricFamily("mec_workers", "Live workers taking each queue.",
                                  labels=["queue"])
        capacity = GaugeMetricFamily("mec_worker_processes", "Training processes the live "
                                     "workers of each queue can run, summed.", labels=["queue"])
        busy = GaugeMetricFamily("mec_workers_busy", "Live workers running a job, by queue.",
                                 labels=["queue"])
        for queue in sorted({q for w in live for q in w.queues} | set(Queue)):
            mine = [w for w in live if queue in w.queues]
            count.add_metric([queue], len(mine))
            capacity.add_metric([queue], sum(w.processes for w in mine))
            busy.add_metric([queue], sum(w.current_job is not None for w in mine))
        yield from (count, capacity, busy)

        deployments = GaugeMetricFamily("mec_deployments", "Models by deployment state.",
                                        labels=["state"])
        states: dict[str, int] = {}
        for (deployment,) in s.execute(select(Model.deployment)
                                       .where(Model.deployment.is_not(None))):
            if deployment is not None:  # JSON null
                states[deployment.status] = states.get(deployment.status, 0) + 1
        for state, n in sorted(states.items()):
            deployments.add_metric([state], n)
        yield deployments

        items = GaugeMetricFamily("mec_gallery_items", "Items (with a vector) of each "
                                  "gallery.", labels=["project", "gallery"])
        for project, name, n in s.execute(
                select(Gallery.project, Gallery.name, func.count(GalleryItem.id))
                .outerjoin(GalleryItem, (GalleryItem.gallery_id == Gallery.id)
                           & GalleryItem.vector.is_not(None))
                .group_by(Gallery.id, Gallery.project, Gallery.name)):
            items.add_metric([project, name], n)
        yield items
