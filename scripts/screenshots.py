"""The pictures the documentation shows, taken from a real `digitlab serve` in Chromium.

    python scripts/screenshots.py [--out docs/images] [--chromium /usr/bin/chromium]
                                  [--no-report]

Starts `digitlab serve` on a free port of 127.0.0.1 with the shipped model, draws a digit
on the page with the mouse, then a whole number in number mode, and saves a screenshot of
each (docs/images/drawing-page.png, docs/images/drawing-page-number.png). It uses the
Chromium already installed (never downloads a browser) and stops the server with Ctrl+C.
Then it trains the `fast` preset and keeps two images of its evaluation report
(docs/images/report-confusion-matrix.png, docs/images/report-misclassified.png).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
WAIT_MS = 30_000

# Strokes in the pad's 280x280 units.
SEVEN = [[(70, 62), (205, 62), (180, 110), (150, 170), (125, 235)]]
NUMBER = [
    [(55, 85), (55, 205)],  # 1
    [(100, 90), (165, 90), (140, 150), (122, 205)],  # 7
    [(215 + 28 * math.sin(2 * math.pi * t / 36), 147 - 58 * math.cos(2 * math.pi * t / 36))
     for t in range(39)],  # 0
]


@contextmanager
def served() -> Iterator[str]:
    """`digitlab serve` as a user starts it, on a free port; stopped with Ctrl+C."""
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", "--port", "0",
                             "--no-access-log"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", first)
        if not found:
            raise SystemExit(f"digitlab serve did not start: {first}{proc.stdout.read()}")
        # Keep reading its output so the server never blocks on a full pipe.
        threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True).start()
        yield found.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    box = page.locator("#pad").bounding_box()
    for points in strokes:
        xy = [(box["x"] + x * box["width"] / 280, box["y"] + y * box["height"] / 280)
              for x, y in points]
        page.mouse.move(*xy[0])
        page.mouse.down()
        for a, b in zip(xy, xy[1:], strict=False):
            for k in range(1, 5):  # in small steps, as a hand moves
                page.mouse.move(a[0] + (b[0] - a[0]) * k / 4, a[1] + (b[1] - a[1]) * k / 4)
        page.mouse.up()


def report_images(out: Path) -> None:
    """A real run's report: train `fast`, evaluate it with --report, keep two images."""
    with tempfile.TemporaryDirectory() as tmp:
        run, report = Path(tmp) / "run", Path(tmp) / "report"
        for command in (["train", "--preset", "fast", "--out", str(run), "--quiet"],
                        ["evaluate", str(run), "--report", str(report)]):
            subprocess.run([sys.executable, "-m", "digitlab", *command], check=True,
                           stdout=subprocess.DEVNULL)
        for name in ("confusion_matrix.png", "misclassified.png"):
            shutil.copyfile(report / name, out / f"report-{name.replace('_', '-')}")
    print(f"report images of a `fast` run in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"))
    parser.add_argument("--no-report", action="store_true",
                        help="only the page's screenshots, no training run")
    args = parser.parse_args()
    if not args.chromium.exists():
        raise SystemExit(f"{args.chromium} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with served() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(args.chromium), headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1040, "height": 720},
                                device_scale_factor=1)
        page.set_default_timeout(WAIT_MS)
        page.goto(url + "/")
        page.wait_for_function("() => document.getElementById('model-info').textContent"
                               ".startsWith('Model:')")
        draw(page, SEVEN)
        page.wait_for_function("() => document.querySelector('#bars li.top') !== null "
                               "&& document.getElementById('model-input').src !== ''")
        page.wait_for_timeout(500)  # let the bars' transition finish
        digit = page.locator("#digit").inner_text()
        page.screenshot(path=str(args.out / "drawing-page.png"))
        page.keyboard.press("Delete")
        page.keyboard.press("n")
        draw(page, NUMBER)
        page.wait_for_function("() => /digits/.test(document.getElementById('status')"
                               ".textContent)")
        page.wait_for_timeout(500)
        number = page.locator("#digit").inner_text()
        page.screenshot(path=str(args.out / "drawing-page-number.png"))
        browser.close()
    print(f"drew a 7, read {digit}; drew 170, read {number}; screenshots in {args.out}")
    if not args.no_report:
        report_images(args.out)


if __name__ == "__main__":
    main()
