"""The steering page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium.

One page load: type a prompt, Generate, Stop mid-answer, click a middle word, type a correction,
Resume, Accept, open the review. Then the saved file is loaded with ``load_steers`` and tokenized:
the span must be exactly the typed correction against the model's words. The model is
``tests/scripted_lm.py`` slowed to 50 ms a token, so that Stop lands mid-answer and what it wrote
is known; its answer, like the prompt, holds ``<script>`` and ``<img onerror>``, which must show as
text and never run.

Outside CI the test skips when the browser is missing; under CI (``CI`` set) it fails instead:
``bash scripts/run.sh test`` installs the browser when run as root. ``LOCALPREF_SCREENSHOTS=DIR``
saves the page's two views as PNGs into DIR (the README's images come from there).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from page_helpers import LiveServer, SlowScripted  # noqa: E402

from localpref.data.load import load_steers  # noqa: E402
from localpref.data.tokenize import render_prompt, tokenize_steer  # noqa: E402
from localpref.page.app import Served, create_app  # noqa: E402
from localpref.page.session import Sampling  # noqa: E402

SYSTEM = "Answer in one line. <script>xss(1)</script>"
USER = 'Name four fruits. <img src=x onerror="xss(2)">'
PAYLOAD = '<img src=x onerror="xss(3)"><script>xss(4)</script>'
# After the payload, a long tail: Stop lands well before the end even on a loaded machine.
ANSWER = (f"Four fruits: apple, pear, plum, fig. {PAYLOAD} Also grapes, and more I could go on listing for a "
          f"while: cherries, lemons, limes, melons, oranges, peaches, apricots, bananas, mangoes and dates.")
ACCEPTED = "Four fruits: apple, "
PLAN = {"": ANSWER, ACCEPTED + "kiwi": ", plum, fig."}


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [p for p in (chromium, driver) if not Path(p).exists()]
    if missing:
        message = (f"{', '.join(missing)} missing: apt-get install chromium chromium-driver "
                   f"(bash scripts/run.sh test does it when run as root)")
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {message}")
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def browser():
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,760", "--force-device-scale-factor=1", "--disable-extensions"):
        options.add_argument(arg)
    # Selenium's own driver and browser downloads cannot work here: the paths are given.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver, path: Path) -> None:
    """Save the window as a PNG, reduced to a 128-colour palette (the README keeps these)."""
    from PIL import Image

    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)


def test_steer_in_a_real_browser(browser, smollm2_tokenizer, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tok = smollm2_tokenizer
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    model = SlowScripted(tok, render_prompt(tok, prompt), PLAN, delay=0.05)
    out = tmp_path / "steers.jsonl"
    app = create_app(Served(model, tok, "scripted test model", threading.Lock()), out,
                     defaults=Sampling(max_new_tokens=128), allowed_hosts=["127.0.0.1", "localhost"])
    shots = Path(os.environ.get("LOCALPREF_SCREENSHOTS") or tmp_path)
    d = browser
    wait = WebDriverWait(d, 20, poll_frequency=0.02)
    find = lambda css: d.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    text_of = lambda css: find(css).get_property("textContent")  # noqa: E731

    with LiveServer(app) as url:
        d.get(url)
        wait.until(lambda _: text_of("#model-id") == "scripted test model")
        d.execute_script("window.hits = []; window.xss = (n) => window.hits.push(n);")  # what a payload would call
        find("#system").send_keys(SYSTEM)
        find("#user").send_keys(USER)
        find("#generate").click()
        wait.until(lambda _: "</script>" in text_of("#answer"))  # streamed past the payload
        find("#stop").click()
        wait.until(lambda _: "clickable" in find("#answer").get_attribute("class"))
        stopped = text_of("#answer")
        assert ANSWER.startswith(stopped) and len(stopped) < len(ANSWER)

        word = next(w for w in d.find_elements(By.CSS_SELECTOR, "#answer .word")
                    if w.get_property("textContent").startswith("pear"))  # a middle word
        word.click()
        assert text_of("#correct-from") == "pear, " and find("#correction").is_displayed()
        find("#correction-text").send_keys("kiwi")
        find("#resume").click()
        wait.until(lambda _: text_of("#facts").startswith("ended"))
        rejected = stopped[len(ACCEPTED):]
        assert text_of("#answer del.rejected") == rejected and text_of("#answer ins.corrected") == "kiwi"
        assert text_of("#answer") == ACCEPTED + rejected + "kiwi, plum, fig." + "⏎ (end of answer)"
        _screenshot(d, shots / "steer-page.png")

        find("#accept").click()
        wait.until(lambda _: text_of("#status").startswith("saved"))
        find("button.tab[data-tab='review']").click()
        wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#review-list .record .tok.span"))
        shown_chosen = "".join(e.get_property("textContent") for e in
                               d.find_elements(By.CSS_SELECTOR, ".record .tok.span.chosen"))
        shown_rejected = "".join(e.get_property("textContent") for e in
                                 d.find_elements(By.CSS_SELECTOR, ".record .tok.span.rejected"))
        assert PAYLOAD in text_of("#review-list") and USER in text_of("#review-list")
        _screenshot(d, shots / "steer-review.png")
        # Every prompt and answer went in as text: nothing ran, no element came from them.
        hits, images, scripts = d.execute_script(
            "return [window.hits, document.images.length, document.scripts.length]")
        assert (hits, images, scripts) == ([], 0, 1)

    (steer,) = load_steers(out)
    assert (steer.prefix, steer.rejected, steer.corrected) == (ACCEPTED, rejected, "kiwi")
    assert not steer.rejected_ends_turn and steer.meta["model"] == "scripted test model"
    chosen, rejected_ids = tokenize_steer(steer, tok).span_ids()
    # The span is the typed correction against the model's words from the clicked word to where
    # it was stopped (BPE gives each side the space before its first word).
    assert tok.decode(chosen) == " kiwi" and tok.decode(rejected_ids) == " " + rejected
    assert (shown_chosen, shown_rejected) == (" kiwi", " " + rejected)  # the review shows those tokens
