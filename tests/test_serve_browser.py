"""``md4 serve`` in a real headless browser (Debian's chromium, driven by Playwright): the page lists the runs, a
prompt and an infilling template stream into it token by token and keep the given text exactly (bold and
underlined), and the image page draws a class grid and an infill as the masks resolve."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from md4.serve.app import build_app
from md4.serve.catalog import load_runs
from md4.serve.hosting import HEADLESS_CHROMIUM_ARGS, running

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MISSING = [
    what
    for what, found in (
        ("Debian's chromium (apt-get install chromium)", shutil.which(CHROMIUM) is not None),
        ("Playwright's Python package (pip install playwright)", importlib.util.find_spec("playwright") is not None),
    )
    if not found
]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"The page is not tested in a browser: {' and '.join(MISSING)} cannot be had here."
)
# Record what the page shows at each streamed event: the tokens still masked after each text step, the picture
# of each image frame (a MutationObserver would see only the end of a burst of events).
WATCH = """() => {
    if (!window.seen) {
        const step = TextView.prototype.step;
        TextView.prototype.step = function (event) {
            step.call(this, event);
            window.seen.push(document.querySelectorAll("#samples .masked").length);
        };
        const show = window.showFrame;
        window.showFrame = (event) => { show(event); window.seen.push(event.frame); };
    }
    window.seen = [];
}"""
TEXTS = "() => Array.from(document.querySelectorAll('#samples .tokens'), (e) => e.textContent)"


@pytest.fixture(scope="module")
def browser(serve_runs):
    from playwright.sync_api import sync_playwright

    text, digits, cache = serve_runs
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(cache))
        runs = load_runs([str(text), str(digits)], device="cpu")
    with running(build_app(runs)) as url, sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=list(HEADLESS_CHROMIUM_ARGS))
        yield chromium, url
        chromium.close()


@pytest.fixture
def page(browser):
    chromium, url = browser
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(url)
    page.wait_for_selector("#runs button.active")
    yield page
    page.close()
    assert not errors, errors


def generate(page, steps: int = 12) -> None:
    page.fill("#steps", str(steps))
    page.evaluate(WATCH)
    page.click("#generate")
    page.wait_for_selector("#status.done", timeout=30_000)


def test_a_prompt_streams_into_the_page_and_is_kept_bold_and_underlined(page):
    assert page.locator("#runs button").all_inner_texts() == ["0 · text", "1 · digits"]
    page.check("#mode-prompt")
    page.fill("#text-input", "To be")
    page.fill("#num", "2")
    page.fill("#length", "24")
    generate(page)
    texts = page.evaluate(TEXTS)
    assert len(texts) == 2 and all(text.startswith("To be") and len(text) == 24 for text in texts)
    given = page.locator("#samples .sample").first.locator(".given")
    assert "".join(given.all_text_contents()) == "To be"
    style = given.first.evaluate("(e) => [getComputedStyle(e).fontWeight, getComputedStyle(e).textDecorationLine]")
    assert style == ["700", "underline"]
    assert page.locator("#samples .masked").count() == 0
    assert page.locator("#samples .drawn[data-step]").count() == 2 * (24 - 5)
    masked = page.evaluate("() => window.seen")  # after each step: streamed, not all at once
    assert len(masked) > 2 and masked[0] > 0 and masked[-1] == 0 and masked == sorted(masked, reverse=True)


def test_an_infill_fills_the_holes_and_keeps_the_template(page):
    template = "To be, or ___ to __, that _ the."
    page.check("#mode-infill")
    page.fill("#text-input", template)
    page.fill("#num", "3")
    generate(page)
    texts = page.evaluate(TEXTS)
    assert len(texts) == 3
    for text in texts:
        assert len(text) == len(template) and all(t == g for t, g in zip(text, template, strict=True) if g != "_")
    given = "".join(page.locator("#samples .sample").first.locator(".given").all_text_contents())
    assert given == template.replace("_", "")


def test_the_image_page_draws_a_class_grid_and_an_infill_as_the_masks_resolve(page):
    page.click("#runs button >> text=digits")
    page.select_option("#label", "3")
    page.fill("#guidance", "2")
    page.fill("#num-images", "4")
    generate(page, steps=24)
    frames = page.evaluate("() => window.seen")
    assert len(set(frames)) >= 3  # the start, the grid as it resolved, the samples
    size = page.locator("#image-out").evaluate("(e) => [e.naturalWidth, e.naturalHeight, e.width]")
    assert size[:2] == [2 * 8 + 2, 2 * 8 + 2] and size[2] > 100  # a 2 x 2 grid of 8 x 8, shown large
    page.check("#image-mode-infill")
    assert page.locator("#test-images .thumb.active").count() == 1
    page.click("[data-mask=top]")
    page.fill("#num-images", "3")
    generate(page)
    assert "Done" in page.inner_text("#status")
    assert page.locator("#image-out").evaluate("(e) => e.naturalWidth") == 3 * 8 + 2 * 2
