"""The Datasets page in a real browser (headless Chromium through Selenium) against a real
API process: create a dataset (and see the API's 422 beside the form), upload archives
with their progress (a refused one lists its bad members; one over MEC_MAX_DATASET_MB
gets the 413's reason), read a version's counts per class and split, sizes and
thumbnails, copy its dataset:// string, delete. Screenshots go to test-artifacts/dashboard/
with the other pages'."""

from __future__ import annotations

import io
import os
import shutil
import tarfile

import numpy as np
import pytest
from harness import base_env, open_platform
from PIL import Image, ImageDraw
from selenium.webdriver.common.by import By
from test_dashboard import ARTIFACTS, accept_confirm, browser, find, login, shot, until

pytestmark = pytest.mark.skipif(shutil.which("chromedriver") is None,
                                reason="needs chromium and chromium-driver (apt)")
assert browser  # the fixture, shared with the other pages' tests
CLASSES = {"circle": 14, "square": 10, "stripes": 6}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The API alone: the page only reads and writes through /v1/datasets."""
    root = tmp_path_factory.mktemp("datasets-page")
    platform = open_platform(root, base_env(root), "embedded")
    platform.start_api(MEC_MAX_DATASET_MB="1")
    yield platform
    platform.stop()


def shape(kind: str, i: int, side: int = 48) -> bytes:
    """A class's drawing (its own shape and hue), varied by `i`."""
    image = Image.new("RGB", (side, side), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    colour = {"circle": (37, 99, 235), "square": (220, 38, 38), "stripes": (22, 163, 74)}[kind]
    r = 10 + i % 8
    if kind == "circle":
        draw.ellipse((24 - r, 24 - r, 24 + r, 24 + r), fill=colour)
    elif kind == "square":
        draw.rectangle((24 - r, 24 - r, 24 + r, 24 + r), fill=colour)
    else:
        for x in range(i % 4, side, 8):
            draw.rectangle((x, 0, x + 3, side), fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def noise(seed: int) -> bytes:
    """A 96x96 picture of noise (PNG cannot compress it): bytes enough to watch a
    progress bar move."""
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def archive(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_datasets_page__create_upload_read_copy_delete(browser, api, tmp_path):
    login(browser, api, api.key)
    browser.get(f"{api.url}/ui/datasets")
    until(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), 10, "empty list")
    shot(browser, "20-datasets-empty")

    # a bad name: the API's 422, naming the field, beside the form; nothing created
    find(browser, "#new-name").send_keys("two words")
    find(browser, "#create button[type=submit]").click()
    error = until(browser, lambda d: find(d, "#create-error").text, 10, "the 422")
    assert error.startswith("name")
    assert api.client.get("/v1/datasets").json()["data"] == []
    shot(browser, "20b-datasets-create-refused")
    find(browser, "#new-name").clear()
    find(browser, "#new-name").send_keys("shapes")
    find(browser, "#new-description").send_keys("circles, squares and stripes")
    find(browser, "#create button[type=submit]").click()
    until(browser, lambda d: d.find_elements(By.ID, "no-versions"), 10, "the new dataset")
    assert browser.current_url.endswith("/ui/datasets?name=shapes")
    shot(browser, "21-dataset-created")

    # a bad archive is refused whole, its bad members listed
    bad = archive(tmp_path / "bad.tar.gz", {"circle/0.png": shape("circle", 0),
                                            "../escape.png": shape("square", 1),
                                            "circle/notes.txt": b"not an image"})
    find(browser, "#archive").send_keys(str(bad))
    find(browser, "#send").click()
    error = until(browser, lambda d: find(d, "#upload-error").text, 20, "the refusal")
    assert "../escape.png: its path leaves the archive" in error
    assert "circle/notes.txt: not an image file" in error
    assert api.client.get("/v1/datasets/shapes").json()["versions"] == []
    shot(browser, "22-dataset-upload-refused")

    # one over MEC_MAX_DATASET_MB: refused by its size before it is read
    big = tmp_path / "big.tar.gz"
    big.write_bytes(os.urandom(2 << 20))
    find(browser, "#archive").send_keys(str(big))
    find(browser, "#send").click()
    error = until(browser, lambda d: find(d, "#upload-error").text, 20, "the 413")
    assert error == ("body: 2097152 bytes, over the limit of 1048576 bytes for this route "
                     "(MEC_MAX_DATASET_MB)")
    shot(browser, "22b-dataset-upload-too-big")

    # a good one, sent slowly enough to watch its progress
    members = {f"shapes/{kind}/{i}.png": shape(kind, i) for kind, n in CLASSES.items()
               for i in range(n)}
    padding = {f"shapes/circle/big{i}.png": noise(i) for i in range(4)}
    good = archive(tmp_path / "good.tar.gz", members | padding)
    size = good.stat().st_size
    browser.set_network_conditions(latency=5, download_throughput=2**24,
                                   upload_throughput=size // 3)  # about 3 s
    find(browser, "#archive").send_keys(str(good))
    find(browser, "#send").click()
    until(browser, lambda d: "Sending" in find(d, "#upload-state").text and
          0 < _width(d) < 100, 20, "the upload under way")
    shot(browser, "23-dataset-uploading")
    browser.delete_network_conditions()
    state = until(browser, lambda d: "Version 1:" in find(d, "#upload-state").text
                  and find(d, "#upload-state").text, 60, "the new version")
    version = api.client.get("/v1/datasets/shapes").json()["versions"][0]
    assert f"{version['images']} images (dataset://shapes/1)" in state
    card = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '.version[data-number="1"]'),
                 10, "the version's card")[0]
    rows = card.find_elements(By.CSS_SELECTOR, "tbody tr")
    shown = {r.get_attribute("data-class"): [int(c.text) for c in r.find_elements(
        By.CSS_SELECTOR, "td.num")] for r in rows}
    assert shown == {c: [v["train"], v["test"]] for c, v in version["classes"].items()}
    assert shown["circle"] == [16, 2] and shown["stripes"] == [5, 1]  # 10 % held out
    until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.version img.thumb')]"
        ".every(i => i.complete && i.naturalWidth > 0)"), 10, "the thumbnails")
    assert len(card.find_elements(By.CSS_SELECTOR, "img.thumb")) == 3
    assert "48x48 × 30" in card.text and "96x96 × 4" in card.text
    assert version["digest"][:16] in card.text
    shot(browser, "24-dataset-version")
    shot(browser, "24b-dataset-version-1024px", width=1024)  # a small laptop's width
    browser.set_window_size(420, 900)  # a phone: nothing wider than the window
    wider = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert wider <= 0, f"the page is {wider} px wider than a 420 px window"
    shot(browser, "24c-dataset-version-420px", width=420)

    # the same archive with another split: version 2, on top, the latest
    seed = find(browser, "#seed")
    seed.clear()
    seed.send_keys("7")
    find(browser, "#archive").send_keys(str(good))
    find(browser, "#send").click()
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".version")) == 2, 30,
          "version 2")
    first = find(browser, ".version")
    assert first.get_attribute("data-number") == "2" and "latest" in first.text
    first.find_element(By.CSS_SELECTOR, ".copy button").click()
    toast = until(browser, lambda d: find(d, "#toast").text, 5, "the copy's toast")
    assert "dataset://shapes/2" in toast or toast == "Selected: press Ctrl+C to copy"
    assert first.find_element(By.CSS_SELECTOR, "code.uri").text == "dataset://shapes/2"
    shot(browser, "25-dataset-two-versions")

    browser.get(f"{api.url}/ui/datasets")
    row = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-name="shapes"]'),
                10, "the list")[0]
    assert "dataset://shapes/2" in row.text and "34" in row.text
    shot(browser, "26-datasets-list")

    # delete, from the dataset's page
    row.find_element(By.CSS_SELECTOR, "a").click()
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".version"), 10, "its page")
    find(browser, "#delete").click()
    accept_confirm(browser)
    until(browser, lambda d: d.current_url.endswith("/ui/datasets")
          and d.find_element(By.ID, "empty").is_displayed(), 10, "the emptied list")
    assert api.client.get("/v1/datasets/shapes").status_code == 404
    shot(browser, "27-datasets-deleted")
    browser.get(f"{api.url}/ui/datasets?name=shapes")  # an old link: the list, no stale page
    until(browser, lambda d: "not found" in find(d, "#toast").text, 10, "the 404")
    assert not find(browser, "#dataset").is_displayed()
    assert find(browser, "#create").is_displayed()
    shot(browser, "27b-dataset-gone")
    assert (ARTIFACTS / "dashboard" / "27-datasets-deleted.png").exists()


def _width(browser) -> float:
    return browser.execute_script(
        "const b = document.querySelector('#upload-progress > div');"
        "return b ? parseFloat(b.style.width) || 0 : 0")
