"""The web UI end to end in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against real processes: the dispatcher API (with API_TOKEN) and two chunk workers, and the local
platform serving the real YOLO v3 (tiny IR) detector, the GrabCut interactor, the colour-histogram
ReID and test probes.

Every test ends by checking that the page raised no JavaScript error. Screenshots of each page go
to ``test-output/ui/`` for a person to look at.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Page, expect, sync_playwright

from dispatcher import tracks

from helpers import PROBE, REPO, TESTDATA, TOKEN, Stack, copy_function, serve_platform, wait_until

YOLO = "openvino-omz-public-yolo-v3-tf"
GRABCUT = "opencv-grabcut"
REID = "opencv-reid-colour-histogram"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, installed by scripts/setup.sh
SCREENSHOTS = REPO / "test-output" / "ui"
# As root Chromium needs --no-sandbox; the rest keep it off a network this machine does not have.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
STREET = [TESTDATA / "ultralytics/bus.jpg", TESTDATA / "ultralytics/zidane.jpg",
          sorted((TESTDATA / "coco128-val2017/images").glob("*.jpg"))[0]]
CAT = TESTDATA / "skimage/chelsea.png"  # 451 x 300
BUS = TESTDATA / "ultralytics/bus.jpg"  # 810 x 1080
# The four people on bus.jpg (x1, y1, x2, y2), marked by hand on the image (as in test_reid.py).
BUS_PEOPLE = [(50, 400, 245, 900), (222, 405, 345, 860), (0, 550, 80, 875), (668, 395, 810, 880)]
REGION_COLOUR = (0xFF, 0xB0, 0x00)  # annotate.js's REGION_COLOUR: a region's dashed edge


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("ui-tree")
    copy_function(REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio", tree / "yolo")
    # Its help animation elsewhere, as CVAT's interactors keep theirs on GitHub.
    copy_function(REPO / "serverless/opencv/grabcut/nuclio", tree / "grabcut",
                  **{"metadata.annotations.animated_gif": "https://example.invalid/grabcut.gif"})
    copy_function(REPO / "serverless/opencv/reid-colour-histogram/nuclio", tree / "reid")
    # 0.25 s per frame on 2 workers: a 128-frame request runs ~16 s, long enough to watch and cancel.
    copy_function(PROBE, tree / "slow", **{"metadata.name": "probe-slow", "metadata.annotations.name": "Slow probe",
                                           "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.25"}],
                                           "spec.eventTimeout": "30s",
                                           "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432})
    # 10 s per frame: a run asked to cancel keeps its calls in flight for seconds ("Cancelling…"),
    # longer than a busy machine may take between seeing a call out and the click landing.
    copy_function(PROBE, tree / "stuck", **{"metadata.name": "probe-stuck", "metadata.annotations.name": "Stuck probe",
                                            "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "10"}],
                                            "spec.eventTimeout": "30s",
                                            "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432})
    copy_function(PROBE, tree / "masks", **{"metadata.name": "probe-masks", "metadata.annotations.name": "Mask probe",
                                            "metadata.annotations.spec": '[{"id": 0, "name": "thing", "type": "mask"}]',
                                            "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0"},
                                                         {"name": "PROBE_DETECT_MASK", "value": "1"}],
                                            "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432})
    copy_function(PROBE, tree / "down", **{"metadata.name": "probe-down", "metadata.annotations.name": "Broken probe",
                                           "spec.env": [{"name": "PROBE_INIT_FAIL", "value": "no weights here"}]})
    with serve_platform(tree) as running:
        yield running


@pytest.fixture(scope="module")
def stack(platform, tmp_path_factory):
    running = Stack(platform, tmp_path_factory.mktemp("ui-data"), 9, None, SERVER_FILES_ROOT=str(TESTDATA))
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run the README's setup command (bash scripts/setup.sh)"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack, request):
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    errors = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    # Where each test left the page: the first thing to look at when one fails.
    tab.screenshot(path=str(SCREENSHOTS / f"end-of-{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sign_in(page: Page, stack: Stack, path: str = "#/tasks") -> None:
    page.goto(f"{stack.url}/ui/{path}")
    dialog = page.get_by_role("dialog", name="API token")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Token").fill(TOKEN)
    dialog.get_by_role("button", name="Use token").click()
    expect(dialog).to_be_hidden()


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def task_named(stack: Stack, name: str) -> dict:
    return next(task for task in stack.ok("GET", "/api/tasks")["results"] if task["name"] == name)


def drag(page: Page, canvas, frame_width: int, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Press, move and release the left button across a canvas showing a frame ``frame_width`` wide,
    at frame pixels (the canvas may be shown scaled)."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    scale = box["width"] / frame_width

    def at(x, y):
        return box["x"] + x * scale, box["y"] + y * scale

    page.mouse.move(*at(*start))
    page.mouse.down()
    page.mouse.move(*at(*end), steps=6)
    page.mouse.up()


def label_colour(page: Page, label_id: int) -> list[int]:
    """The RGB the UI draws a label in (dom.js's labelColour)."""
    return page.evaluate("""async (id) => {
        const {labelColour} = await import('/ui/dom.js');
        const probe = new OffscreenCanvas(1, 1).getContext('2d');
        probe.fillStyle = labelColour(id); probe.fillRect(0, 0, 1, 1);
        return [...probe.getImageData(0, 0, 1, 1).data.slice(0, 3)];
    }""", label_id)


def pixels(page: Page, selector: str, points: list[tuple[int, int]]) -> list[list[int]]:
    """RGB of a canvas's pixels, in its own (unscaled) pixels."""
    return page.evaluate("""([selector, points]) => {
        const context = document.querySelector(selector).getContext('2d');
        return points.map(([x, y]) => [...context.getImageData(x, y, 1, 1).data.slice(0, 3)]);
    }""", [selector, [[round(x), round(y)] for x, y in points]])


def near(colour, want, tolerance: int = 2) -> bool:
    return max(abs(a - b) for a, b in zip(colour, want)) <= tolerance


def region_edge_share(page: Page, selector: str, y: float, x1: float, x2: float) -> float:
    """The share of the columns from x1 to x2 where the canvas shows a region's amber edge at row y
    (give or take a row: the dashed line is anti-aliased)."""
    columns = range(round(x1) + 2, round(x2) - 2)
    rows = [pixels(page, selector, [(x, y + dy) for x in columns]) for dy in (-1, 0, 1)]
    amber = [any(near(row[index], REGION_COLOUR, 60) for row in rows) for index in range(len(columns))]
    return sum(amber) / len(amber)


def inside(points: list[float], region: list[int]) -> bool:
    xs, ys = points[0::2], points[1::2]
    return region[0] <= min(xs) and max(xs) <= region[2] and region[1] <= min(ys) and max(ys) <= region[3]


def test_token_prompt_and_models_page(page, stack):
    page.goto(f"{stack.url}/")  # the root redirects to the UI
    dialog = page.get_by_role("dialog", name="API token")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Token").fill("not-the-token")
    dialog.get_by_role("button", name="Use token").click()
    expect(dialog.get_by_text("The server refused this token.")).to_be_visible()
    dialog.get_by_label("Token").fill(TOKEN)
    dialog.get_by_role("button", name="Use token").click()
    page.get_by_role("link", name="Models").click()

    functions = stack.ok("GET", "/api/lambda/functions")
    for function in functions:
        card = page.get_by_role("article", name=function["name"])
        expect(card).to_contain_text(function["id"])
        expect(card).to_contain_text(function["kind"])
        for label in function["labels_v2"][:3]:
            expect(card).to_contain_text(label["name"])
    expect(page.get_by_role("article", name="YOLO v3")).to_contain_text("State: ready")
    broken = page.get_by_role("article", name="Broken probe")
    expect(broken).to_contain_text("State: error")
    expect(broken).to_contain_text("no weights here")
    grabcut = page.get_by_role("article", name="GrabCut")
    expect(grabcut).to_contain_text("Help:")
    expect(grabcut).to_contain_text("interactor")
    # Another host's animation is a link, never loaded.
    expect(grabcut.get_by_role("link", name="How GrabCut is used (an animation on example.invalid)")).to_be_visible()
    expect(grabcut.locator("img")).to_have_count(0)
    # YOLO's 80 labels: 8 shown, the rest folded.
    yolo = page.get_by_role("article", name="YOLO v3")
    expect(yolo.locator("ul.tags").first.locator("li")).to_have_count(8)
    expect(yolo.get_by_text("72 more labels")).to_be_visible()
    expect(yolo.get_by_text("toothbrush")).to_be_hidden()
    yolo.get_by_text("72 more labels").click()
    expect(yolo.get_by_text("toothbrush")).to_be_visible()
    shoot(page, "models")


def test_no_page_loads_anything_from_another_host(page, stack):
    # Where each request went (data: and blob: URLs are the page's own), and how it failed, if it did.
    sent = []
    page.on("requestfinished", lambda request: sent.append((urlsplit(request.url).netloc or "own", None)))
    page.on("requestfailed", lambda request: sent.append((urlsplit(request.url).netloc or "own", request.failure)))
    sign_in(page, stack, "#/models")
    expect(page.get_by_role("article", name="GrabCut")).to_be_visible()
    for path in ("#/tasks", "#/no-such-page"):
        page.goto(f"{stack.url}/ui/{path}")
        page.wait_for_load_state("networkidle")
    for path in ("/docs", "/redoc"):  # the API's own documentation, from the package's files
        page.goto(f"{stack.url}{path}")
        page.wait_for_load_state("networkidle")
    expect(page.get_by_text("CVAT-compatible auto-annotation dispatcher").first).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "redoc.png"))  # the first screen: the whole page is 25,000 px
    assert any(host == urlsplit(stack.url).netloc for host, _ in sent)
    # ReDoc asks for its footer logo from its CDN: the pages' Content-Security-Policy stops it in
    # the browser, so nothing leaves the machine.
    elsewhere = {(host, failure) for host, failure in sent if host not in ("own", urlsplit(stack.url).netloc)}
    assert elsewhere <= {("cdn.redoc.ly", "csp")}


def test_a_missing_page_offers_the_way_back(page, stack):
    sign_in(page, stack)
    page.goto(f"{stack.url}/ui/#/no-such-page")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    expect(page.get_by_text("There is no page at #/no-such-page.")).to_be_visible()
    page.goto(f"{stack.url}/ui/#/tasks/987654")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    expect(page.get_by_text("(HTTP 404)", exact=False)).to_be_visible()
    shoot(page, "not-found")
    page.get_by_role("link", name="← Back to the tasks").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Tasks")


def test_upload_task_annotate_view_and_detect(page, stack):
    name = f"street-{uuid.uuid4().hex[:6]}"
    sign_in(page, stack)
    form = page.get_by_role("form", name="Create a task")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Label name").fill("person")
    form.get_by_role("button", name="Add label").click()
    form.get_by_label("Label name").nth(1).fill("bus")
    form.get_by_role("button", name="Add label").click()
    form.get_by_label("Label name").nth(2).fill("car")
    form.get_by_label("Shape type").nth(2).select_option("rectangle")
    form.get_by_role("button", name="Add attribute").nth(2).click()
    form.get_by_label("Attribute name").fill("colour")
    form.get_by_label("Values").fill("red, blue, other")
    form.get_by_label("Images to upload").set_input_files([str(path) for path in STREET])
    shoot(page, "tasks-create")
    form.get_by_role("button", name="Create task").click()

    row = page.get_by_role("row").filter(has_text=name)
    expect(row.locator("td.frames")).to_have_text("3")
    expect(row).to_contain_text("person, bus, car")  # the labels, read from /api/labels
    task = task_named(stack, name)
    labels = stack.labels(task["id"])
    assert [label["name"] for label in labels] == ["person", "bus", "car"]
    car = labels[2]
    assert (car["type"], car["attributes"][0]["name"], car["attributes"][0]["values"]) == \
        ("rectangle", "colour", ["red", "blue", "other"])
    assert [frame["name"] for frame in stack.ok("GET", f"/api/tasks/{task['id']}/data/meta")["frames"]] == \
        [path.name for path in STREET]

    # The Automatic annotation dialog: labels matched by name, the rest shown as unmatched.
    row.get_by_role("button", name=f"Automatic annotation of task {name}").click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    expect(dialog.get_by_label("Model").locator("option", has_text="Broken probe")).to_be_disabled()
    dialog.get_by_label("Model").select_option(YOLO)
    expect(dialog.get_by_label("Task label for model label person", exact=True)).to_have_value("person")
    expect(dialog.get_by_label("Task label for model label bus", exact=True)).to_have_value("bus")
    expect(dialog.get_by_label("Task label for model label car", exact=True)).to_have_value("car")
    expect(dialog.get_by_label("Task label for model label dog", exact=True)).to_have_value("")
    expect(dialog.locator("tr[data-model-label=dog]")).to_contain_text("no task label of this name")
    dialog.get_by_label("Threshold").fill("0.3")
    shoot(page, "annotate-dialog")
    dialog.get_by_role("button", name="Annotate").click()
    expect(dialog).to_be_hidden()

    finished = page.locator("article.request[data-status=finished]").filter(has_text=f"on task {task['id']}")
    expect(finished).to_contain_text("3 / 3 frames", timeout=60_000)
    expect(finished).to_contain_text("0 failed")
    expect(finished).to_contain_text("Finished: 3 frames annotated")
    stored = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")
    assert stored["shapes"], "YOLO found nothing on bus.jpg and zidane.jpg"
    expect(row.locator("td.annotations")).to_have_text(str(len(stored["shapes"])))
    request = stack.ok("GET", "/api/lambda/requests")
    request = next(r for r in request if r["function"]["task"] == task["id"])
    assert request["function"]["threshold"] == 0.3
    shoot(page, "tasks")

    # The viewer: frame 0's shapes listed, with labels and confidences, and drawn on the canvas.
    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}/frames/0")
    frame0 = [shape for shape in stored["shapes"] if shape["frame"] == 0]
    objects = page.get_by_role("list", name="Objects on this frame").get_by_role("listitem")
    expect(objects).to_have_count(len(frame0))
    names = {label["id"]: label["name"] for label in stack.labels(task["id"])}
    first = frame0[0]
    expect(objects.first).to_contain_text(f"rectangle {names[first['label_id']]} · {first['score']:.2f}")
    assert 0.3 <= first["score"] <= 1
    drawn = page.evaluate("""async ([shape]) => {
        const {labelColour} = await import('/ui/dom.js');
        const probe = new OffscreenCanvas(1, 1).getContext('2d');
        probe.fillStyle = labelColour(shape.label_id); probe.fillRect(0, 0, 1, 1);
        const want = [...probe.getImageData(0, 0, 1, 1).data.slice(0, 3)];
        const canvas = document.querySelector('canvas');
        const [x1, y1, x2, y2] = shape.points;
        const got = [...canvas.getContext('2d')
            .getImageData(Math.round(x1), Math.round((y1 + y2) / 2), 1, 1).data.slice(0, 3)];
        return {want, got};
    }""", [first])
    # The box's left edge, in its label colour.
    assert np.abs(np.subtract(drawn["want"], drawn["got"])).max() <= 2, drawn
    shoot(page, "viewer")

    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text("Frame 0 (1 of 3)")
    page.keyboard.press("ArrowRight")
    expect(heading).to_contain_text("Frame 1 (2 of 3)")
    expect(heading).to_contain_text("zidane.jpg")
    page.keyboard.press("ArrowRight")
    expect(heading).to_contain_text("Frame 2 (3 of 3)")
    page.keyboard.press("ArrowRight")  # the last frame: stays
    page.keyboard.press("ArrowLeft")
    expect(heading).to_contain_text("Frame 1 (2 of 3)")
    assert page.url.endswith(f"#/tasks/{task['id']}/frames/1")

    # Detect on this frame only: the same model at the same threshold adds the same shapes again.
    frame1 = [shape for shape in stored["shapes"] if shape["frame"] == 1]
    page.get_by_label("Detector", exact=True).select_option(YOLO)
    page.get_by_label("Threshold").fill("0.3")
    page.get_by_role("button", name="Detect", exact=True).click()
    expect(page.get_by_text(f"Added {len(frame1)} shape(s) and 0 tag(s).")).to_be_visible()
    expect(objects).to_have_count(2 * len(frame1))
    after = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert len(after) == len(stored["shapes"]) + len(frame1)
    assert sorted((s["label_id"], s["points"]) for s in after if s["frame"] == 1 and s["id"] not in
                  {old["id"] for old in stored["shapes"]}) == sorted((s["label_id"], s["points"]) for s in frame1)


def test_server_files_task_live_progress_and_cancel(page, stack):
    name = f"coco-{uuid.uuid4().hex[:6]}"
    sign_in(page, stack)
    form = page.get_by_role("form", name="Create a task")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Label name").fill("thing")
    form.get_by_label("Files on the server").check()
    files = form.get_by_role("group", name="Server files")
    files.get_by_role("button", name="coco128-val2017/").click()
    files.get_by_role("button", name="images/").click()
    files.get_by_role("button", name="Select all 128 images").click()
    expect(form.get_by_text("128 server file(s) selected")).to_be_visible()
    shoot(page, "tasks-server-files")
    form.get_by_role("button", name="Create task").click()
    row = page.get_by_role("row").filter(has_text=name)
    expect(row.locator("td.frames")).to_have_text("128")
    task = task_named(stack, name)

    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Task {task['id']}: {name}")
    page.get_by_role("button", name="Automatic annotation", exact=True).click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    dialog.get_by_label("Model").select_option("probe-slow")
    expect(dialog.get_by_label("Task label for model label thing", exact=True)).to_have_value("thing")
    dialog.get_by_role("button", name="Annotate").click()

    # Progress moves while we watch: several different counts below the total are shown.
    running = page.locator("article.request").filter(has_text="probe-slow")
    seen = set()

    def progressed():
        text = running.locator(".done").text_content()
        seen.add(text)
        return len([t for t in seen if not t.startswith("0 /")]) >= 3
    wait_until(progressed, 60, "the progress to move at least three times", 0.1)
    expect(running.locator(".fps")).not_to_have_text("0.0 frames/s")
    expect(running.locator(".eta")).to_contain_text("ETA")
    shoot(page, "task-running")
    running.get_by_role("button", name="Cancel").click()

    canceled = page.locator("article.request[data-status=canceled]")
    expect(canceled).to_contain_text("Canceled on request after", timeout=60_000)
    expect(canceled).to_contain_text("were kept")
    record = next(r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"])
    assert (record["status"], record["cancel_requested"]) == ("failed", True) and 0 < record["frames"]["done"] < 128
    expect(canceled.locator(".done")).to_have_text(f"{record['frames']['done']} / 128 frames")
    stored = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert len(stored) == record["frames"]["done"]  # the probe draws one thing per frame
    expect(page.locator("p.task-numbers")).to_contain_text(f"{len(stored)} annotations · 1 job(s)")
    shoot(page, "task-canceled")


def test_interactor_box_clicks_and_save(page, stack):
    task = stack.task([{"name": "cat", "type": "mask"}], [CAT])
    sign_in(page, stack, f"#/tasks/{task['id']}/frames/0")
    page.get_by_label("Interactor", exact=True).select_option("opencv-grabcut")
    expect(page.get_by_text("Optionally drag a box around the object first.")).to_be_visible()
    page.get_by_label("Label", exact=True).select_option(label="cat")
    canvas = page.locator("canvas")
    box = canvas.bounding_box()
    scale = box["width"] / 451  # chelsea.png is 451 x 300; the canvas may be shown smaller

    def at(x, y):
        return box["x"] + x * scale, box["y"] + y * scale

    page.mouse.move(*at(60, 20))
    page.mouse.down()
    page.mouse.move(*at(200, 150), steps=5)
    page.mouse.move(*at(410, 295), steps=5)
    page.mouse.up()
    status = page.get_by_role("status").filter(has_text="Mask of")
    expect(status).to_contain_text("from 0 positive and 0 negative point(s) and a box")
    page.mouse.click(*at(230, 170))
    expect(status).to_contain_text("from 1 positive and 0 negative point(s) and a box")
    page.mouse.click(*at(400, 40), button="right")
    expect(status).to_contain_text("from 1 positive and 1 negative point(s) and a box")
    shoot(page, "interactor")
    page.get_by_role("button", name="Save as annotation").click()

    objects = page.get_by_role("list", name="Objects on this frame").get_by_role("listitem")
    expect(objects).to_have_count(1)
    expect(objects.first).to_contain_text("mask cat")
    expect(objects.first).to_contain_text("(semi-auto)")
    [shape] = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    (cat,) = stack.labels(task["id"])
    assert (shape["type"], shape["label_id"], shape["source"]) == ("mask", cat["id"], "semi-auto")
    left, top, right, bottom = shape["points"][-4:]
    runs = shape["points"][:-4]
    assert sum(runs) == (right - left + 1) * (bottom - top + 1)
    area = sum(runs[1::2])
    assert area > 0.2 * (right - left + 1) * (bottom - top + 1)
    # Inside the drawn box (corners rounded to pixels), and the negative point stayed out.
    assert left >= 58 and top >= 18 and right <= 412 and bottom <= 297
    mask = np.repeat(np.arange(len(runs)) % 2, runs).reshape(bottom - top + 1, right - left + 1)
    assert not (left <= 400 <= right and top <= 40 <= bottom and mask[40 - top, 400 - left])
    shoot(page, "viewer-saved-mask")

    # Deleting it from the list removes it from the task.
    objects.first.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("No annotations on this frame.")).to_be_visible()
    assert stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"] == []


def test_api_errors_are_shown_in_words(page, stack):
    sign_in(page, stack)
    form = page.get_by_role("form", name="Create a task")
    form.get_by_label("Name", exact=True).fill("no label")
    form.get_by_label("Label name").fill("a")
    form.get_by_role("button", name="Add label").click()
    form.get_by_label("Label name").nth(1).fill("a")  # the same name twice: the API refuses it
    form.get_by_label("Images to upload").set_input_files([str(CAT)])
    form.get_by_role("button", name="Create task").click()
    alert = page.locator("#errors")
    expect(alert).to_contain_text("POST /api/tasks")
    expect(alert).to_contain_text("HTTP 400")
    expect(alert).to_contain_text("'a'")
    shoot(page, "error")

    # A request on a task that is already being annotated: the dialog shows the 409 and stays open.
    task = stack.task([{"name": "thing"}], [CAT] * 40)
    first = stack.ok("POST", "/api/lambda/requests", json={"function": "probe-slow", "task": task["id"]})
    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}")
    page.get_by_role("button", name="Automatic annotation", exact=True).click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    dialog.get_by_label("Model").select_option("probe-slow")
    dialog.get_by_role("button", name="Annotate").click()
    expect(dialog.get_by_role("alert")).to_contain_text("HTTP 409")
    expect(dialog).to_be_visible()
    stack.ok("DELETE", f"/api/lambda/requests/{first['id']}", 204)
    stack.wait(first["id"])

    page.goto(f"{stack.url}/ui/#/tasks/999999")  # a page of its own, with the way back
    expect(page.get_by_role("main")).to_contain_text("task 999999 does not exist")
    expect(page.get_by_role("link", name="← Back to the tasks")).to_be_visible()


def test_pages_are_served_without_the_token_and_the_api_is_not(stack):
    home = httpx.get(f"{stack.url}/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/ui/"
    page = httpx.get(f"{stack.url}/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    script = httpx.get(f"{stack.url}/ui/viewer.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{stack.url}/api/server/share").status_code == 401

    listing = stack.ok("GET", "/api/server/share", params={"directory": "/"})
    assert {"name": "coco128-val2017", "type": "DIR", "mime_type": "DIR"} in listing
    assert {"name": "bus.jpg", "type": "REG", "mime_type": "image"} in stack.ok(
        "GET", "/api/server/share", params={"directory": "ultralytics"})
    assert "must be a folder under the server files root" in stack.error(
        "GET", "/api/server/share", 400, params={"directory": "../"})
    assert "no folder 'nowhere'" in stack.error("GET", "/api/server/share", 404, params={"directory": "nowhere"})


def submit_dialog(page: Page, stack: Stack, task: dict, function_id: str, *, polygons: bool = False,
                  cleanup: bool = False) -> dict:
    """The Automatic annotation dialog on the task's page, filled in and sent: the request it made."""
    page.goto(f"{page.url.split('#')[0]}#/tasks/{task['id']}")
    page.get_by_role("button", name="Automatic annotation", exact=True).click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    dialog.get_by_label("Model").select_option(function_id)
    dialog.get_by_label("Return masks as polygons").set_checked(polygons)
    dialog.get_by_label("Clean old annotations").set_checked(cleanup)
    dialog.get_by_role("button", name="Annotate").click()
    expect(dialog).to_be_hidden()  # the request exists once the dialog closes
    return next(r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"])


def run_dialog(page: Page, stack: Stack, task: dict, function_id: str, *, polygons: bool = False,
               cleanup: bool = False) -> None:
    request = submit_dialog(page, stack, task, function_id, polygons=polygons, cleanup=cleanup)
    # One request id per target (CVAT's): a rerun's record replaces the record of the run before it.
    assert stack.wait(request["id"])["status"] == "finished"
    expect(page.locator("article.request[data-status=finished]")).to_contain_text("Finished: 2 frames annotated.")


def test_masks_polygons_and_cleanup_options(page, stack):
    """The dialog's two switches reach the request: masks stored as masks or as traced polygons, and
    "Clean old annotations" removing what was there before (a manual box, earlier runs); without
    it a run adds to what is there."""
    task = stack.task([{"name": "thing", "type": "any"}], [CAT, CAT])
    (thing,) = stack.labels(task["id"])
    manual = {"frame": 0, "label_id": thing["id"], "type": "rectangle", "points": [50, 50, 90, 90]}
    stack.ok("PATCH", f"/api/tasks/{task['id']}/annotations", params={"action": "create"}, json={"shapes": [manual]})
    sign_in(page, stack, f"#/tasks/{task['id']}")

    def stored():
        return sorted((s["type"], s["source"])
                      for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"])

    run_dialog(page, stack, task, "probe-masks")
    assert stored() == [("mask", "auto"), ("mask", "auto"), ("rectangle", "manual")]
    masks = [s for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"] if s["type"] == "mask"]
    assert [s["points"] for s in masks] == [[0, 200, 5, 5, 24, 14]] * 2

    run_dialog(page, stack, task, "probe-masks", polygons=True)
    assert stored() == [("mask", "auto")] * 2 + [("polygon", "auto")] * 2 + [("rectangle", "manual")]
    polygon = next(s for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
                   if s["type"] == "polygon")
    xs, ys = polygon["points"][0::2], polygon["points"][1::2]
    assert (min(xs), min(ys), max(xs), max(ys)) == (5, 5, 24, 14)  # the mask's outline

    run_dialog(page, stack, task, "probe-masks", cleanup=True)
    assert stored() == [("mask", "auto"), ("mask", "auto")]
    expect(page.locator("p.task-numbers")).to_contain_text("2 annotations")

    # The viewer draws the mask in its label's colour, where the mask is and nowhere else.
    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}/frames/0")
    expect(page.get_by_role("list", name="Objects on this frame")).to_contain_text("mask thing · 1.00")
    inside, outside = page.evaluate("""async () => {
        const {labelColour} = await import('/ui/dom.js');
        const canvas = document.querySelector('canvas');
        const plain = new OffscreenCanvas(canvas.width, canvas.height).getContext('2d');
        const frame = await (await fetch('/api/tasks/' + location.hash.split('/')[2] + '/data?type=frame&number=0',
            {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('api-token')}})).blob();
        plain.drawImage(await createImageBitmap(frame), 0, 0);
        const drawn = canvas.getContext('2d');
        const differs = (x, y) => {
            const a = drawn.getImageData(x, y, 1, 1).data, b = plain.getImageData(x, y, 1, 1).data;
            return Math.max(...[0, 1, 2].map((i) => Math.abs(a[i] - b[i])));
        };
        return [differs(15, 12), differs(40, 40)];
    }""")
    assert inside > 20 and outside == 0, (inside, outside)
    shoot(page, "viewer-mask")


def test_a_run_with_failed_frames_reads_partly_failed(page, stack):
    """CVAT's UI would show it as done (status finished, its annotations written); ours says which
    frames failed and why, from the request's outcome."""
    task = stack.task([{"name": "person", "type": "rectangle"}], [BUS] * 3)
    (frame_1,) = (stack.data_dir / f"tasks/{task['id']}/frames").glob("1.*")
    frame_1.write_bytes(b"no longer an image")  # YOLO refuses it
    sign_in(page, stack, f"#/tasks/{task['id']}")
    request = submit_dialog(page, stack, task, YOLO)
    final = stack.wait(request["id"])
    assert (final["status"], final["outcome"], final["frames"]["failed"]) == ("finished", "partly_failed", 1)
    shown = page.locator(f"article.request[data-request='{request['id']}']")
    expect(shown).to_have_attribute("data-status", "partly_failed")
    expect(shown.locator(".status")).to_have_text("partly failed")
    expect(shown).to_contain_text("Finished: 2 frames annotated, 1 failed.")
    people = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert {shape["frame"] for shape in people} == {0, 2}  # the two frames YOLO could read
    expect(page.locator("p.task-numbers")).to_contain_text(f"{len(people)} annotations")
    shown.get_by_text("Failed frames (1)").click()
    expect(shown.locator("details li")).to_have_text([f"frame 1: {final['failures'][0]['reason']}"])
    shoot(page, "request-partly-failed")


def test_delete_task_from_the_list(page, stack):
    idle = stack.task([{"name": "thing"}], [CAT])
    busy = stack.task([{"name": "thing"}], [CAT] * 40)
    running = stack.ok("POST", "/api/lambda/requests", json={"function": "probe-slow", "task": busy["id"]})
    sign_in(page, stack)
    page.on("dialog", lambda confirm: confirm.accept())  # "Delete task ...?"

    page.locator(f"tr[data-task='{busy['id']}']").get_by_role("button", name="Delete").click()
    expect(page.locator("#errors")).to_contain_text(f"task {busy['id']} has a running request")
    expect(page.locator(f"tr[data-task='{busy['id']}']")).to_be_visible()

    page.locator(f"tr[data-task='{idle['id']}']").get_by_role("button", name="Delete").click()
    expect(page.locator(f"tr[data-task='{idle['id']}']")).to_have_count(0)
    assert "does not exist" in stack.error("GET", f"/api/tasks/{idle['id']}", 404)
    stack.ok("DELETE", f"/api/lambda/requests/{running['id']}", 204)
    stack.wait(running["id"])


def test_dialog_region_drawn_on_the_first_frame(page, stack, tmp_path):
    """The dialog's region: the server's 400 in words, then a region dragged on the first frame
    (fields follow), changed in a field (the drawing follows), sent as roi; every shape lands inside."""
    mirrored = tmp_path / "bus-mirrored.jpg"  # a second frame of another size, with people at other places
    ImageOps.mirror(Image.open(BUS)).resize((780, 1000)).save(mirrored, quality=90)
    task = stack.task([{"name": "person", "type": "rectangle"}, {"name": "bus", "type": "rectangle"}], [BUS, mirrored])
    sign_in(page, stack, f"#/tasks/{task['id']}")
    page.get_by_role("button", name="Automatic annotation", exact=True).click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    dialog.get_by_label("Model").select_option(YOLO)
    summary = dialog.locator("details.region > summary")
    expect(summary).to_have_text("Region: the whole frame")
    summary.click()
    region = dialog.get_by_role("group", name="Region")
    expect(region).to_contain_text("Frame 0 (bus.jpg, 810×1080)")
    expect(region).to_contain_text("the region must fit every frame, within 780×1000")
    fields = {name: region.get_by_label(name, exact=True) for name in ("x", "y", "width", "height")}

    # A region past frame 0's right edge: the server's own words, and the dialog stays open.
    for name, value in zip(fields, ("500", "300", "400", "200")):
        fields[name].fill(value)
    expect(summary).to_have_text("Region: x 500, y 300, 400 x 200")
    dialog.get_by_role("button", name="Annotate").click()
    expect(dialog.get_by_role("alert")).to_have_text(
        "POST /api/lambda/requests: ROI is outside the image: frame 0 is 810x1080 (HTTP 400)")
    region.get_by_role("button", name="Clear").click()
    assert [field.input_value() for field in fields.values()] == ["", "", "", ""]
    expect(summary).to_have_text("Region: the whole frame")

    # Dragged on the picture (shown at 29 %, so a few pixels of rounding): the fields follow.
    canvas = region.locator("canvas")
    drag(page, canvas, 810, (40, 200), (760, 700))
    x, y, width, height = (int(field.input_value()) for field in fields.values())
    assert abs(x - 40) <= 6 and abs(y - 200) <= 6 and abs(x + width - 760) <= 6 and abs(y + height - 700) <= 6, \
        (x, y, width, height)
    expect(summary).to_have_text(f"Region: x {x}, y {y}, {width} x {height}")
    # Typed: the drawing follows, its dashed amber bottom edge moving up to the new height.
    scale = canvas.evaluate("(canvas) => canvas.width") / 810
    fields["height"].fill("450")
    expect(summary).to_have_text(f"Region: x {x}, y {y}, {width} x 450")
    assert region_edge_share(page, "canvas.region-canvas", (y + 450) * scale, x * scale, (x + width) * scale) > 0.3
    dialog.get_by_label("Threshold").fill("0.3")
    shoot(page, "annotate-dialog-region")
    dialog.get_by_role("button", name="Annotate").click()
    expect(dialog).to_be_hidden()

    roi = [x, y, x + width, y + 450]
    finished = page.locator("article.request[data-status=finished]")
    expect(finished).to_contain_text("Finished: 2 frames annotated.", timeout=60_000)
    expect(finished).to_contain_text(f"region x {x}, y {y}, {width} x 450")
    request = next(r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"])
    assert request["function"]["roi"] == roi
    shapes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert {shape["frame"] for shape in shapes} == {0, 1}, "YOLO found nobody inside the region"
    assert all(inside(shape["points"], roi) for shape in shapes), [s["points"] for s in shapes]
    shoot(page, "task-region")


def test_viewer_region_with_detect_and_an_interactor(page, stack, tmp_path):
    """A region dragged on the viewer's canvas: Detect finds only inside it, GrabCut's mask stays in
    it, a click outside it is refused in words before any call, and Clear region ends it."""
    small = tmp_path / "bus-small.png"  # 405 x 540
    Image.open(BUS).convert("RGB").resize((405, 540)).save(small)
    task = stack.task([{"name": "person", "type": "any"}], [small])
    sign_in(page, stack, f"#/tasks/{task['id']}/frames/0")
    canvas = page.locator(".stage canvas")
    region_text = page.locator(".region-text")
    expect(region_text).to_have_text("Region: the whole frame")
    expect(page.get_by_role("button", name="Clear region")).to_be_disabled()
    page.get_by_role("button", name="Draw region").click()
    expect(page.get_by_role("button", name="Drawing… (Esc stops)")).to_have_attribute("aria-pressed", "true")
    drag(page, canvas, 405, (20, 100), (380, 450))
    expect(region_text).to_contain_text("Detect and the interactors now work inside it")
    x, y, width, height = map(int, re.search(r"x (\d+), y (\d+), (\d+) x (\d+)", region_text.text_content()).groups())
    assert max(abs(x - 20), abs(y - 100), abs(x + width - 380), abs(y + height - 450)) <= 2, (x, y, width, height)
    region = [x, y, x + width, y + height]
    expect(page.get_by_role("button", name="Draw region")).to_have_attribute("aria-pressed", "false")
    # Drawn dashed in amber (an interactor's box is cyan), the frame outside it dimmed.
    assert region_edge_share(page, ".stage canvas", y, x, x + width) > 0.3

    # Detect: only what is inside the region.
    page.get_by_label("Detector", exact=True).select_option(YOLO)
    page.get_by_label("Threshold").fill("0.3")
    page.get_by_role("button", name="Detect", exact=True).click()
    expect(page.locator(".detect-status")).to_contain_text("found inside the region")
    shapes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert shapes and all(inside(shape["points"], region) for shape in shapes), shapes
    objects = page.get_by_role("list", name="Objects on this frame").get_by_role("listitem")
    expect(objects).to_have_count(len(shapes))
    shoot(page, "viewer-region-detect")

    # GrabCut in the region: clicks outside it are refused in words, nothing is called.
    page.get_by_label("Interactor", exact=True).select_option(GRABCUT)
    page.get_by_label("Label", exact=True).select_option(label="person")
    status = page.locator(".ai-status")
    box = canvas.bounding_box()
    scale = box["width"] / 405
    page.mouse.click(box["x"] + 8 * scale, box["y"] + 60 * scale)
    expect(status).to_contain_text(f"is outside the region x {x}, y {y}, {width} x {height}: click inside it, "
                                   "or clear the region.")
    page.mouse.click(box["x"] + 390 * scale, box["y"] + 300 * scale, button="right")
    expect(status).to_contain_text("is outside the region")
    # A box around the man in the black coat, dragged past the region's bottom: clipped to the
    # region; then a positive click on him.
    drag(page, canvas, 405, (100, 200), (205, 470))
    expect(status).to_contain_text("from 0 positive and 0 negative point(s) and a box", timeout=60_000)
    page.mouse.click(box["x"] + 150 * scale, box["y"] + 300 * scale)
    expect(status).to_contain_text("from 1 positive and 0 negative point(s) and a box")
    shoot(page, "viewer-region-interactor")
    page.get_by_role("button", name="Save as annotation").click()
    expect(objects).to_have_count(len(shapes) + 1)
    mask = next(s for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"] if s["type"] == "mask")
    left, top, right, bottom = mask["points"][-4:]  # inclusive
    assert region[0] <= left and region[1] <= top and right < region[2] and bottom < region[3], \
        (mask["points"][-4:], region)
    assert sum(mask["points"][:-4][1::2]) > 1000  # a real mask, not a speck

    page.get_by_role("button", name="Clear region").click()
    expect(region_text).to_contain_text("Region: the whole frame")
    expect(page.get_by_role("button", name="Clear region")).to_be_disabled()


def pan_frames(folder: Path, count: int, step: int) -> tuple[list[Path], list[list[list[float]]]]:
    """Frames of a camera panning right across bus.jpg ``step`` px per frame, at half size (380 x
    280), and the four people's boxes on each (clipped to the frame)."""
    photo = Image.open(BUS).convert("RGB")
    paths, boxes = [], []
    for index in range(count):
        left, top = index * step, 360
        path = folder / f"pan{index}.jpg"
        photo.crop((left, top, left + 760, top + 560)).resize((380, 280)).save(path, quality=92)
        paths.append(path)
        boxes.append([[max(x1 - left, 0) / 2, max(y1 - top, 0) / 2, min(x2 - left, 760) / 2, min(y2 - top, 560) / 2]
                      for x1, y1, x2, y2 in BUS_PEOPLE])
    return paths, boxes


def test_reid_from_the_dialog_and_tracks_in_the_viewer(page, stack, tmp_path):
    """ReID in the dialog (its own two numbers, the detector's options gone) links rectangles made
    through the API into tracks; the viewer lists and draws the tracks visible on a middle frame,
    interpolates between keyframes, and deletes a whole track."""
    paths, boxes = pan_frames(tmp_path, 4, 8)
    task = stack.task([{"name": "person", "type": "rectangle"}, {"name": "marker", "type": "rectangle"}], paths)
    person, marker = (label["id"] for label in stack.labels(task["id"]))
    stack.ok("PATCH", f"/api/tasks/{task['id']}/annotations", params={"action": "create"}, json={"shapes": [
        {"frame": frame, "label_id": person, "type": "rectangle", "points": points}
        for frame, frame_boxes in enumerate(boxes) for points in frame_boxes]})
    sign_in(page, stack, f"#/tasks/{task['id']}")
    page.get_by_role("button", name="Automatic annotation", exact=True).click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    dialog.get_by_label("Model", exact=True).select_option(YOLO)
    expect(dialog.get_by_label("Return masks as polygons")).to_be_visible()
    dialog.get_by_label("Model", exact=True).select_option(REID)
    for gone in ("Return masks as polygons", "Clean old annotations"):
        expect(dialog.get_by_label(gone)).to_have_count(0)
    expect(dialog.locator("details.region, .mapping")).to_have_count(0)
    expect(dialog.get_by_label("Threshold")).to_have_value("0.5")
    expect(dialog.get_by_label("Maximum distance")).to_have_value("50")
    shoot(page, "annotate-dialog-reid")
    dialog.get_by_role("button", name="Annotate").click()
    expect(dialog).to_be_hidden()

    finished = page.locator("article.request[data-status=finished]")
    expect(finished).to_contain_text("3 / 3 frame pairs", timeout=60_000)
    expect(finished).to_contain_text("Finished: 3 frame pairs linked; the task's rectangles are now tracks.")
    request = next(r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"])
    assert (request["function"]["id"], request["function"]["threshold"], request["function"]["max_distance"]) == \
        (REID, 0.5, 50)
    data = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")
    assert data["shapes"] == [] and data["tracks"]
    shoot(page, "task-reid")

    # A track of our own between keyframes 0 and 2, gone from frame 3 (an outside keyframe).
    keyframe = {"type": "rectangle", "outside": False}
    stack.ok("PATCH", f"/api/tasks/{task['id']}/annotations", params={"action": "create"}, json={"tracks": [
        {"frame": 0, "label_id": marker, "shapes": [{**keyframe, "frame": 0, "points": [250, 200, 290, 240]},
                                                    {**keyframe, "frame": 2, "points": [290, 200, 330, 240]},
                                                    {**keyframe, "frame": 3, "points": [290, 200, 330, 240],
                                                     "outside": True}]}]})

    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}/frames/1")
    on_frame = stack.ok("GET", f"/api/tasks/{task['id']}/annotations", params={"frame": 1})["tracks"]
    people = [track for track in on_frame if track["label_id"] == person]
    [ours] = [track for track in on_frame if track["label_id"] == marker]
    items = page.get_by_role("list", name="Objects on this frame").locator("li[data-type=track]")
    expect(items).to_have_count(len(people) + 1)
    for track in people:
        expect(items.filter(has_text=f"track person #{track['id']} · rectangle, keyframe")).to_have_count(1)
    expect(items.filter(has_text=f"track marker #{ours['id']} · rectangle, interpolated")).to_have_count(1)
    # Drawn: each person's box on frame 1 (its left edge, half-way down, in the label's colour), and
    # ours half-way between its keyframes (left edge at x 270, not 250 or 290).
    edges = [(track["shapes"][1]["points"][0], sum(track["shapes"][1]["points"][1::2]) / 2) for track in people
             if track["shapes"][0]["frame"] == 0 and track["shapes"][1]["frame"] == 1]
    assert edges, people
    drawn = pixels(page, ".stage canvas", [*edges, (270, 220), (250, 220), (290, 220)])
    assert all(near(colour, label_colour(page, person)) for colour in drawn[:len(edges)]), drawn
    assert near(drawn[-3], label_colour(page, marker)), drawn
    assert not any(near(colour, label_colour(page, marker), 20) for colour in drawn[-2:]), drawn
    shoot(page, "viewer-tracks")

    # Delete removes the whole track.
    gone = people[0]["id"]
    items.filter(has_text=f"track person #{gone} ").get_by_role("button", name="Delete").click()
    expect(items).to_have_count(len(people))
    assert gone not in {track["id"] for track in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["tracks"]}

    # On frame 3 our track is outside: not listed; the people's tracks still are.
    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}/frames/3")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Frame 3 (4 of 4)")
    expect(items.filter(has_text="track marker")).to_have_count(0)
    expect(items.filter(has_text="track person")).to_have_count(
        len(stack.ok("GET", f"/api/tasks/{task['id']}/annotations", params={"frame": 3})["tracks"]))


def test_viewer_track_rule_matches_the_server(page, stack):
    """viewer.js's trackShapeAt against dispatcher/tracks.py's shape_at, frame by frame: linear
    moves, holds, outside gaps and the end of the task."""
    def shape(frame, points, outside=False, kind="rectangle", rotation=0):
        return {"type": kind, "frame": frame, "points": points, "rotation": rotation, "occluded": False,
                "outside": outside, "z_order": 0, "attributes": []}
    examples = [
        {"shapes": [shape(1, [0, 0, 10, 10]), shape(3, [20, 0, 30, 10], outside=True), shape(5, [40, 40, 50, 50])]},
        {"shapes": [shape(0, [0, 0, 10, 0, 10, 10], kind="polygon"), shape(4, [8, 0, 18, 0, 18, 10], kind="polygon")]},
        {"shapes": [shape(0, [0, 0, 10, 0, 10, 10], kind="polygon"), shape(2, [0, 0, 10, 0], kind="polygon")]},
        {"shapes": [shape(0, [1, 1, 0, 0, 0], kind="mask"), shape(4, [1, 1, 2, 2, 2], kind="mask")]},
        {"shapes": [shape(0, [10, 10, 20, 15], kind="ellipse", rotation=0), shape(2, [14, 10, 24, 15], kind="ellipse",
                                                                             rotation=40)]},
        {"shapes": [shape(2, [5, 5, 9, 9]), shape(3, [5, 5, 9, 9], outside=True)]},
    ]
    sign_in(page, stack, "#/models")
    got = page.evaluate("""async (examples) => {
        const {trackShapeAt} = await import('/ui/viewer.js');
        return examples.map((track) => [0, 1, 2, 3, 4, 5, 6].map((frame) => {
            const shape = trackShapeAt(track, frame, 6);
            return shape && {points: shape.points, rotation: shape.rotation, keyframe: shape.keyframe};
        }));
    }""", examples)

    def seen(shape):
        return shape and {"points": shape["points"], "rotation": shape["rotation"], "keyframe": shape["keyframe"]}
    assert got == [[seen(tracks.shape_at(track, frame, 6)) for frame in range(7)] for track in examples]


def test_cancelling_is_shown_until_the_last_chunk_stops(page, stack):
    """After Cancel a run whose calls are still in flight reads "Cancelling…" (not finished, not
    yet canceled); once its chunk has stopped it reads canceled with the server's reason."""
    task = stack.task([{"name": "thing"}], [CAT] * 6)
    stack.ok("POST", "/api/lambda/requests", json={"function": "probe-stuck", "task": task["id"]})
    sign_in(page, stack, f"#/tasks/{task['id']}")
    running = page.locator("article.request").filter(has_text="probe-stuck")
    expect(running).to_have_attribute("data-status", "started")
    # Started is not yet calling: a cancel seen before the first call stops the run at once.
    wait_until(lambda: stack.calls_in_flight("probe-stuck"), 30, "a call to be in flight")
    running.get_by_role("button", name="Cancel").click()
    expect(running).to_have_attribute("data-status", "cancelling")
    expect(running.locator(".status")).to_have_text("Cancelling…")
    expect(running.get_by_role("button", name="Cancelling…")).to_be_disabled()
    expect(running.locator(".eta")).to_have_text("stopping after the frames in progress")
    shoot(page, "task-cancelling")
    expect(running).to_have_attribute("data-status", "canceled", timeout=30_000)
    expect(running.locator(".outcome")).to_contain_text("Canceled on request after")
    record = next(r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"])
    assert (record["status"], record["cancel_requested"]) == ("failed", True)


UNNAMED_CONTROLS = """() => {
    const named = (el) => {
        if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return true;
        if (el.labels && [...el.labels].some((label) => label.textContent.trim())) return true;
        if (el.tagName === 'IMG') return el.hasAttribute('alt');
        return el.tagName === 'BUTTON' && el.textContent.trim() !== '';
    };
    return [...document.querySelectorAll('input, select, textarea, button, canvas, img, dialog[open], table')]
        .filter((el) => el.getClientRects().length
            && !(el.tagName === 'TABLE' ? el.getAttribute('aria-label') : named(el)))
        .map((el) => el.outerHTML.slice(0, 120));
}"""


def test_every_control_and_table_has_an_accessible_name(page, stack):
    """Labels on inputs, names on buttons, canvas and tables, on every page and in the dialog."""
    task = stack.task([{"name": "cat", "type": "mask", "attributes": [
        {"name": "pose", "input_type": "select", "values": ["sitting", "lying"]}]}], [CAT])
    sign_in(page, stack, "#/models")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    pages = {"models": page.evaluate(UNNAMED_CONTROLS)}
    page.goto(f"{stack.url}/ui/#/tasks")
    page.get_by_role("button", name="Add attribute").click()
    page.get_by_label("Files on the server").check()
    expect(page.get_by_role("group", name="Server files")).to_contain_text("coco128-val2017")
    pages["tasks"] = page.evaluate(UNNAMED_CONTROLS)
    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}")
    page.get_by_role("button", name="Automatic annotation", exact=True).click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    dialog.get_by_label("Model").select_option(YOLO)
    dialog.locator("details.region > summary").click()
    expect(dialog.get_by_role("group", name="Region")).to_contain_text("Frame 0 (chelsea.png, 451×300)")
    pages["annotate dialog"] = page.evaluate(UNNAMED_CONTROLS)
    dialog.get_by_label("Model", exact=True).select_option(REID)
    pages["annotate dialog, ReID"] = page.evaluate(UNNAMED_CONTROLS)
    page.keyboard.press("Escape")
    stack.ok("PATCH", f"/api/tasks/{task['id']}/annotations", params={"action": "create"}, json={"tracks": [
        {"frame": 0, "label_id": stack.labels(task["id"])[0]["id"],
         "shapes": [{"type": "mask", "frame": 0, "points": [0, 100, 10, 10, 19, 19]}]}]})
    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}/frames/0")
    page.get_by_label("Interactor", exact=True).select_option("opencv-grabcut")
    page.get_by_role("button", name="Draw region").click()
    expect(page.get_by_role("list", name="Objects on this frame")).to_contain_text("track cat #")
    pages["viewer"] = page.evaluate(UNNAMED_CONTROLS)
    assert pages == {name: [] for name in pages}
    # Keyboard: a fresh page starts with the skip link, then the main navigation.
    page.goto("about:blank")
    page.goto(f"{stack.url}/ui/#/models")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Models")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")  # skip to content: focus moves to the page, the address stays
    expect(page.get_by_role("main")).to_be_focused()
    assert page.url.endswith("#/models") and page.locator("#errors").text_content() == ""
