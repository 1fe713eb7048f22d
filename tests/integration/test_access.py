"""API keys and the submission rate limit, against the real API process."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from test_jobs import TINY

from api.deps import ROW_CACHE_SECONDS


def test_every_route_but_health_needs_a_key(platform):
    anonymous = httpx.Client(base_url=platform.url, timeout=30)
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/jobs/1"), ("GET", "/v1/models"),
                         ("GET", "/v1/workers"), ("POST", "/v1/jobs"),
                         ("POST", "/v1/jobs/1/cancel"), ("POST", "/v1/models/1/deploy")]:
        r = anonymous.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer mec_not-a-real-key"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown API key"


def test_a_revoked_key_gets_403(platform):
    key = platform.new_key("short-lived")
    client = httpx.Client(base_url=platform.url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"})
    assert client.get("/v1/jobs").status_code == 200
    subprocess.run([sys.executable, "-m", "mec_client", "keys", "revoke", key[:12]],
                   env=platform.env, check=True, capture_output=True)
    revoked = time.monotonic()
    while (r := client.get("/v1/jobs")).status_code == 200:
        assert time.monotonic() - revoked < ROW_CACHE_SECONDS + 0.5, "the key still works"
        time.sleep(0.05)
    assert r.status_code == 403 and "was revoked" in r.json()["detail"]


def _as(platform, key: str) -> httpx.Client:
    return httpx.Client(base_url=platform.url, timeout=30,
                        headers={"Authorization": f"Bearer {key}"})


def test_scoped_keys_and_projects_from_the_command_line(platform):
    team = _as(platform, platform.new_key("team-a", "--project", "team-a"))
    app_key = _as(platform, platform.new_key("shop", "--scope", "embed", "--project", "team-a"))
    reader = _as(platform, platform.new_key("b-reader", "--scope", "jobs:read",
                                            "--project", "team-b"))
    admin = _as(platform, platform.new_key("ops", "--scope", "admin"))
    job = team.post("/v1/jobs", json={"kind": "pretrain", "config": TINY | {"max_steps": 1},
                                      "queue": "cpu", "name": "team-a run"}).json()
    r = app_key.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 403 and "lacks the scope 'jobs:write'" in r.json()["detail"]
    assert app_key.get("/v1/jobs").status_code == 403
    assert reader.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert reader.post("/v1/jobs", json={"kind": "pretrain", "config": TINY}).status_code == 403
    assert admin.get(f"/v1/jobs/{job['id']}").json()["name"] == "team-a run"
    assert team.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 409)
    audit = admin.get("/v1/audit", params={"project": "team-a"}).json()["data"]
    assert {(e["action"], e["status"]) for e in audit} >= {
        ("POST /v1/jobs", 201), ("POST /v1/jobs/{job_id}/cancel", 403)}
    bad = subprocess.run([sys.executable, "-m", "mec_client", "keys", "create", "--name",
                          "x", "--project", "Team A"], env=platform.env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--project" in bad.stderr and "project name" in bad.stderr
    listed = subprocess.run([sys.executable, "-m", "mec_client", "keys", "list"],
                            env=platform.env, capture_output=True, text=True, check=True)
    assert any("team-b" in line and "jobs:read" in line and "b-reader" in line
               for line in listed.stdout.splitlines())


def test_submissions_are_rate_limited_per_key_with_retry_after(platform):
    key = platform.new_key("burst")
    client = httpx.Client(base_url=platform.url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"})
    spec = {"kind": "pretrain", "config": TINY | {"max_steps": 1}}
    codes, created = [], []
    for _ in range(25):  # the fixture allows bursts of 20
        r = client.post("/v1/jobs", json=spec)
        codes.append(r.status_code)
        if r.status_code == 201:
            created.append(r.json()["id"])
        else:
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    for job_id in created:  # do not leave 20 jobs for the worker
        client.post(f"/v1/jobs/{job_id}/cancel")
    # a burst of 20, then refused; at 6 per minute at most one token refills meanwhile
    assert codes[:20] == [201] * 20 and codes[20:].count(429) >= 4
    other = platform.client.get("/v1/jobs")  # another key is not limited
    assert other.status_code == 200


def test_idempotency_key_gives_one_job(platform):
    spec = {"kind": "pretrain", "config": TINY | {"max_steps": 1}}
    first = platform.client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "abc-1"})
    again = platform.client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    platform.client.post(f"/v1/jobs/{first.json()['id']}/cancel")


def test_idempotency_key_sent_concurrently_still_gives_one_job(platform):
    spec = {"kind": "pretrain", "config": TINY | {"max_steps": 1}}
    headers = {"Idempotency-Key": "race-1", "Authorization": f"Bearer {platform.key}"}

    def submit(_):
        with httpx.Client(base_url=platform.url, timeout=30) as client:
            return client.post("/v1/jobs", json=spec, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(submit, range(8)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in answers}) == 1
    platform.client.post(f"/v1/jobs/{answers[0].json()['id']}/cancel")
    empty = platform.client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": ""})
    assert empty.status_code == 422 and "idempotency-key" in empty.json()["detail"]
