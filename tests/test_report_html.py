"""The browsable report page: its HTML parsed back (links, escaping, order), and the page driven in headless Chromium.

The browser test speaks the W3C WebDriver protocol to chromedriver over HTTP on 127.0.0.1 with urllib (no client
library), and skips, saying why, where Chromium and chromedriver are not installed.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from noise_diffusion import report
from noise_diffusion.report_html import SCRIPT, runs_from_collected
from noise_diffusion.results import run_folder, write_json_atomic

# Prompts that break a page which does not escape them: markup, an ampersand, both quotes, a closing script tag.
CAT = 'a <b>cat</b> & a "dog" \'here\''
CAR = "a red car </script><script>alert(1)</script>"
GUIDE = "guide"


def write_run(root, method, category, prompt, seed, scores, held_out=None):
    """A finished run folder as save_run leaves it (the fields the report reads), with real PNGs of 16 x 8 pixels."""
    folder = run_folder(root / method, prompt, seed)
    folder.mkdir(parents=True)
    for shade, name in ((60, "initial.png"), (200, "best.png")):
        Image.new("RGB", (16, 8), (shade, seed * 40 % 255, 120)).save(folder / name)
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))
    record = {
        "format": 2, "prompt": prompt, "seed": seed, "initial_score": scores[0], "best_score": scores[best], "best_epoch": best,
        "epochs": [{"epoch": k, "score": s} for k, s in enumerate(scores)], "seconds": 0.1,
        "compute": {"generations": len(scores), "model_evals": 4 * len(scores), "model_backwards": 0,
                    "verifier_forward": len(scores),
                    "verifier_backward": len(scores) - 1},
        "files": {"best": "best.png", "initial": "initial.png"},
        "config": {"search": {"method": method}, "verifier": {"model": GUIDE},
                   "evaluation": {"category": category, "name": "prompts", "sha256": "0" * 64}},
    }
    write_json_atomic(folder / "result.json", record)
    if held_out is not None:
        write_json_atomic(folder / "heldout_judge.json", {"verifier": "judge", "initial_score": held_out[0],
                                                           "best_score": held_out[1]})


@pytest.fixture
def results(tmp_path):
    """Hand-chosen scores. Guide gain of noise_diffusion: (CAT, 1) 0.7, (CAT, 2) 0.1, (CAR, 1) 0.5; guide best minus
    judge best: 0.6, 0.05, -0.1; the runs of none never leave their initial image."""
    root = tmp_path / "results"
    write_run(root, "noise_diffusion", "animals", CAT, 1, [0.2, 0.9], held_out=(0.1, 0.3))
    write_run(root, "noise_diffusion", "animals", CAT, 2, [0.4, 0.5], held_out=(0.3, 0.45))
    write_run(root, "noise_diffusion", "objects", CAR, 1, [0.1, 0.3, 0.6], held_out=(0.2, 0.7))
    write_run(root, "none", "animals", CAT, 1, [0.2], held_out=(0.1, 0.1))
    write_run(root, "none", "objects", CAR, 1, [0.1])
    return root


class Page(HTMLParser):
    """What the tests read from the page: tags, images, links, prompt texts, the cards and rows in document order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.images, self.links, self.texts = [], [], [], []
        self.cards, self.rows, self.scripts = [], [], []
        self._in_text = self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("a", "link") and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "div" and attrs.get("class") == "card":
            self.cards.append((attrs["data-method"], attrs["data-category"]))
        if tag == "tr" and "data-order" in attrs:
            self.rows.append(attrs["data-category"])
        self._in_text = attrs.get("class") == "text"
        self._in_script = tag == "script"

    def handle_data(self, data):
        if self._in_text:
            self.texts.append(data)
        if self._in_script:
            self.scripts.append(data)

    def handle_endtag(self, tag):
        self._in_text = self._in_script = False


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_every_image_links_to_a_saved_png_and_prompts_are_escaped(results):
    summary = report.write_report(results)
    index = results / summary["figures"]["index"]
    assert index == results / "index.html" and (results / "summary.md").exists()
    page = parse(index)
    # 3 cards (the runs of none stay at their initial image) and 5 cells of the table, two images each
    assert len(page.images) == 2 * (3 + 5)
    for source in page.images:
        assert not source.startswith(("/", "http:", "https:", "file:")), source
        assert (results / unquote(source)).is_file(), source
    assert all(not link.startswith(("http:", "https:", "//")) for link in page.links)
    assert "link" not in page.tags  # no external style sheet
    # the prompts parse back exactly: nothing in them opened a tag, the one script is the page's own
    assert page.texts.count(CAT) == 2 + 2 and page.texts.count(CAR) == 1 + 1 and len(page.texts) == 6
    assert page.tags.count("script") == 1 and "".join(page.scripts) == SCRIPT


def test_disagreement_section_orders_runs_by_guide_minus_held_out(results):
    report.write_report(results)
    page = parse(results / "index.html")
    text = (results / "index.html").read_text(encoding="utf-8")
    # hand-worked gaps 0.6 (CAT, 1), 0.05 (CAT, 2), -0.1 (CAR, 1); the run of none (best = initial) is left out
    assert page.cards == [("noise_diffusion", "animals")] * 2 + [("noise_diffusion", "objects")]
    gaps = [text.index(f'<b class="gap">{gap}</b>') for gap in ("+0.600", "+0.050", "-0.100")]
    assert gaps == sorted(gaps)
    # the table: one row per prompt and seed, by category, prompt and seed
    assert page.rows == ["animals", "animals", "objects"]


def test_adapter_carries_the_records_scores(results):
    runs = runs_from_collected(report.collect(results))
    (run,) = [r for r in runs if r.method == "noise_diffusion" and r.prompt == CAR]
    assert (run.category, run.seed, run.guide, run.best_epoch) == ("objects", 1, GUIDE, 2)
    assert (run.guide_initial, run.guide_best, run.held_out) == (0.1, 0.6, {"judge": (0.2, 0.7)})
    assert run.gain == pytest.approx(0.5) and run.disagreement() == (pytest.approx(-0.1), "judge")
    assert (run.folder / run.initial_file).is_file() and (run.folder / run.best_file).is_file()
    (plain,) = [r for r in runs if r.method == "none" and r.prompt == CAR]
    assert plain.held_out == {} and plain.disagreement() is None


# ------------------------------------------------------------------------------------------------- the browser

def _browser() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


class WebDriver:
    """The few W3C WebDriver commands the test needs, over HTTP to a local chromedriver."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        self.session = ""

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with self.opener.open(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def command(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def run(self, script: str, asynchronous: bool = False):
        return self.command("POST", "/execute/async" if asynchronous else "/execute/sync",
                            {"script": script, "args": []})

    def click(self, selector: str) -> None:
        element = self.command("POST", "/element", {"using": "css selector", "value": selector})
        self.command("POST", f"/element/{next(iter(element.values()))}/click", {})


@pytest.fixture
def webdriver(tmp_path):
    browser, driver_binary = _browser()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([driver_binary, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = WebDriver(port)
    try:
        _start_session(driver, browser, tmp_path / "profile")
        yield driver
        driver.call("DELETE", f"/session/{driver.session}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def _start_session(driver: WebDriver, browser: str, profile: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if driver.call("GET", "/status")["ready"]:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.skip("chromedriver did not answer within 20 s")
        time.sleep(0.1)
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,800",
            f"--user-data-dir={profile}"]
    try:
        created = driver.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": browser, "args": args}}}})
    except urllib.error.HTTPError as error:
        pytest.skip(f"Chromium could not be started: {error.read()[:300]!r}")
    driver.session = created["sessionId"]
    driver.command("POST", "/timeouts", {"script": 30000})


# Scrolls every image into view in turn (they load lazily, when near the viewport), waits until all have loaded or
# failed, and returns each one's source and natural width.
LOAD_ALL_IMAGES = """
var done = arguments[arguments.length - 1], images = Array.prototype.slice.call(document.images), i = 0;
function settled() { return images.every(function (img) { return img.complete; }); }
function wait() { if (settled()) { done(images.map(function (img) { return [img.getAttribute('src'), img.naturalWidth]; })); }
                  else { setTimeout(wait, 50); } }
function step() { if (i === images.length) { wait(); return; } images[i++].scrollIntoView(); setTimeout(step, 20); }
step();
"""
# (prompt, seed) of the visible rows of the table, top to bottom, and how many cards and cells are visible
VISIBLE = """
function shown(el) { return el.offsetParent !== null; }
var rows = Array.prototype.slice.call(document.querySelectorAll('#runs tbody tr')).filter(shown);
return {rows: rows.map(function (r) { return [r.querySelector('.text').textContent, r.querySelector('small').textContent]; }),
        cards: Array.prototype.slice.call(document.querySelectorAll('.card')).filter(shown).length,
        none_cells: Array.prototype.slice.call(document.querySelectorAll('td[data-method=none]')).filter(shown).length};
"""


def test_page_loads_in_chromium_with_every_image_and_sorts(results, webdriver):
    report.write_report(results)
    webdriver.command("POST", "/url", {"url": (results / "index.html").resolve().as_uri()})
    assert webdriver.run("return document.title").startswith("Evaluation report")
    images = webdriver.run(LOAD_ALL_IMAGES, asynchronous=True)
    assert len(images) == 16 and all(width == 16 for _, width in images), images
    row = {(CAT, 1): [CAT, "seed 1 · animals"], (CAT, 2): [CAT, "seed 2 · animals"], (CAR, 1): [CAR, "seed 1 · objects"]}
    assert webdriver.run(VISIBLE)["rows"] == [row[(CAT, 1)], row[(CAT, 2)], row[(CAR, 1)]]
    # by noise_diffusion's gain (0.7, 0.1, 0.5), each way; by none's, the prompt and seed it did not run come last
    webdriver.click("#sort option[value='gain:desc:0']")
    assert webdriver.run(VISIBLE)["rows"] == [row[(CAT, 1)], row[(CAR, 1)], row[(CAT, 2)]]
    webdriver.click("#sort option[value='gain:asc:0']")
    assert webdriver.run(VISIBLE)["rows"] == [row[(CAT, 2)], row[(CAR, 1)], row[(CAT, 1)]]
    webdriver.click("#sort option[value='gain:desc:1']")
    assert webdriver.run(VISIBLE)["rows"] == [row[(CAT, 1)], row[(CAR, 1)], row[(CAT, 2)]]
    # filters: one category, then one method fewer
    webdriver.click("#category option[value='objects']")
    assert webdriver.run(VISIBLE) == {"rows": [row[(CAR, 1)]], "cards": 1, "none_cells": 1}
    webdriver.click("input[name=method][value=none]")
    assert webdriver.run(VISIBLE) == {"rows": [row[(CAR, 1)]], "cards": 1, "none_cells": 0}
    webdriver.click("#category option[value='']")
    assert webdriver.run(VISIBLE)["cards"] == 3
