"""The `ray start` of each node of `mec up --ray-nodes N`: the head and the nodes that join
it, each with its share of the machine (nothing is started here)."""

from mec_platform import local_ray


def test_command__the_head_serves_its_port_and_the_others_join_it(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    head, env = local_ray.command(0, 2, 16380, 17000)
    assert {"--head", "--port=16380", "--num-gpus=0",
            "--dashboard-agent-listen-port=17000"} <= set(head) and env == {}
    node, _ = local_ray.command(1, 2, 16380, 17001)
    assert "--address=127.0.0.1:16380" in node and "--head" not in node


def test_share__gpus_in_even_blocks_cpus_divided(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    monkeypatch.setattr(local_ray.os, "cpu_count", lambda: 16)
    assert [local_ray.share(n, 2) for n in (0, 1)] == [(8, ["0", "1"]), (8, ["2", "3"])]
    _, env = local_ray.command(1, 2, 16380, 17001)
    assert env == {"CUDA_VISIBLE_DEVICES": "2,3"}
    monkeypatch.setattr(local_ray.os, "cpu_count", lambda: 2)
    assert local_ray.share(2, 3) == (1, ["2"])  # at least one CPU each; GPUs 3 and 4 idle
