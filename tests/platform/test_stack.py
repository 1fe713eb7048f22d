"""What `mec up` prints: the URLs of its parts, the three Prometheus endpoints among them,
and the ports it gives them (nothing is started here)."""

from mec_platform.stack import Ports, Stack


def test_stack_urls__list_the_metrics_endpoints_of_api_worker_and_torchserve(tmp_path):
    urls = Stack(tmp_path, Ports(18000, 18080, 18081, 18082, 19808)).urls()
    assert urls["metrics"] == "http://127.0.0.1:18000/metrics"
    assert urls["worker_metrics"] == "http://127.0.0.1:19808/metrics"
    assert urls["torchserve_metrics"] == "http://127.0.0.1:18082/metrics"


def test_ports_any_free__five_distinct_ports():
    ports = Ports.any_free()
    assert len(set(vars(ports).values())) == 5
