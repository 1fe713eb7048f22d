"""What `mec up` prints: the URLs of its parts, the three Prometheus endpoints among them,
and the ports it gives them (nothing is started here)."""

from mec_platform.stack import Ports, Stack


def test_stack_urls__list_the_metrics_endpoints_of_api_worker_and_torchserve(tmp_path):
    urls = Stack(tmp_path, Ports(18000, 18080, 18081, 18082, 19808)).urls()
    assert urls["metrics"] == "http://127.0.0.1:18000/metrics"
    assert urls["worker_metrics"] == "http://127.0.0.1:19808/metrics"
    assert urls["torchserve_metrics"] == "http://127.0.0.1:18082/metrics"


def test_ports_any_free__six_distinct_ports():
    ports = Ports.any_free()
    assert len(set(vars(ports).values())) == 6


def test_stack_with_ray_nodes__points_its_processes_at_the_head_and_lists_it(tmp_path):
    stack = Stack(tmp_path, Ports(ray=16380), ray_nodes=2)
    assert stack.names() == ["ray-0", "ray-1", "torchserve", "api", "worker"]
    assert stack.env["MEC_RAY_ADDRESS"] == stack.urls()["ray"] == "127.0.0.1:16380"
    assert "MEC_RAY_ADDRESS" not in Stack(tmp_path / "plain", Ports()).env
