"""A real Prometheus (Debian's `prometheus`) scraping a running platform every second:
the API (two server processes, their request counts merged through prometheus-client's
multiprocess files), a worker's own endpoint and TorchServe (a deployed model answering),
on PostgreSQL and Redis. The PromQL is the Grafana board's own
(docker/grafana/dashboards/mec.json)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from harness import full_platform, png

from mec_client import Client
from serving.client import Keys
from serving.torchserve import unused_port

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs Debian's prometheus (.ci/run installs it)")

BOARD = Path(__file__).parents[2] / "docker" / "grafana" / "dashboards" / "mec.json"
TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "proj_hidden_dim": 64, "pred_hidden_dim": 16, "train_limit": 128, "epochs": 1,
        "log_every": 2}


def board_queries() -> dict[str, list[str]]:
    """{panel title: its PromQL expressions}."""
    board = json.loads(BOARD.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in board["panels"]}


class Prometheus:
    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10)

    def query(self, expr: str) -> dict[tuple, float]:
        """{sorted label pairs: value} of an instant query."""
        answer = self.client.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", answer
        return {tuple(sorted(r["metric"].items())): float(r["value"][1])
                for r in answer["data"]["result"]}

    def until(self, expr: str, expected, timeout: float = 30):
        """Query until `expected(result)` holds (Prometheus scrapes every second)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if expected(result):
                return result
            assert time.monotonic() < deadline, f"{expr} -> {result}"
            time.sleep(0.5)


@contextmanager
def prometheus_server(root: Path, targets: dict[str, str]):
    """A Prometheus on a free port with a temporary config and storage, scraping each
    job's target every second."""
    root.mkdir(parents=True)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                 for job, target in targets.items()]}
    (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = unused_port()
    log = open(root / "prometheus.log", "wb")  # noqa: SIM115  (owned by the process)
    proc = subprocess.Popen(["prometheus", f"--config.file={root / 'prometheus.yml'}",
                             f"--storage.tsdb.path={root / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready after 60 s"
            time.sleep(0.3)
        yield Prometheus(url)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()



def by(result: dict, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in result.items()}


def test_prometheus__jobs_by_status_queue_depth_and_request_rate_from_the_board(tmp_path):
    panels = board_queries()
    [jobs_by_status] = panels["Jobs by status"]
    [queue_depth] = panels["Queue depth"]
    [request_rate] = panels["API requests by route and status"]
    [worker_rss] = panels["Worker memory (RSS)"]
    [ts_latency] = panels["TorchServe latency per request"]
    [ts_queue] = panels["TorchServe queue time per request"]
    deployments = panels["Deployments and galleries"][0]
    worker_port = unused_port()
    multiproc = tmp_path / "api-metrics"
    multiproc.mkdir()
    api_env = {"WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    with full_platform(tmp_path / "platform", "postgres+redis", api_env,
                       MEC_WORKER_METRICS_PORT=str(worker_port)) as plat, \
            prometheus_server(tmp_path / "prometheus", {
                "api": plat.url.removeprefix("http://"),
                "workers": f"127.0.0.1:{worker_port}",
                "torchserve": plat.torchserve.metrics_url.removeprefix("http://")}) as prom:
        prom.until('up{job=~"api|workers|torchserve"}',
                   lambda r: by(r, "job") == {"api": 1, "workers": 1, "torchserve": 1})

        # a job runs on the worker, which counts it; its memory is on the board
        done = plat.post("/v1/jobs", {"kind": "pretrain", "name": "watched", "config": TINY})
        plat.wait_status(done["id"], ("succeeded",))
        prom.until('mec_worker_jobs_total{kind="pretrain"}',
                   lambda r: by(r, "status") == {"succeeded": 1})
        assert all(v > 50e6 for v in prom.query(worker_rss).values())

        # deployed, its model answers through TorchServe, whose own counters are scraped
        client = Client(plat.url, plat.key)
        model = next(m for m in client.models().data if m.job_id == done["id"])
        deploy = client.wait(client.deploy(model.id, workers=1).id, timeout=240, poll=0.5)
        assert deploy.status == "succeeded", deploy.error
        served = {"Authorization": f"Bearer {Keys.read(plat.torchserve.home).inference}"}
        for burst in range(3):
            if burst:
                time.sleep(2.5)  # scrapes between the bursts: the counters' rate is seen
            for seed in range(4):
                answer = httpx.post(f"{plat.torchserve.inference_url}/predictions/"
                                    f"mec-{model.id}", content=png(seed), headers=served)
                assert answer.status_code == 200, answer.text
        name = f"mec-{model.id}"
        prom.until(ts_latency, lambda r: by(r, "model_name").get(name, 0) > 0, timeout=60)
        prom.until(ts_queue, lambda r: by(r, "model_name").get(name, -1) >= 0)  # not NaN
        prom.until(deployments, lambda r: by(r, "state") == {"serving": 1})

        # without a worker, two more wait on the gpu queue
        plat.workers["w1"].terminate()
        plat.workers["w1"].wait(60)
        waiting = [plat.post("/v1/jobs", {"kind": "pretrain", "config": TINY})["id"]
                   for _ in range(2)]
        assert all(plat.get(f"/v1/jobs/{i}")["status"] == "queued" for i in waiting)
        prom.until(jobs_by_status, lambda r: by(r, "status") == {"succeeded": 2, "queued": 2})
        prom.until(queue_depth, lambda r: by(r, "queue") == {"gpu": 2, "cpu": 0})

        # requests by route template, counted across both API processes
        route = {"handler": "/v1/jobs/{job_id}", "method": "GET", "status": "2xx"}
        counter = "sum(http_requests_total{" + ",".join(f'{k}="{v}"' for k, v in
                                                       route.items()) + "})"
        time.sleep(2.5)  # the polls above are scraped
        [before] = prom.until(counter, lambda r: len(r) == 1).values()
        for _ in range(40):  # a connection each: the two API processes share them out
            plat.get(f"/v1/jobs/{waiting[0]}", headers={"Connection": "close"})
        [after] = prom.until(counter, lambda r: sum(r.values()) >= before + 40).values()
        assert after == before + 40  # both API processes' requests, each counted once
        assert len({f.stem.rsplit("_", 1)[1] for f in multiproc.glob("counter_*.db")}) == 2
        rate = prom.until(request_rate, lambda r: any(
            dict(labels)["handler"] == route["handler"] and v > 0 for labels, v in r.items()))
        assert {dict(labels)["status"] for labels in rate} >= {"2xx"}
