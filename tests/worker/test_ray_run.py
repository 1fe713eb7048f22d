"""The pure parts of a Ray run (worker.ray_run): what a cluster lacks to place a job, which
rank failed first, the slots of a run. The run itself: tests/integration/test_ray_jobs.py."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")

from ray.exceptions import ActorDiedError  # noqa: E402

from mec_core.config import TrainConfig  # noqa: E402
from worker.ray_run import _slots, describe, lacking  # noqa: E402

TWO_BY_ONE = TrainConfig(dataset="synthetic", nodes=2, processes=1, batch_size=32)


def test_lacking__names_the_nodes_and_the_unit_it_needs():
    assert lacking(TWO_BY_ONE, True, [{"GPU": 1.0, "CPU": 8.0}, {"CPU": 8.0}]) == \
        "needs 2 nodes with 1 GPU each; the cluster has 1 free"
    assert lacking(TWO_BY_ONE, False, [{"CPU": 1.0}, {"CPU": 0.0}, {}]) == \
        "needs 2 nodes with 1 CPU each; the cluster has 1 free"
    assert lacking(TWO_BY_ONE, False, [{"CPU": 1.0}, {"CPU": 2.0}]) is None
    four = TWO_BY_ONE.model_copy(update={"processes": 4})
    assert lacking(four, True, [{"GPU": 4.0}, {"GPU": 3.0}]) == \
        "needs 2 nodes with 4 GPUs each; the cluster has 1 free"


def test_slots__by_node_in_the_order_of_their_lowest_rank():
    config = TWO_BY_ONE.model_copy(update={"processes": 2})
    assert _slots(config, "pending") == [
        {"node": 0, "host": None, "ranks": [0, 1], "state": "pending"},
        {"node": 1, "host": None, "ranks": [2, 3], "state": "pending"}]
    placed = [("b", "h2"), ("a", "h1"), ("b", "h2"), ("a", "h1")]
    assert _slots(config, "running", placed) == [
        {"node": 0, "host": "h2", "ranks": [0, 2], "state": "running"},
        {"node": 1, "host": "h1", "ranks": [1, 3], "state": "running"}]


def test_describe__a_lost_rank_comes_before_the_errors_that_follow_from_it():
    slots = _slots(TWO_BY_ONE, "running", [("a", "h1"), ("b", "h2")])
    failures = {0: RuntimeError("Connection closed by peer"),
                1: ActorDiedError()}
    assert describe(failures, slots).startswith(
        "rank 1 (node 1, host h2) was lost first: ActorDiedError: ")
    assert describe({1: ValueError("bad\nmore"), 0: ValueError("bad")}, slots) == \
        "rank 0 (node 0, host h1) failed first: ValueError: bad"


def test_describe__sees_the_lost_worker_inside_a_failed_health_check():
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    slots = _slots(TWO_BY_ONE, "running", [("a", "h1"), ("b", "h2")])
    failures = {1: WorkerHealthCheckFailedError("A worker health check failed.",
                                                ActorDiedError()),
                0: RuntimeError("Connection closed by peer")}
    assert describe(failures, slots).startswith(
        "rank 1 (node 1, host h2) was lost first: ActorDiedError: ")
