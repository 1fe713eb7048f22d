"""This worker's own Prometheus endpoint (MEC_WORKER_METRICS_PORT): the jobs it ran and
how they ended, failures by reason, lease renewals, its current job, the process's
memory and CPU (prometheus-client's process collector: `process_resident_memory_bytes`),
and its GPUs' utilisation, memory and power (NVML, where there is one).

Pulled, not pushed through the API: a dead worker then shows as a failed scrape (`up ==
0`) instead of as stale figures, and the API keeps no state per worker. With `--pool
solo` the tasks run in the worker's own process, so one registry holds everything; the
training processes of a multi-process job are children whose memory is not counted here.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mec_core.system import device_figures

JOBS = Counter("mec_worker_jobs", "Jobs this worker ran to an end, by kind and the status "
               "it gave them (queued: handed back).", ["kind", "status"])
FAILURES = Counter("mec_worker_job_failures", "Jobs this worker failed, by kind and reason "
                   "(the error's type).", ["kind", "reason"])
LEASE_RENEWALS = Counter("mec_worker_lease_renewals", "Renewals of the running job's lease, "
                         "by result (renewed, lost to another owner, error: the database "
                         "did not answer).", ["result"])
CURRENT_JOB = Gauge("mec_worker_current_job", "Id of the job this worker runs (0: idle).")
INFO = Gauge("mec_worker_info", "1 per worker, labelled with its name, queues and device.",
             ["name", "queues", "device"])


class GpuCollector(Collector):
    """The GPUs this worker's host (or container) has, read from NVML at each scrape:
    utilisation, memory used and power, by GPU index; nothing without NVML."""

    FAMILIES = (("util_percent", "mec_worker_gpu_utilization_percent", "GPU utilisation."),
                ("memory_used_bytes", "mec_worker_gpu_memory_used_bytes", "GPU memory used "
                 "(all processes)."),
                ("power_w", "mec_worker_gpu_power_watts", "GPU power draw."))

    def collect(self) -> Iterator[Metric]:
        gpus = device_figures()
        for key, name, doc in self.FAMILIES:
            family = GaugeMetricFamily(name, doc, labels=["gpu"])
            for gpu in gpus:
                if key in gpu:
                    family.add_metric([str(int(gpu["index"]))], gpu[key])
            yield family


def serve(port: int, host: str, name: str, queues: list[str], device: str) -> int:
    """Start the endpoint in a background thread; returns the port it listens on (`port`
    0: a free one)."""
    INFO.labels(name, ",".join(queues), device).set(1)
    REGISTRY.register(GpuCollector())
    server, _thread = start_http_server(port, addr=host)
    return server.server_port
