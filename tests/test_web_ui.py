"""The web UI end to end in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against real processes: the dispatcher API (with API_TOKEN) and two chunk workers, and the local
platform serving the real YOLO v3 (tiny IR) detector, the GrabCut interactor and test probes.

Every test ends by checking that the page raised no JavaScript error. Screenshots of each page go
to ``test-output/ui/`` for a person to look at.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import PROBE, REPO, TESTDATA, TOKEN, Stack, copy_function, serve_platform, wait_until

YOLO = "openvino-omz-public-yolo-v3-tf"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, installed by scripts/setup.sh
SCREENSHOTS = REPO / "test-output" / "ui"
# As root Chromium needs --no-sandbox; the rest keep it off a network this machine does not have.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
STREET = [TESTDATA / "ultralytics/bus.jpg", TESTDATA / "ultralytics/zidane.jpg",
          sorted((TESTDATA / "coco128-val2017/images").glob("*.jpg"))[0]]
CAT = TESTDATA / "skimage/chelsea.png"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("ui-tree")
    copy_function(REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio", tree / "yolo")
    copy_function(REPO / "serverless/opencv/grabcut/nuclio", tree / "grabcut")
    # 0.25 s per frame on 2 workers: a 128-frame request runs ~16 s, long enough to watch and cancel.
    copy_function(PROBE, tree / "slow", **{"metadata.name": "probe-slow", "metadata.annotations.name": "Slow probe",
                                           "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.25"}],
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
    shoot(page, "models")


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
    task = task_named(stack, name)
    assert [label["name"] for label in task["labels"]] == ["person", "bus", "car"]
    car = task["labels"][2]
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
    names = {label["id"]: label["name"] for label in task["labels"]}
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
        const got = [...canvas.getContext('2d').getImageData(Math.round(x1), Math.round((y1 + y2) / 2), 1, 1).data.slice(0, 3)];
        return {want, got};
    }""", [first])
    assert np.abs(np.subtract(drawn["want"], drawn["got"])).max() <= 2, drawn  # the box's left edge, in its label colour
    shoot(page, "viewer")

    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text("Frame 0 of 2")
    page.keyboard.press("ArrowRight")
    expect(heading).to_contain_text("Frame 1 of 2")
    expect(heading).to_contain_text("zidane.jpg")
    page.keyboard.press("ArrowRight")
    expect(heading).to_contain_text("Frame 2 of 2")
    page.keyboard.press("ArrowRight")  # the last frame: stays
    page.keyboard.press("ArrowLeft")
    expect(heading).to_contain_text("Frame 1 of 2")
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
    expect(canceled).to_contain_text("Canceled:", timeout=60_000)
    expect(canceled).to_contain_text("were kept")
    record = next(r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"])
    assert record["status"] == "canceled" and 0 < record["frames"]["done"] < 128
    expect(canceled.locator(".done")).to_have_text(f"{record['frames']['done']} / 128 frames")
    stored = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert len(stored) == record["frames"]["done"]  # the probe draws one thing per frame
    expect(page.locator("p.task-numbers")).to_contain_text(f"{len(stored)} annotations")
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
    assert (shape["type"], shape["label_id"], shape["source"]) == ("mask", task["labels"][0]["id"], "semi-auto")
    left, top, right, bottom = shape["points"][-4:]
    runs = shape["points"][:-4]
    assert sum(runs) == (right - left + 1) * (bottom - top + 1)
    area = sum(runs[1::2])
    assert area > 0.2 * (right - left + 1) * (bottom - top + 1)
    # Inside the drawn box (corners rounded to pixels), and the negative point stayed out.
    assert 58 <= left and 18 <= top and right <= 412 and bottom <= 297
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

    page.goto(f"{stack.url}/ui/#/tasks/999999")
    expect(alert).to_contain_text("task 999999 does not exist")


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


def run_dialog(page: Page, stack: Stack, task: dict, function_id: str, *, polygons: bool = False,
               cleanup: bool = False) -> None:
    page.goto(f"{page.url.split('#')[0]}#/tasks/{task['id']}")
    page.get_by_role("button", name="Automatic annotation", exact=True).click()
    dialog = page.get_by_role("dialog", name="Automatic annotation")
    dialog.get_by_label("Model").select_option(function_id)
    dialog.get_by_label("Return masks as polygons").set_checked(polygons)
    dialog.get_by_label("Clean old annotations").set_checked(cleanup)
    dialog.get_by_role("button", name="Annotate").click()
    expect(dialog).to_be_hidden()  # the request exists once the dialog closes
    request = next(r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"])
    # One request id per target (CVAT's): a rerun's record replaces the record of the run before it.
    assert stack.wait(request["id"])["status"] == "finished"
    expect(page.locator("article.request[data-status=finished]")).to_contain_text("Finished: 2 frames annotated.")


def test_masks_polygons_and_cleanup_options(page, stack):
    """The dialog's two switches reach the request: masks stored as masks or as traced polygons, and
    "Clean old annotations" removing what was there before (a manual box, earlier runs); without
    it a run adds to what is there."""
    task = stack.task([{"name": "thing", "type": "any"}], [CAT, CAT])
    manual = {"frame": 0, "label_id": task["labels"][0]["id"], "type": "rectangle", "points": [50, 50, 90, 90]}
    stack.ok("PATCH", f"/api/tasks/{task['id']}/annotations", params={"action": "create"}, json={"shapes": [manual]})
    sign_in(page, stack, f"#/tasks/{task['id']}")

    def stored():
        return sorted((s["type"], s["source"]) for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"])

    run_dialog(page, stack, task, "probe-masks")
    assert stored() == [("mask", "auto"), ("mask", "auto"), ("rectangle", "manual")]
    masks = [s for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"] if s["type"] == "mask"]
    assert [s["points"] for s in masks] == [[0, 200, 5, 5, 24, 14]] * 2

    run_dialog(page, stack, task, "probe-masks", polygons=True)
    assert stored() == [("mask", "auto")] * 2 + [("polygon", "auto")] * 2 + [("rectangle", "manual")]
    polygon = next(s for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"] if s["type"] == "polygon")
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


UNNAMED_CONTROLS = """() => {
    const named = (el) => {
        if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return true;
        if (el.labels && [...el.labels].some((label) => label.textContent.trim())) return true;
        if (el.tagName === 'IMG') return el.hasAttribute('alt');
        return el.tagName === 'BUTTON' && el.textContent.trim() !== '';
    };
    return [...document.querySelectorAll('input, select, textarea, button, canvas, img, dialog[open], table')]
        .filter((el) => el.getClientRects().length && !(el.tagName === 'TABLE' ? el.getAttribute('aria-label') : named(el)))
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
    page.get_by_role("dialog", name="Automatic annotation").get_by_label("Model").select_option(YOLO)
    pages["annotate dialog"] = page.evaluate(UNNAMED_CONTROLS)
    page.keyboard.press("Escape")
    page.goto(f"{stack.url}/ui/#/tasks/{task['id']}/frames/0")
    page.get_by_label("Interactor", exact=True).select_option("opencv-grabcut")
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
