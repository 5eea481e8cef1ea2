"""How fast the web UI feels, measured in headless Chromium against a running dispatcher.

    .venv/bin/python scripts/bench_ui.py --api http://127.0.0.1:8000 --task 1 [--token T] [--frames 30]

Prints the size of the UI's files, the time from navigation to the task list drawn (p50/p95 over
--loads page loads), and the time per frame step in the viewer with the keyboard (ArrowRight until
the frame's annotations are listed and drawn; p50/p95 over --frames steps). The task should have
frames and, for a realistic viewer, annotations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

UI_DIR = Path(__file__).resolve().parents[1] / "dispatcher" / "ui"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.0f} ms, p95 {p95:.0f} ms (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, help="the dispatcher's URL")
    parser.add_argument("--task", type=int, required=True, help="a task with frames")
    parser.add_argument("--token", help="the dispatcher's API_TOKEN, if it has one")
    parser.add_argument("--frames", type=int, default=30, help="viewer steps to time")
    parser.add_argument("--loads", type=int, default=10, help="task-list loads to time")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    files = sorted(UI_DIR.iterdir())
    print(f"UI files: {len(files)}, {sum(f.stat().st_size for f in files) / 1024:.1f} KiB uncompressed, no build step")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 950})
        if args.token:
            context.add_init_script(f"sessionStorage.setItem('api-token', {args.token!r})")
        page = context.new_page()

        loads = []
        for _ in range(args.loads):
            start = time.perf_counter()
            page.goto(f"{args.api}/ui/#/tasks", wait_until="commit")
            page.locator(f"tr[data-task='{args.task}'] td.frames").wait_for()
            loads.append((time.perf_counter() - start) * 1000)
            page.goto("about:blank")
        print(f"task list, navigation to drawn: {percentiles(loads)}")

        page.goto(f"{args.api}/ui/#/tasks/{args.task}/frames/0")
        heading = page.get_by_role("heading", level=1)
        heading.filter(has_text="Frame 0 of").wait_for()
        size = int(heading.text_content().split(" of ")[1].split()[0]) + 1
        steps = []
        for frame in range(1, min(size, args.frames + 1)):
            start = time.perf_counter()
            page.keyboard.press("ArrowRight")
            heading.filter(has_text=f"Frame {frame} of").wait_for()
            page.locator("ul.objects li").first.wait_for()  # annotations fetched, listed and drawn
            steps.append((time.perf_counter() - start) * 1000)
        if steps:
            print(f"viewer, ArrowRight to the next frame drawn with its annotations: {percentiles(steps)}")
        browser.close()


if __name__ == "__main__":
    main()
