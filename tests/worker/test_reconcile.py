"""What the reconciler counts as held, on the real Redis: messages waiting in a queue, not
those delivered to a worker that never acknowledged them (a worker killed between delivery
and claim leaves its message there for the 12-hour visibility timeout)."""

from __future__ import annotations

import json
import os

import redis

from worker.reconcile import held_job_ids

# The last of this checkout's test databases (tests/integration/harness.py): no platform
# holds it while worker tests run.
URL = f"redis://127.0.0.1:6379/{os.environ.get('MEC_TEST_REDIS_DBS', '7,15').split(',')[-1]}"


def _message(job_id: int) -> str:
    return json.dumps({"body": json.dumps([[job_id], {}, {}]), "properties": {}})


def test_held__waiting_messages_count_delivered_unacknowledged_ones_do_not():
    client = redis.Redis.from_url(URL)
    client.flushdb()
    try:
        client.lpush("gpu", _message(7))
        client.lpush("cpu\x06\x163", _message(8))  # a priority step of the cpu queue
        client.hset("unacked", "tag-1", json.dumps([json.loads(_message(9)), "", "gpu"]))
        assert held_job_ids(URL) == {7, 8}
    finally:
        client.flushdb()
        client.close()
