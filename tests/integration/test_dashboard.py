"""The dashboard in a real browser (Debian's headless Chromium through Selenium) against
the real API, worker, TorchServe and database: log in, submit from the form (and see the
API's 422 next to the field), watch the curves grow, cancel, compare, deploy. Each page's
screenshot is kept in test-artifacts/dashboard/ (MEC_TEST_ARTIFACTS overrides)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from harness import b64png, png
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from mec_client import Client

pytestmark = [pytest.mark.parametrize("shared_platform", ["embedded"], indirect=True),
              pytest.mark.skipif(shutil.which("chromedriver") is None,
                                 reason="needs chromium and chromium-driver (apt)")]
ARTIFACTS = Path(os.environ.get("MEC_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))
TINY = {"dataset": "synthetic", "backbone": "convnet", "batch_size": 32, "proj_dim": 32,
        "train_limit": 256, "log_every": 2}


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1440,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def shot(browser, name: str, width: int = 1440) -> Path:
    """A full-page screenshot of what the browser shows now, `width` pixels wide."""
    folder = ARTIFACTS / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(width, 1000)
    height, chrome = browser.execute_script(  # the window's own bars are not the page's
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    browser.set_window_size(width, max(900, min(height + chrome, 4000)))
    path = folder / f"{name}.png"
    browser.save_screenshot(str(path))
    browser.set_window_size(1440, 1000)
    return path


def until(browser, predicate, timeout: float = 60, what: str = ""):
    """Wait for `predicate`; pages re-render as they poll, so an element that went stale
    meanwhile is looked up again."""
    return WebDriverWait(browser, timeout, poll_frequency=0.25,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: predicate(d), message=what)


def find(browser, css: str):
    return browser.find_element(By.CSS_SELECTOR, css)


def login(browser, platform, key: str) -> None:
    browser.get(f"{platform.url}/ui/login")
    field = find(browser, "#key")
    field.clear()
    field.send_keys(key)
    find(browser, "form button[type=submit]").click()
    until(browser, lambda d: d.find_elements(By.ID, "login-error")
          or d.current_url.rstrip("/").endswith("/ui"), 20, "the login's answer")


def test_dashboard__login_submit_watch_cancel_compare_deploy_galleries(browser, platform):
    # login: a wrong key is refused on the page; the right one opens the jobs table
    browser.get(platform.url)
    until(browser, lambda d: d.current_url.endswith("/ui/login"), 10, "redirect to login")
    shot(browser, "01-login")
    login(browser, platform, "mec_wrong")
    assert "unknown or revoked" in find(browser, "#login-error").text
    login(browser, platform, platform.key)
    until(browser, lambda d: d.current_url.rstrip("/").endswith("/ui"), 10, "jobs page")
    session = browser.get_cookie("mec_key")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert platform.key not in browser.current_url

    # submit: a bad field gets the API's message next to it, nothing is created
    browser.get(f"{platform.url}/ui/submit")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-field=batch_size]"), 20,
          "the form generated from the schema")
    fill(browser, TINY | {"batch_size": 0, "max_steps": 40, "epochs": 10})
    find(browser, "#job-name").send_keys("from-the-form")
    find(browser, "#submit button[type=submit]").click()
    error = until(browser, lambda d: find(d, '.field-error[data-for="config.batch_size"]').text,
                  10, "the 422 message beside batch_size")
    assert "greater than or equal to 2" in error
    assert "invalid" in find(browser, "[data-field=batch_size]").get_attribute("class")
    shot(browser, "02-submit-422")
    fill(browser, {"batch_size": 32})
    find(browser, "#submit button[type=submit]").click()
    until(browser, lambda d: "/ui/jobs/" in d.current_url, 10, "the new job's page")
    job_id = int(browser.current_url.rsplit("/", 1)[1])

    # its curves grow while it runs, then it succeeds
    points = []
    def grown(d):
        charts = d.find_elements(By.CSS_SELECTOR, '.chart[data-metric="loss"]')
        if charts and charts[0].get_attribute("data-points"):
            points.append(int(charts[0].get_attribute("data-points")))
        return len(set(points)) >= 2
    until(browser, grown, 180, "the loss curve to grow")
    shot(browser, "03-job-running")
    until(browser, lambda d: "succeeded" in find(d, "#status").text, 240, "the job to succeed")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart")) >= 4  # loss, coding length...
    assert find(browser, "#group-system").is_displayed()  # the process's CPU and memory
    assert {c.get_attribute("data-metric") for c in browser.find_elements(
        By.CSS_SELECTOR, "#group-system .chart")} >= {"system_cpu_percent", "system_rss_mb"}
    shot(browser, "04-job-succeeded")

    # cancel a long job from its page
    client = Client(platform.url, platform.key)
    long = client.submit({"kind": "pretrain", "name": "to-cancel",
                          "config": TINY | {"max_steps": 4000, "epochs": 500}})
    browser.get(f"{platform.url}/ui/jobs/{long.id}")
    until(browser, lambda d: d.find_element(By.ID, "cancel").is_displayed(), 20, "cancel")
    find(browser, "#cancel").click()
    accept_confirm(browser)
    until(browser, lambda d: "cancelled" in find(d, "#status").text, 60, "cancelled")
    shot(browser, "05-job-cancelled")

    # a failed job says why, plainly (evaluating a run that was cancelled before it began)
    failed = client.wait(client.evaluate(long.id).id, timeout=120, poll=0.5)
    assert failed.status == "failed"
    browser.get(f"{platform.url}/ui/jobs/{failed.id}")
    shown = until(browser, lambda d: d.find_element(By.ID, "error").is_displayed()
                  and find(d, "#error").text, 20, "the error")
    assert shown == f"Failed: {failed.error}"
    assert "top-1" not in find(browser, "#facts").text  # no result tiles waiting for one
    shot(browser, "05b-job-failed")

    # the jobs table: filters, then pick two runs and compare them
    browser.get(f"{platform.url}/ui/")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{job_id}"]'), 20,
          "the jobs table")
    shot(browser, "06-jobs")
    Select(find(browser, "#f-status")).select_by_visible_text("cancelled")
    until(browser, lambda d: all("cancelled" in r.text for r in
                                 d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")), 10,
          "the status filter")
    Select(find(browser, "#f-status")).select_by_visible_text("any status")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{job_id}"]'), 10)
    for ident in (job_id, long.id):
        find(browser, f'tr[data-id="{ident}"] input[type=checkbox]').click()
    find(browser, "#compare").click()
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".legend .key")) == 2, 20,
          "the compare legend")
    diff = until(browser, lambda d: find(d, "#diff tbody").text, 20, "the config diff")
    assert "max_steps" in diff and "40" in diff and "4000" in diff
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '.chart[data-metric="loss"]'), 20)
    shot(browser, "07-compare")

    # models: deploy the finished job's model from the page, after an evaluation whose
    # features of the same train images its reference set reuses
    evaluation = client.wait(client.evaluate(job_id).id, timeout=240, poll=0.5)
    assert evaluation.status == "succeeded", evaluation.error
    model = next(m for m in client.models().data if m.job_id == job_id)
    browser.get(f"{platform.url}/ui/models")
    button = until(browser, lambda d: d.find_elements(
        By.CSS_SELECTOR, f'tr[data-id="{model.id}"] button.primary'), 20, "the models table")
    button[0].click()
    until(browser, lambda d: "serving" in find(d, f'tr[data-id="{model.id}"]').text, 240,
          "the model to be served")
    assert f"/v1/models/{model.id}/embed" in find(browser, f'tr[data-id="{model.id}"]').text
    reused = find(browser, f'tr[data-id="{model.id}"] a[href="/ui/jobs/{evaluation.id}"]')
    assert reused.text == f"evaluation job {evaluation.id}"
    shot(browser, "08-models")

    # search: upload an image, see its neighbours with labels and scores
    image = ARTIFACTS / "query.png"
    image.write_bytes(png(seed=3))
    browser.get(f"{platform.url}/ui/search")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#model option[value="{model.id}"]'),
          20, "the served model in the list")
    find(browser, "#image").send_keys(str(image))
    k = find(browser, "#k")
    k.clear()
    k.send_keys("5")
    find(browser, "#search button[type=submit]").click()
    rows = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#neighbours tbody tr"),
                 30, "the neighbours")
    assert len(rows) == 5 and "majority label" in find(browser, "#vote").text
    expected = client.search(model.id, [image.read_bytes()], k=5).neighbours[0]
    assert [r.find_element(By.CSS_SELECTOR, "code").text for r in rows] == \
        [n.id for n in expected]
    until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#neighbours img.thumb')]"
        ".every(i => i.complete && i.naturalWidth === 32)"), 20, "the neighbours' images")
    shot(browser, "09-search")

    # galleries: an app's gallery of that model, its items' thumbnails, a filtered search
    colours = ["red", "green", "blue"]
    platform.post("/v1/galleries", {"name": "ui-shop", "model_id": model.id})
    platform.post("/v1/galleries/ui-shop/items", {"items": [
        {"id": f"sku-{i}", "image": b64png(i), "metadata": {"colour": colours[i % 3]}}
        for i in range(9)]}, expect=200)
    browser.get(f"{platform.url}/ui/galleries")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-name="ui-shop"] a'), 20,
          "the galleries table")[0].click()
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#items .tile")) == 9, 20,
          "the gallery's items")
    until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#items img')]"
        ".every(i => i.complete && i.naturalWidth === 32)"), 20, "the items' thumbnails")
    assert "9 items" in find(browser, "#items-count").text
    shot(browser, "09b-gallery")
    find(browser, "#item").send_keys("sku-3")
    find(browser, "#filter").send_keys('{"colour": {"in": ["red", "blue"]}}')
    find(browser, "#search button[type=submit]").click()
    until(browser, lambda d: "nearest to item sku-3" in find(d, "#showing").text, 20, "results")
    expected = platform.post("/v1/galleries/ui-shop/search", {
        "item_id": "sku-3", "k": 10, "filter": {"colour": {"in": ["red", "blue"]}}},
        expect=200)["results"]
    tiles = browser.find_elements(By.CSS_SELECTOR, "#items .tile")
    assert [t.get_attribute("data-id") for t in tiles] == [h["id"] for h in expected]
    assert len(tiles) == 5 and all("green" not in t.text for t in tiles)  # sku-3 left out
    shot(browser, "09c-gallery-search")
    client.wait(client.undeploy(model.id).id, timeout=120, poll=0.5)


def test_dashboard__pages_send_csp_and_writes_need_the_csrf_header(platform):
    import httpx

    page = httpx.get(f"{platform.url}/ui/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # the login cookie without the CSRF header cannot change anything
    cookies = {"mec_key": platform.key, "mec_csrf": "token"}
    job = httpx.post(f"{platform.url}/v1/jobs", cookies=cookies,
                     json={"kind": "pretrain", "config": TINY | {"max_steps": 2}})
    assert job.status_code == 403 and "X-CSRF-Token" in job.json()["detail"]
    read = httpx.get(f"{platform.url}/v1/jobs", cookies=cookies)
    assert read.status_code == 200  # reads need no token
    with_token = httpx.post(f"{platform.url}/v1/jobs/999999/cancel", cookies=cookies,
                            headers={"X-CSRF-Token": "token"})
    assert with_token.status_code == 404  # past the CSRF check, to the route
    assert httpx.get(f"{platform.url}/ui/", follow_redirects=False).headers["location"] \
        == "/ui/login"
    # after logging in, back to the page asked for: only a dashboard path, never another site
    assert httpx.get(f"{platform.url}/ui/models?x=1", follow_redirects=False) \
        .headers["location"] == "/ui/login?next=/ui/models%3Fx%3D1"
    for asked, landed in (("/ui/models", "/ui/models"), ("https://evil.example/ui/", "/ui/"),
                          ("//evil.example/ui/", "/ui/"), ("/ui//evil.example", "/ui/"),
                          ("/ui/../v1/jobs", "/ui/"), ("/v1/jobs", "/ui/")):
        with httpx.Client(base_url=platform.url) as web:
            web.get("/ui/login")
            answer = web.post("/ui/login", data={"key": platform.key, "next": asked,
                                                 "csrf": web.cookies["mec_csrf"]})
            assert answer.status_code == 303 and answer.headers["location"] == landed, asked



def test_dashboard__login_returns_to_the_page_a_missing_job_and_the_reference_set(browser,
                                                                                 platform):
    """Logged out, a page sends to the login and the login back to that page; a job that
    is not in the project reads so, alone; the Search page speaks of a deployment's
    reference set (a gallery is an app's)."""
    browser.delete_all_cookies()
    browser.get(f"{platform.url}/ui/jobs/999999")
    until(browser, lambda d: "/ui/login?next=" in d.current_url, 10, "the login page")
    field = find(browser, "#key")
    field.send_keys(platform.key)
    find(browser, "form button[type=submit]").click()
    until(browser, lambda d: d.current_url == f"{platform.url}/ui/jobs/999999", 10,
          "back to the page asked for")
    missing = until(browser, lambda d: find(d, "#missing").is_displayed() and find(d, "#missing"),
                    10, "the missing job's state")
    assert missing.find_element(By.TAG_NAME, "h1").text == "No job 999999 in this project"
    time.sleep(2.5)  # a poll later: still only that, no toast, no empty job
    assert not find(browser, "#job-view").is_displayed()
    assert not find(browser, "#toast").is_displayed()
    shot(browser, "22-job-missing")
    browser.get(f"{platform.url}/ui/search")
    intro = until(browser, lambda d: find(d, "main p.muted").text, 10, "the search page")
    assert "reference set" in intro and "gallery" not in intro


def fill(browser, values: dict) -> None:
    for name, value in values.items():
        field = find(browser, f"[data-field={name}]")
        if field.tag_name == "select":
            Select(field).select_by_value(str(value))
        else:
            field.clear()
            field.send_keys(str(value))


def accept_confirm(browser, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            browser.switch_to.alert.accept()
            return
        except NoAlertPresentException:
            time.sleep(0.1)
    raise AssertionError("no confirmation dialog")


def test_dashboard__zoom_reads_the_range_again_at_full_resolution(browser, platform):
    """A series of 6,000 steps arrives downsampled (every 3rd step); dragging over a tenth
    of the chart asks the metrics API for that range again, at every step."""
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from mec_platform.db import make_engine
    from mec_platform.tables import Job, Metric

    engine = make_engine(f"sqlite:///{platform.env['MEC_DATA_DIR']}/mec.db")
    with Session(engine) as s:
        job = Job(kind="pretrain", project="default", name="long", tags=[], queue="gpu",
                  config={"dataset": "synthetic"}, status="succeeded", step=6000,
                  total_steps=6000, attempts=1)
        s.add(job)
        s.flush()
        s.execute(insert(Metric), [{"job_id": job.id, "step": step, "epoch": 0,
                                    "name": "loss", "value": (step % 50) / 50}
                                   for step in range(1, 6001)])
        s.commit()
        job_id = job.id
    engine.dispose()
    login(browser, platform, platform.key)
    browser.get(f"{platform.url}/ui/jobs/{job_id}")
    chart = until(browser, lambda d: d.find_elements(
        By.CSS_SELECTOR, '.chart[data-metric="loss"][data-points]'), 20, "the loss chart")[0]
    coarse = int(chart.get_attribute("data-points"))
    assert 1900 <= coarse <= 2100  # 6,000 steps at stride 3
    over = chart.find_element(By.CSS_SELECTOR, ".u-over")
    width = over.size["width"]
    ActionChains(browser).move_to_element_with_offset(over, -width // 2 + width // 10, 0) \
        .click_and_hold().move_by_offset(width // 10, 0).release().perform()
    until(browser, lambda d: chart.get_attribute("data-zoom-stride") == "1", 20, "the detail")
    assert int(chart.get_attribute("data-points")) > coarse + 300  # ~600 steps where ~200 were
    shot(browser, "10-job-zoomed")
    before = chart.size["width"]
    browser.set_window_size(1000, 1000)  # one chart per row below 1,000 px: each grows
    until(browser, lambda d: chart.find_element(By.CSS_SELECTOR, "canvas").size["width"]
          > before, 10, "the chart to follow the window")
    browser.set_window_size(1440, 1000)


def test_dashboard__a_sweep_shows_its_trials_and_deploys_the_best(browser, platform):
    """A grid sweep's page lists its trials live (the searched fields, status, objective,
    why one stopped) with the best marked, and deploys the best; a queued job too big for
    every worker says why it waits."""
    sweep = platform.post("/v1/jobs", {"kind": "sweep", "name": "ui-sweep", "config": {
        "base": TINY | {"max_steps": 4, "epochs": 1, "proj_hidden_dim": 64,
                        "pred_hidden_dim": 16},
        "space": {"base_lr": {"choice": [0.05, 0.3]}}, "algorithm": "grid",
        "objective": {"metric": "lr", "mode": "max"}, "max_parallel": 2, "prune": False}})
    done = platform.wait_status(sweep["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    login(browser, platform, platform.key)
    browser.get(f"{platform.url}/ui/jobs/{sweep['id']}")
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) == 2,
          20, "the two trials")
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#trials thead th")]
    assert headers[:4] == ["TRIAL", "JOB", "BASE_LR", "STATUS"]  # CSS upper-cases them
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")]
    assert [r[2] for r in rows] == ["0.05", "0.3"] and {r[3] for r in rows} == {"succeeded"}
    best = find(browser, "#trials tbody tr.best")
    assert best.get_attribute("data-id") == str(done["result"]["best"]["job_id"])
    assert "best" in best.text and find(browser, "#curves").get_attribute("hidden") is not None
    assert find(browser, "#progress-text").text.startswith("2 of 2 trials finished")
    space = browser.execute_script(
        "return [...document.querySelectorAll('#config tr')]"
        ".find(r => r.cells[0].textContent === 'space').cells[1].textContent")
    assert json.loads(space) == {"base_lr": {"choice": [0.05, 0.3]}}  # no unset kinds
    shot(browser, "11-sweep")
    find(browser, "#promote").click()
    until(browser, lambda d: "/ui/jobs/" in d.current_url and
          not d.current_url.endswith(f"/{sweep['id']}"), 20, "the deployment job's page")
    deploy_id = int(browser.current_url.rstrip("/").rsplit("/", 1)[1])
    deployed = platform.wait_status(deploy_id, ("succeeded", "failed"))
    assert deployed["status"] == "succeeded", deployed["error"]
    model = next(m for m in platform.get("/v1/models")["data"]
                 if m["id"] == deployed["config"]["model_id"])
    assert model["job_id"] == done["result"]["best"]["job_id"]
    # the deploy job's page: its own progress (reference images embedded), no curves, no kNN
    images = deployed["progress"]["total_steps"]
    until(browser, lambda d: find(d, "#progress-text").text.startswith(
        f"images embedded {images} of {images}"), 20, "the deploy job's progress")
    assert not find(browser, "#tabs .tab[data-tab=curves]").is_displayed()
    assert not find(browser, "#curves").is_displayed() and find(browser, "#logs").is_displayed()
    assert "kNN" not in find(browser, "#facts").text
    shot(browser, "11b-deploy-job")
    # the models page: the Deploy / Undeploy cell lines up with its row
    browser.get(f"{platform.url}/ui/models")
    until(browser, lambda d: "serving" in find(d, f'tr[data-id="{model["id"]}"]').text, 20,
          "the models table")
    edges = browser.execute_script(
        "return [...arguments[0].cells].map(c => c.getBoundingClientRect())"
        ".map(r => [r.top, r.bottom])", find(browser, f'tr[data-id="{model["id"]}"]'))
    assert len({tuple(e) for e in edges}) == 1, edges
    shot(browser, "11c-models-actions")
    big = platform.post("/v1/jobs", {"kind": "pretrain", "name": "too-big",
                                     "config": TINY | {"max_steps": 4, "processes": 4}})
    browser.get(f"{platform.url}/ui/jobs/{big['id']}")
    notice = until(browser, lambda d: d.find_element(By.ID, "waiting").text, 20, "the reason")
    assert notice.startswith("Waiting: needs 4 processes")
    shot(browser, "12-job-waiting")
    platform.post(f"/v1/jobs/{big['id']}/cancel", expect=200)


def _pct(text: str) -> float:
    """The number of a cell that reads '76.40 %'."""
    return float(text.removesuffix(" %"))


def _log_lines(browser) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#log .line")]


def test_dashboard__the_logs_tab_follows_a_running_job_and_shows_a_traceback(browser, platform):
    """The Logs tab streams a running job's lines as they come and says when it ended; a
    failed job's traceback stands out in red."""
    client = Client(platform.url, platform.key)
    job = client.submit({"kind": "pretrain", "name": "ui-logs", "config": TINY | {
        "max_steps": 300, "epochs": 40, "log_every": 50, "checkpoint_every": 100}})
    login(browser, platform, platform.key)
    browser.get(f"{platform.url}/ui/jobs/{job.id}")
    until(browser, lambda d: find(d, '.tab[data-tab="logs"]').is_displayed(), 20, "the tabs")
    find(browser, '.tab[data-tab="logs"]').click()
    assert not find(browser, "#logs").get_attribute("hidden") and \
        find(browser, "#curves").get_attribute("hidden")
    first = until(browser, lambda d: _log_lines(d), 120, "the job's first line")
    assert client.job(job.id).status == "running", first  # it came while the job trained
    assert f"[1 worker] INFO worker.tasks: job {job.id}: attempt 1 on " in first[0]
    shot(browser, "13-job-logs-running")
    until(browser, lambda d: find(d, "#log-state").text.endswith("· the job succeeded"), 240,
          "the stream's end")
    shown = _log_lines(browser)
    assert len(shown) == len(list(client.logs(job.id))) and \
        shown[-1].endswith(f"INFO worker.tasks: job {job.id}: succeeded")
    assert len(shown) > len(first)  # lines were added while the page followed

    failed = client.submit({"kind": "pretrain", "name": "ui-logs-failed", "config": TINY | {
        "max_steps": 8, "train_limit": 16}})  # fewer images than one batch
    platform.wait_status(failed.id, ("failed", "succeeded"))
    browser.get(f"{platform.url}/ui/jobs/{failed.id}")
    until(browser, lambda d: find(d, '.tab[data-tab="logs"]').is_displayed(), 20, "the tabs")
    find(browser, '.tab[data-tab="logs"]').click()
    until(browser, lambda d: find(d, "#log-state").text.endswith("· the job failed"), 30,
          "the end")
    red = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#log .line.bad")]
    assert any("Traceback (most recent call last):" in t for t in red)
    assert any("ValueError: batch_size 32 exceeds the 16 training images" in t for t in red)
    shot(browser, "14-job-logs-failed")


def test_dashboard__reasons_two_knn_measures_an_evaluations_result_clone_and_search(
        browser, platform):
    """The jobs table says why a job failed and keeps the online kNN apart from an
    evaluation's top-1; an evaluate job's page shows its result and the job it evaluated;
    a training job's tile shows its newest online kNN and it lists its evaluations and its
    model; a failed job without metrics says so; Clone fills the Submit form with the spec
    and sends nothing until Submit; the search page shows no result before a search."""
    client = Client(platform.url, platform.key)
    trained = client.submit({"kind": "pretrain", "name": "ui-knn", "config": TINY | {
        "max_steps": 8, "epochs": 1, "monitor_every": 3, "log_every": 1}})
    failed = client.submit({"kind": "pretrain", "name": "ui-failed", "config": TINY | {
        "max_steps": 8, "train_limit": 16}})
    for job in (trained, failed):
        platform.wait_status(job.id, ("succeeded", "failed"))
    evaluation = client.evaluate(trained.id, "knn", train_limit=64, test_limit=32)
    result = platform.wait_status(evaluation.id, ("succeeded", "failed"))["result"]
    knn = client.metrics(trained.id, names=["knn_top1"]).series["knn_top1"].values[-1]

    login(browser, platform, platform.key)
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{evaluation.id}"]'),
          20, "the jobs table")
    row = find(browser, f'tr[data-id="{failed.id}"]')
    assert "ValueError: batch_size 32 exceeds the 16 training images" in \
        row.find_element(By.CSS_SELECTOR, ".reason").get_attribute("title")
    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#jobs thead th")]
    online, evaluated = heads.index("ONLINE KNN"), heads.index("EVALUATION TOP-1")
    cells = lambda job_id: [td.text for td in browser.find_elements(  # noqa: E731
        By.CSS_SELECTOR, f'tr[data-id="{job_id}"] td')]
    assert _pct(cells(trained.id)[online]) == pytest.approx(knn, abs=0.006)
    assert cells(trained.id)[evaluated] == "—" and cells(evaluation.id)[online] == "—"
    assert _pct(cells(evaluation.id)[evaluated]) == pytest.approx(result["top1"], abs=0.006)
    kind = heads.index("KIND")
    assert cells(evaluation.id)[kind] == "evaluate (knn)" and cells(trained.id)[kind] == "pretrain"
    shot(browser, "15-jobs-reasons-and-two-knn")

    browser.get(f"{platform.url}/ui/jobs/{evaluation.id}")
    until(browser, lambda d: "top-1" in find(d, "#progress-text").text, 20, "the result")
    said = find(browser, "#progress-text").text
    assert said.startswith("knn evaluation on synthetic: top-1 ") and \
        said.endswith(" % (64 train, 32 test images)")
    top1, top5 = (float(v.split()[1]) for v in said.split("top-")[1:])  # "1 53.13 %, "
    assert (top1, top5) == pytest.approx((result["top1"], result["top5"]), abs=0.006)
    link = find(browser, f'#facts a[href="/ui/jobs/{trained.id}"]')
    assert link.text == f"job {trained.id}"
    assert not find(browser, "#no-metrics").is_displayed()
    assert not find(browser, '.tab[data-tab="curves"]').is_displayed()
    shot(browser, "16-evaluation-job")

    browser.get(f"{platform.url}/ui/jobs/{failed.id}")
    until(browser, lambda d: find(d, "#no-metrics").is_displayed(), 20, "the failed job's page")
    assert find(browser, "#no-metrics").text == "This job recorded no metrics."
    assert "online kNN" not in find(browser, "#facts").text  # it never got to measure one
    assert find(browser, "#progress-text").text == ""  # no "step 0 of ?"
    assert not find(browser, "#x-axis").is_displayed()  # nothing to draw over steps
    assert not find(browser, "#related").is_displayed()  # no model, nothing to list
    shot(browser, "16b-failed-job-without-metrics")

    browser.get(f"{platform.url}/ui/jobs/{trained.id}")
    tile = '#facts .fact:last-child strong'
    until(browser, lambda d: find(d, tile).text != "—", 20, "the kNN tile")
    assert "online kNN top-1" in find(browser, "#facts").text
    assert _pct(find(browser, tile).text) == pytest.approx(knn, abs=0.006)
    row = until(browser, lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#evaluations tr[data-id="{evaluation.id}"]'), 20, "its evaluations")[0]
    protocol, status, top1 = (td.text for td in row.find_elements(By.TAG_NAME, "td")[1:])
    assert (protocol, status) == ("knn", "succeeded")
    assert _pct(top1) == pytest.approx(result["top1"], abs=0.006)
    model = next(m for m in client.models().data if m.job_id == trained.id)
    assert find(browser, "#model").text == f"model {model.id} · not deployed"
    assert find(browser, "#model a").get_attribute("href").endswith("/ui/models")
    shot(browser, "17-job-online-knn-tile")

    # Clone: the Submit form holds the spec, to edit; only Submit sends it
    before = platform.get("/v1/jobs")["count"]
    find(browser, "#clone").click()
    until(browser, lambda d: find(d, "[data-field=max_steps]").get_attribute("value") == "8",
          20, "the form filled from the job")
    assert browser.current_url.endswith(f"/ui/submit?clone={trained.id}")
    assert find(browser, "#job-name").get_attribute("value") == "ui-knn"
    assert find(browser, "[data-field=batch_size]").get_attribute("value") == "32"
    assert Select(find(browser, "[data-field=dataset]")).first_selected_option.text == "synthetic"
    time.sleep(1)
    assert platform.get("/v1/jobs")["count"] == before  # nothing sent yet
    shot(browser, "17b-clone-filled-form")
    fill(browser, {"max_steps": 6})
    find(browser, "#submit button[type=submit]").click()
    until(browser, lambda d: "/ui/jobs/" in d.current_url, 10, "the clone's page")
    clone = client.job(int(browser.current_url.rsplit("/", 1)[1]))
    assert clone.id != trained.id and clone.name == "ui-knn"
    assert clone.config == client.job(trained.id).config | {"max_steps": 6}
    client.cancel(clone.id)
    browser.get(f"{platform.url}/ui/submit?clone={evaluation.id}")  # an evaluation: as JSON
    text = until(browser, lambda d: find(d, "#raw-config").get_attribute("value"), 20, "JSON")
    assert json.loads(text)["job_id"] == trained.id and find(browser, "#heading").text == \
        f"New evaluate job, a copy of job {evaluation.id}"
    assert not find(browser, "#fields").is_displayed()

    browser.get(f"{platform.url}/ui/search")
    until(browser, lambda d: find(d, "#search").is_displayed(), 20, "the search page")
    assert not find(browser, "#result").is_displayed()  # no broken image, no empty table
    shot(browser, "18-search-before-a-search")


def _hint(browser, field: str):
    return find(browser, f"[data-field={field}]").find_element(By.XPATH, "../span[@class='hint']")


def test_dashboard__the_form_shows_the_resolved_config_and_refuses_a_wrong_type(browser,
                                                                              platform):
    """The submit form shows what a job of the chosen dataset would run with (the API's
    validate route: the small recipe for Fashion-MNIST, not the paper's ImageNet values),
    no "default (undefined)", whole help texts, and refuses "abc" for a number at the field
    without sending anything."""
    login(browser, platform, platform.key)
    browser.get(f"{platform.url}/ui/submit")
    placeholder = lambda d, f: find(d, f"[data-field={f}]").get_attribute("placeholder")  # noqa: E731
    until(browser, lambda d: placeholder(d, "image_size") == "28", 20, "fashion-mnist's config")
    expected = platform.post("/v1/jobs/validate", {"kind": "pretrain", "config": {}},
                             expect=200)["config"]
    assert expected["recipe"] == "small" and expected["proj_dim"] == 512
    for field in ("proj_dim", "eps_sq", "epochs", "teacher_momentum", "warmup_epochs"):
        assert float(placeholder(browser, field)) == expected[field], field
    assert placeholder(browser, "order") == "null"  # the small recipe's exact log-det
    firsts = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "select option:first-child")]
    assert "undefined" not in " ".join(firsts) and "default (small)" in firsts
    assert find(browser, "[data-field=channels_last] option").text == "default (true)"
    hint = _hint(browser, "precision")
    assert hint.text.endswith("fp16 on CUDA only.") and browser.execute_script(
        "return arguments[0].scrollHeight <= arguments[0].clientHeight + 1", hint)
    fill(browser, {"dataset": "digits"})
    until(browser, lambda d: placeholder(d, "image_size") == "16", 20, "digits' config")
    assert find(browser, "[data-field=hflip] option").text == "default (false)"
    shot(browser, "19-submit-resolved")

    before = platform.get("/v1/jobs")["count"]
    fill(browser, TINY | {"epochs": "abc", "max_steps": 4})
    find(browser, "#submit button[type=submit]").click()
    message = until(browser, lambda d: find(d, '.field-error[data-for="config.epochs"]').text,
                    10, "the message at the field")
    assert message == '"abc" is not a whole number'
    assert "invalid" in find(browser, "[data-field=epochs]").get_attribute("class")
    time.sleep(1)
    assert "/ui/submit" in browser.current_url and platform.get("/v1/jobs")["count"] == before
    shot(browser, "20-submit-refused")


def test_dashboard__curves_grouped_by_axis_and_smoothed_with_the_resolved_config(browser,
                                                                                platform):
    """A job's curves stand in groups (training, representation health, system; the
    internal ones folded), drawn over steps, epochs or time, smoothed on demand; the config
    shows what the run decided for the fields left open; the time left is rounded."""
    job = platform.post("/v1/jobs", {"kind": "pretrain", "name": "ui-curves", "config":
                                     TINY | {"max_steps": 20, "epochs": 5, "log_every": 1}})
    done = platform.wait_status(job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    login(browser, platform, platform.key)
    browser.get(f"{platform.url}/ui/jobs/{job['id']}")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#group-system .chart'), 20,
          "the curves")
    groups = {g: {c.get_attribute("data-metric") for c in browser.find_elements(
        By.CSS_SELECTOR, f"#group-{g} .chart")} for g in ("training", "health", "system",
                                                           "internal")}
    assert {"loss", "coding_length", "lr"} <= groups["training"]
    assert groups["health"] == {"knn_top1", "effective_rank", "spectral_norm"}
    assert {"time_forward", "lambda_inv"} <= groups["internal"]
    # every chart's y axis is as wide as its widest tick label (memory in MB: "1,217.55")
    for metric in ("system_rss_mb", "loss"):
        widest, size = browser.execute_script(
            f"const u = document.querySelector('.chart[data-metric={metric}]').plot, a = u.axes[1];"
            "u.ctx.font = a.font[0];"
            "return [Math.max(...a._values.map(v => u.ctx.measureText(v).width)),"
            " a._size - a.ticks.size - a.gap]")  # the room left for the labels
        assert 0 < widest <= size, (metric, widest, size)
    assert not find(browser, '#group-internal .chart[data-metric="time_forward"]').is_displayed()
    find(browser, "#group-internal summary").click()
    until(browser, lambda d: find(d, '#group-internal .chart[data-metric="time_forward"] canvas')
          .size["width"] > 400, 10, "the folded group, opened at full width")

    plot = "return document.querySelector('.chart[data-metric=loss]').plot"  # uPlot's
    steps = browser.execute_script(f"{plot}.data[0]")
    assert steps[-1] == 20 and browser.execute_script(f"{plot}.series[0].label") == "step"
    per_epoch = done["progress"]["steps_per_epoch"]
    Select(find(browser, "#x-axis")).select_by_value("epoch")
    assert browser.execute_script(f"{plot}.series[0].label") == "epoch"
    assert browser.execute_script(f"{plot}.data[0]") == pytest.approx(
        [s / per_epoch for s in steps])
    Select(find(browser, "#x-axis")).select_by_value("time")
    minutes = browser.execute_script(f"{plot}.data[0]")
    assert browser.execute_script(f"{plot}.series[0].label") == "minutes"
    assert minutes == sorted(minutes) and 0 <= minutes[0] < minutes[-1] < 10
    browser.execute_script("const s = document.getElementById('smoothing'); s.value = '0.9';"
                           "s.dispatchEvent(new Event('input'))")
    raw, smoothed = browser.execute_script(f"{plot}.data.slice(1)")
    mean, expected = 0.0, []
    for n, v in enumerate(raw, 1):  # the debiased moving average
        mean = 0.9 * mean + 0.1 * v
        expected.append(mean / (1 - 0.9 ** n))
    assert smoothed == pytest.approx(expected) and smoothed != pytest.approx(raw)
    assert find(browser, "#smoothing-value").text == "0.90"
    shot(browser, "21-job-curves-time-smoothed")

    rows = dict(browser.execute_script(  # at once: the page redraws the table as it polls
        "return [...document.querySelectorAll('#config tr')].map(r => [...r.cells]"
        ".map(c => c.innerText.trim()))"))
    assert rows["image_size"] == "32 the run's default"
    assert rows["channels_last"] == "true the run's default"
    assert rows["monitor_every"] == "2 the run's default"  # a tenth of its 20 steps
    assert rows["batch_size"] == "32" and rows["order"] == "null"
    assert browser.execute_script("return [eta(5), eta(150), eta(7700), eta(7300)]") == [
        "under a minute left", "about 3 min left", "about 2 h 10 min left", "about 2 h left"]
