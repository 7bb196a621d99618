"""Screenshots of ``md4 serve`` for the docs: the text page after an infill and the image page after a class grid,
taken in headless chromium (Playwright) from a server of two real runs.

Usage (needs md4[serve], Playwright's Python package and Debian's chromium):
    python benchmarks/serve_screenshots.py TEXT_RUN IMAGE_RUN [--out docs] [--steps 128] [--template TEXT]

It writes OUT/serve-text.png and OUT/serve-images.png (the page at 1280 pixels wide, cropped to its content).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from md4.serve.app import build_app
from md4.serve.catalog import load_runs
from md4.serve.hosting import HEADLESS_CHROMIUM_ARGS, running

TEMPLATE = (
    "ROMEO:\nBut soft, what light through ______ window breaks?\nIt is the ____, and Juliet is the ___.\n\nJULIET:\n"
)
TEMPLATE += "_" * (128 - len(TEMPLATE))  # the shakespeare-char preset's 128 characters


def finish(page, steps: int) -> None:
    page.fill("#steps", str(steps))
    page.click("#generate")
    page.wait_for_selector("#status.done", timeout=600_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text_run")
    parser.add_argument("image_run")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--steps", type=int, default=128, help="reverse steps of each job (default: %(default)s)")
    parser.add_argument("--template", default=TEMPLATE, help="the text page's infilling template")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    runs = load_runs([args.text_run, args.image_run])
    with running(build_app(runs)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=list(HEADLESS_CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
        page.goto(url)
        page.wait_for_selector("#runs button.active")
        page.check("#mode-infill")
        page.fill("#text-input", args.template)
        page.eval_on_selector("#text-input", "(e) => { e.scrollTop = 0; }")
        page.fill("#num", "2")
        page.select_option("#sampler", "top_p")
        page.fill("#top-p", "0.9")
        finish(page, args.steps)
        page.screenshot(path=out / "serve-text.png", full_page=True)
        page.click("#runs button:nth-child(2)")
        if runs[1].model.num_classes:
            page.fill("#guidance", "2")
            page.fill("#num-images", "4")
        finish(page, args.steps)
        page.screenshot(path=out / "serve-images.png", full_page=True)
        browser.close()
    print(f"wrote {out / 'serve-text.png'} and {out / 'serve-images.png'}")


if __name__ == "__main__":
    main()
