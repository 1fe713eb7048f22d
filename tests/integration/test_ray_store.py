"""A job of 2 nodes on a real Ray cluster whose nodes share no disk with each other nor with
the worker that drives the run: each node's processes have a folder of their own (the
node's MEC_DATA_DIR, as a host's own settings are), the API and the worker others, and
they share only PostgreSQL, Redis and an S3 server (SeaweedFS). The node of rank 1 is
replaced mid-run by a new node on an empty folder: every rank resumes from the checkpoint
in the store, the job succeeds with each step's metrics once, and the model's checkpoint
and export are in the store, read from there by an evaluation."""

from __future__ import annotations

import re

import pytest
from harness import s3_platform
from test_multiprocess import TINY, _losses

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow  # about 2 minutes on 2 cores: `make test-slow`


def _node(folder) -> dict:
    return {"num_cpus": 1, "object_store_memory": 80 * 2**20,
            "env_vars": {"MEC_DATA_DIR": str(folder)}}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("ray-hosts")
    cluster = Cluster(initialize_head=True,
                      head_node_args=_node(root / "node-0") | {"include_dashboard": False})
    cluster.spare = cluster.add_node(**_node(root / "node-1"))
    cluster.wait_for_nodes()
    try:
        with s3_platform(root, s3_server, MEC_RAY_ADDRESS=cluster.address) as plat:
            plat.cluster = cluster
            plat.start_api(MEC_DATA_DIR=str(root / "api"))
            plat.start_worker("w1", MEC_DATA_DIR=str(root / "w1"))
            yield plat
    finally:
        cluster.shutdown()


def test_a_node_replaced_mid_run_resumes_from_the_store_with_no_disk_shared(hosts,
                                                                             s3_server):
    plat, root = hosts, hosts.root
    job = plat.post("/v1/jobs", {"kind": "pretrain", "name": "two-hosts", "queue": "gpu",
                                 "config": TINY | {"max_steps": 40, "epochs": 6, "nodes": 2,
                                                   "processes": 1, "log_every": 1,
                                                   "checkpoint_every": 10}})
    plat.wait_for(lambda: (plat.get(f"/v1/jobs/{job['id']}")["checkpoint"] or "")
                  .startswith("s3://"), 240, "a checkpoint in the store")
    plat.cluster.remove_node(plat.cluster.spare)  # its folder goes with it
    plat.cluster.spare = plat.cluster.add_node(**_node(root / "node-2"))
    done = plat.wait_status(job["id"], ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["checkpoint"].endswith("step_00000040.pt")
    assert _losses(plat, job["id"])["steps"] == list(range(1, 41))  # each step's once

    lines = [line["line"] for line in plat.get(f"/v1/jobs/{job['id']}/logs")["lines"]]
    # the new node's rank brought the checkpoint from the store, and both resumed from it
    brought = [m[1] for line in lines
               if (m := re.search(r"resuming from s3://\S+/step_(\d+)\.pt, brought", line))]
    resumed = {m[1] for line in lines if (m := re.search(r"resumed from \S+step_(\d+)", line))}
    assert brought and len(resumed) == 1 and resumed == {brought[0]}, lines[-40:]

    listed = s3_server.s3().list_objects_v2(Bucket=plat.bucket,
                                            Prefix=f"platform/jobs/{job['id']}/")
    stored = {o["Key"].rpartition("/")[2] for o in listed["Contents"]}
    assert {"step_00000040.pt", "outcome.json"} <= stored, stored
    model = next(m for m in plat.get("/v1/models")["data"] if m["job_id"] == job["id"])
    assert all(ref.startswith("s3://") for ref in model["artifacts"].values()), model
    # the nodes of the last run (node-1 was lost with its disk) and the worker keep no
    # copy of the job's checkpoints once the store holds the last
    for node in ("node-0", "node-2", "w1"):
        assert not list((root / node).rglob("step_*.pt")), node
    evaluation = plat.post("/v1/jobs", {"kind": "evaluate", "name": "two-hosts-knn", "config":
                                        {"job_id": job["id"], "protocol": "knn"}})
    done = plat.wait_status(evaluation["id"], ("succeeded", "failed"), timeout=240)
    assert done["status"] == "succeeded", done["error"]
