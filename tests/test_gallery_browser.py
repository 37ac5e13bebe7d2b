"""The gallery page in headless Chromium, opened from disk: grid, scores, best cells, sort and filter,
enlarge, labelling with export, and a screenshot (copied to $GALLERY_SCREENSHOT when set).
Chromium comes from `make setup-dev` (Debian's chromium and chromium-driver)."""

import json
import os
import shutil
import time

import numpy as np
import pytest
from conftest import tiny_adapter
from PIL import Image
from test_gallery import HOSTILE, Brightness

from align.pairs import read_pairs_file
from gallery import build_gallery

PROMPTS = ["a red circle", "a red circle left of a blue square", HOSTILE[0]]
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


def find_chromium() -> tuple[str, str]:
    """(browser, driver) paths; skips where they cannot be installed, fails where they could be."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]' (or make setup-dev)")
    if browser and driver:
        return browser, driver
    if shutil.which("apt-get") and os.geteuid() == 0:
        pytest.fail(
            "Chromium is missing but installable here: run `make setup-dev` (apt-get install chromium chromium-driver)"
        )
    pytest.skip(
        "Chromium and chromedriver are not installed and apt-get is unusable here (not root or not Debian)"
    )


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "gallery"
    models = {"sd3": tiny_adapter("tiny:sd3"), "sd15": tiny_adapter("tiny:sd15")}
    rewards = {"brightness": Brightness()}
    data = build_gallery(models, PROMPTS, 2, rewards, out, num_steps=2, guidance_scale=3.0)
    return out, data


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def open_page(browser, out):
    from selenium.webdriver.common.by import By

    browser.get((out / "index.html").as_uri())
    wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def shown_rows(browser) -> list[tuple[int, int]]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#grid tr.row")
    return [(int(r.get_attribute("data-prompt")), int(r.get_attribute("data-seed"))) for r in rows]


def test_grid_cells_scores_best_marks_and_escaping(browser, gallery_dir):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    out, data = gallery_dir
    open_page(browser, out)
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018  (the hostile prompt ran nothing)
    assert browser.execute_script("return document.scripts.length") == 2
    assert browser.execute_script("return document.querySelectorAll('img[src=x]').length") == 0
    texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#grid .prompt-text")]
    assert texts == [p for p in PROMPTS for _ in range(2)]  # the hostile prompt shows as text
    assert shown_rows(browser) == [(p, s) for p in range(3) for s in range(2)]
    cells = browser.find_elements(By.CSS_SELECTOR, "#grid td.cell")
    assert len(cells) == 3 * 2 * 2
    expected = {(c["model"], c["prompt"], c["seed"]): c for c in data["cells"]}
    for element in cells:
        key = (
            element.get_attribute("data-model"),
            int(element.get_attribute("data-prompt")),
            int(element.get_attribute("data-seed")),
        )
        entry = expected.pop(key)
        value = element.find_element(By.CSS_SELECTOR, "li.score[data-reward=brightness] .value").text
        assert value == f"{entry['scores']['brightness']:.3f}"
        assert ("best" in element.get_attribute("class").split()) == entry["best"]
        image = element.find_element(By.CSS_SELECTOR, "img.thumb")
        assert image.get_attribute("src").endswith(entry["image"])
        assert (
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 32
        )
    assert not expected
    summary = browser.find_elements(By.CSS_SELECTOR, "#summary-table tr[data-model]")
    assert [row.get_attribute("data-model") for row in summary] == ["sd3", "sd15"]
    for row, want in zip(summary, data["summary"]):
        cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        accuracy, brightness = f"{want['accuracy']:.3f}", f"{want['rewards']['brightness']:.3f}"
        assert cells == [want["model"], "6", accuracy, brightness, str(want["wins"])]


def test_sort_and_filter_by_reward_and_category(browser, gallery_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, data = gallery_dir
    open_page(browser, out)
    score = {(c["model"], c["prompt"], c["seed"]): c["scores"]["brightness"] for c in data["cells"]}
    rows = [(p, s) for p in range(3) for s in range(2)]
    Select(browser.find_element(By.ID, "sort-select")).select_by_value("model:1")
    assert shown_rows(browser) == sorted(rows, key=lambda r: -score[("sd15", *r)])
    Select(browser.find_element(By.ID, "sort-select")).select_by_value("spread")
    spread = {r: abs(score[("sd3", *r)] - score[("sd15", *r)]) for r in rows}
    assert shown_rows(browser) == sorted(rows, key=lambda r: -spread[r])
    Select(browser.find_element(By.ID, "category-select")).select_by_value("relation")
    assert sorted(shown_rows(browser)) == [(1, 0), (1, 1)]
    Select(browser.find_element(By.ID, "category-select")).select_by_value("")
    best = {r: max(score[("sd3", *r)], score[("sd15", *r)]) for r in rows}
    threshold = float(np.median(list(best.values())))
    browser.find_element(By.ID, "min-score").send_keys(repr(threshold))
    assert sorted(shown_rows(browser)) == sorted(r for r in rows if best[r] >= threshold)
    assert (
        browser.find_element(By.ID, "row-count").text
        == f"{sum(b >= threshold for b in best.values())} of 6 rows"
    )


def test_click_enlarges_a_cell_and_escape_closes_it(browser, gallery_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, data = gallery_dir
    open_page(browser, out)
    target = browser.find_element(
        By.CSS_SELECTOR, "#grid td.cell[data-model=sd15][data-prompt='2'][data-seed='1'] img"
    )
    target.click()
    modal = browser.find_element(By.ID, "modal")
    assert modal.is_displayed()
    image = browser.find_element(By.ID, "modal-image")
    assert image.get_attribute("src").endswith("images/01-sd15/0002-s1.png")
    assert image.size["width"] >= 4 * 32  # enlarged, not the thumbnail
    caption = browser.find_element(By.ID, "modal-caption").text
    assert PROMPTS[2] in caption and "sd15 · seed 1" in caption
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert not modal.is_displayed()


def test_labelling_exports_preferences_and_survives_a_reload(browser, gallery_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, data = gallery_dir
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    open_page(browser, out)
    browser.execute_script("localStorage.clear()")
    open_page(browser, out)
    browser.find_element(By.ID, "tab-label").click()
    progress = browser.find_element(By.ID, "label-progress")
    assert progress.text == "0 of 6 pairs labelled"  # 6 (prompt, seed) rows x 1 pair of models
    assert browser.find_element(By.ID, "pair-left-name").text == "image A"  # blind by default
    body = browser.find_element(By.TAG_NAME, "body")
    browser.find_element(By.ID, "choose-left").click()  # pair 0: [sd3, sd15] -> sd3
    body.send_keys("1")  # pair 1 (sides swapped): [sd15, sd3] -> sd15
    browser.find_element(By.ID, "skip").click()  # pair 2
    browser.find_element(By.ID, "choose-right").click()  # pair 3: [sd15, sd3] -> sd3
    browser.find_element(By.ID, "undo").click()  # back to pair 3, its choice dropped
    assert progress.text == "2 of 6 pairs labelled"
    browser.find_element(By.ID, "show-models").click()
    assert browser.find_element(By.ID, "pair-left-name").text == "sd15 · seed 1"
    body.send_keys(Keys.ARROW_LEFT)  # pair 3 again: left -> sd15
    assert progress.text == "3 of 6 pairs labelled"
    browser.find_element(By.ID, "export").click()
    records = [
        json.loads(line)
        for line in browser.find_element(By.ID, "export-text").get_attribute("value").splitlines()
    ]
    expected = [("sd3", "sd15", 0, 0), ("sd15", "sd3", 0, 1), ("sd15", "sd3", 1, 1)]
    for record, (chosen, rejected, prompt, seed) in zip(records, expected, strict=True):
        assert record["prompt"] == PROMPTS[prompt]
        assert record["source"] == "human"
        assert (record["chosen_model"], record["rejected_model"]) == (chosen, rejected)
        assert record["chosen_seed"] == record["rejected_seed"] == seed
        folder = {"sd3": "00-sd3", "sd15": "01-sd15"}
        assert record["chosen"] == f"images/{folder[chosen]}/{prompt:04d}-s{seed}.png"
        assert record["rejected"] == f"images/{folder[rejected]}/{prompt:04d}-s{seed}.png"
        assert record["chosen_path"] == str(out / record["chosen"])
        assert (out / record["rejected"]).is_file()
    downloaded = wait_for(lambda: list(tmp_path.glob("preferences*.jsonl")))
    assert [json.loads(line) for line in downloaded[0].read_text().splitlines()] == records
    # what the DPO trainer reads: relative paths start at the gallery (algorithm.image_root)
    pairs = read_pairs_file(downloaded[0], image_root=out)
    assert [(p.chosen, p.rejected, p.source) for p in pairs] == [
        (out / r["chosen"], out / r["rejected"], "human") for r in records
    ]

    def reopened() -> str:  # choices are kept in the browser's storage
        open_page(browser, out)
        browser.find_element(By.ID, "tab-label").click()
        return browser.find_element(By.ID, "label-progress").text

    # the page writes localStorage at once, but Chromium hands the write to its storage service
    # asynchronously: a reload in the same instant once read the state before it (1 run in many).
    # Reloading until the choices show keeps the check (they must survive a reload) without the race.
    wait_for(lambda: reopened() == "3 of 6 pairs labelled")


def test_screenshot_shows_the_grid(browser, gallery_dir, tmp_path):
    from selenium.webdriver.common.by import By

    out, _ = gallery_dir
    open_page(browser, out)
    grid = browser.find_element(By.ID, "grid")
    browser.execute_script("arguments[0].scrollIntoView()", grid)
    path = tmp_path / "gallery.png"
    assert browser.save_screenshot(str(path))
    shot = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert shot.shape[1] == 1280 and shot.shape[0] >= 600
    assert shot.std() > 20  # images and text, not a blank page
    if os.environ.get("GALLERY_SCREENSHOT"):
        shutil.copy(path, os.environ["GALLERY_SCREENSHOT"])


class RenderedClips:
    """A stand-in video model: the toy video world's own clips (something visibly moves)."""

    guidance_scale, default_steps = 1.0, 1

    def __init__(self, reverse: bool = False):
        self.reverse = reverse

    def generate(self, prompts, seeds, num_steps=None, batch_size=16):
        from align.toy.video import render_clips

        clips = render_clips(prompts, seeds)
        return clips.flip(1) if self.reverse else clips

    def describe(self):
        return {"name": "rendered", "reverse": self.reverse}


def test_a_video_gallery_shows_clips_that_play(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from rewards.base import build_reward
    from rewards.toy_video import FRAMES

    prompts = ["a red circle moving left quickly", "a blue square moving up left of a yellow circle"]
    models = {"rendered": RenderedClips(), "reversed": RenderedClips(reverse=True)}
    out = tmp_path / "video-gallery"
    data = build_gallery(models, prompts, 1, {"motion": build_reward("geneval-toy-video")}, out)
    assert all(c["image"].endswith(".gif") for c in data["cells"])
    assert all(Image.open(out / c["image"]).n_frames == FRAMES for c in data["cells"])
    rendered = [c for c in data["cells"] if c["model"] == "rendered"]
    assert all(c["best"] and c["checks"]["all"] for c in rendered)  # the verifier prefers the true motion
    assert {p["category"] for p in data["prompts"]} == {"single", "relation"}
    open_page(browser, out)
    image = browser.find_elements(By.CSS_SELECTOR, "#grid td.cell img.thumb")[0]
    wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 32)
    shots = set()
    for _ in range(8):  # over a second: a clip that plays shows more than one frame
        shots.add(image.screenshot_as_png)
        time.sleep(0.13)
    assert len(shots) > 1
