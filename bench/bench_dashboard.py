"""How long the dashboard's pages take to show their content, in headless Chromium, with
1,000 jobs in the table and one job of 100,000 metric points.

    python bench/bench_dashboard.py [--jobs 1000] [--points 100000] [--repeats 5] [--json]
    python bench/bench_dashboard.py --report docs/performance/dashboard/*.json

An embedded platform's database (SQLite) in a temporary directory is filled directly (jobs
of every status; one job with 10 series of points/10 steps), the API runs as its own
process (uvicorn), and Chromium (Debian's, through Selenium) logs in with a key, then
loads each page `repeats` times: the time from navigation to the page's content on screen
(rows, charts with their points, the generated form), median and range.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import records
from bench_api_load import start_api
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import insert
from sqlalchemy.orm import Session

from mec_platform import keys
from mec_platform.db import make_engine
from mec_platform.migrate import upgrade
from mec_platform.tables import Job, Metric, Model, utcnow

STATUSES = ("succeeded", "failed", "cancelled", "running", "queued")
SERIES = ("loss", "coding_length", "spectral_norm", "lr", "lambda_inv", "knn_top1",
          "effective_rank", "images_per_sec", "time_forward", "time_backward")


def fill(url: str, jobs: int, points: int) -> int:
    """`jobs` jobs and a model; returns the id of the job with `points` metric points."""
    engine = make_engine(url)
    now = utcnow()
    config = {"method": "mec", "dataset": "fashion-mnist", "backbone": "convnet", "epochs": 2,
              "batch_size": 256, "eps_sq": 64.0}
    with Session(engine) as s:
        s.execute(insert(Job), [{
            "kind": "pretrain", "project": "default", "name": f"run-{i}", "tags": ["bench"],
            "queue": "gpu", "config": config | {"base_lr": 0.1 + i / jobs}, "priority": 0,
            "status": STATUSES[i % len(STATUSES)], "step": 100 * (i % 10), "total_steps": 1000,
            "epoch": 1, "steps_per_epoch": 500, "attempts": 1,
            "last_metrics": {"loss": -1.0 - i / jobs, "knn_top1": 80 + i % 10},
            "created_at": now - timedelta(minutes=jobs - i)} for i in range(jobs)])
        big = Job(kind="pretrain", project="default", name="long-run", tags=["bench"],
                  queue="gpu", config=config, status="succeeded", step=points // len(SERIES),
                  total_steps=points // len(SERIES), attempts=1, started_at=now,
                  finished_at=now, last_metrics={"loss": -2.0})
        s.add(big)
        s.flush()
        steps = points // len(SERIES)
        s.execute(insert(Metric), [
            {"job_id": big.id, "step": step, "epoch": 0, "name": name,
             "value": (step % 97) / 97 + k} for k, name in enumerate(SERIES)
            for step in range(1, steps + 1)])
        s.add(Model(job_id=big.id, project="default", name="long-run", backbone="convnet",
                    dataset="fashion-mnist", artifacts={}, deployment=None))
        s.commit()
        return big.id


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1440,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def timed(driver, url: str, ready) -> float:
    started = time.perf_counter()
    driver.get(url)
    WebDriverWait(driver, 30, poll_frequency=0.02,
                  ignored_exceptions=(StaleElementReferenceException,)).until(ready)
    return time.perf_counter() - started


def count(css: str, at_least: int = 1):
    return lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= at_least


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    records.add_options(parser)
    args = parser.parse_args()
    if records.reported(args, markdown):
        return
    root = Path(tempfile.mkdtemp(prefix="mec-bench-dashboard-"))
    env = os.environ | {"MEC_DATA_DIR": str(root)}
    url = f"sqlite:///{root / 'mec.db'}"
    env["MEC_DATABASE_URL"] = url
    upgrade(url)
    big = fill(url, args.jobs, args.points)
    with Session(make_engine(url)) as s:
        _, key = keys.create(s, "bench")
        s.commit()
    api, base = start_api(env)
    driver = None
    try:
        driver = browser()
        driver.get(f"{base}/ui/login")
        driver.find_element(By.ID, "key").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        WebDriverWait(driver, 20).until(count("#jobs tbody tr"))
        pages = {
            "jobs (100 newest of all)": (f"{base}/ui/", count("#jobs tbody tr", 100)),
            f"job ({args.points:,} points)": (f"{base}/ui/jobs/{big}",
                                              count(".chart[data-points]", len(SERIES))),
            "compare (that job and 2 more)": (f"{base}/ui/compare?ids={big},{big - 1},{big - 2}",
                                              count("#evals tbody tr", 2)),
            "submit (form from the schema)": (f"{base}/ui/submit", count("[data-field]", 30)),
            "models": (f"{base}/ui/models", count("#models tbody tr")),
            "search (served models)": (f"{base}/ui/search", lambda d: d.find_element(
                By.ID, "no-models").is_displayed()),
        }
        results = {}
        for name, (page, ready) in pages.items():
            timed(driver, page, ready)  # warm-up
            runs = [timed(driver, page, ready) for _ in range(args.repeats)]
            results[name] = {"median_s": round(statistics.median(runs), 3),
                             "min_s": round(min(runs), 3), "max_s": round(max(runs), 3)}
    finally:
        if driver is not None:
            driver.quit()
        api.terminate()
        api.wait(10)
    record = {"jobs": args.jobs + 1, "points": args.points, "repeats": args.repeats,
              "pages": results}
    records.emit(args, record, markdown)


def markdown(record: dict) -> str:
    """The docs' table of one run's JSON record (what --json prints)."""
    lines = [f"{record['jobs']:,} jobs, one with {record['points']:,} metric points; seconds "
             f"from navigation to content, median [range] of {record['repeats']}", "",
             "| page | seconds |", "|---|---|"]
    lines += [f"| {name} | {r['median_s']:.3f} [{r['min_s']:.3f}–{r['max_s']:.3f}] |"
              for name, r in record["pages"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
