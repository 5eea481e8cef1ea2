"""CVAT 2.73's own request sequences replayed against the running stack (docs/wire-format.md §9):
the API and two chunk workers as processes, the local platform serving real functions (YOLO v3 on
the tiny IR, GrabCut, the colour-histogram ReID) and probes, on a Redis database of this module's
own. Bodies are the ones CVAT's UI and cvat-sdk send, extra keys included."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET
from collections import Counter

import httpx
import numpy as np
import pytest
from cvat_sdk.masks import decode_mask
from PIL import Image

from helpers import PROBE, REPO, TESTDATA, TOKEN, Stack, copy_function, serve_platform, wait_until

YOLO = "openvino-omz-public-yolo-v3-tf"
GRABCUT = "opencv-grabcut"
REID = "opencv-reid-colour-histogram"
ZIDANE = TESTDATA / "ultralytics/zidane.jpg"
BUS = TESTDATA / "ultralytics/bus.jpg"
ROI_MESSAGES = {  # §9.2, word for word
    "shape": "ROI must contain four integer coordinates: [xtl, ytl, xbr, ybr]",
    "sign": "ROI coordinates must be non-negative",
    "size": "ROI size must be positive",
    "outside": "ROI is outside the image",
}
BAD_ROIS = [([1, 2, 3], "shape"), ([0, 0, 10.5, 10], "shape"), ([True, 0, 10, 10], "shape"), ("0,0,9,9", "shape"),
            ([-1, 0, 10, 10], "sign"), ([10, 0, 10, 10], "size"), ([0, 20, 10, 10], "size"),
            ([0, 0, 2000, 10], "outside")]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    for folder in ("openvino/omz/public/yolo-v3-tf/nuclio", "opencv/grabcut/nuclio",
                   "opencv/reid-colour-histogram/nuclio"):
        copy_function(REPO / "serverless" / folder, tree / folder.split("/")[-2])
    big = {"spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432}
    copy_function(PROBE, tree / "slow", **{"metadata.name": "probe-slow", **big, "spec.eventTimeout": "30s",
                                           "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.05"}]})
    # A detector that answers a mask: a filled 20 x 10 box at (5, 5) of whatever image it gets.
    copy_function(PROBE, tree / "mask", **{"metadata.name": "probe-mask", **big,
                                           "metadata.annotations.spec": '[{"id": 0, "name": "thing", "type": "mask"}]',
                                           "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0"},
                                                        {"name": "PROBE_DETECT_MASK", "value": "1"}]})
    for kind in ("interactor", "reid", "tracker"):  # they describe what they were sent
        copy_function(PROBE, tree / kind, **{"metadata.name": f"probe-{kind}", "metadata.annotations.type": kind,
                                             **big})
    with serve_platform(tree) as running:
        yield running


@pytest.fixture(scope="module")
def stack(platform, tmp_path_factory):
    running = Stack(platform, tmp_path_factory.mktemp("data"), 6, None)
    yield running
    running.close()


def png(path, size: tuple[int, int] | None = None) -> bytes:
    """A real photo as a PNG (lossless, so a crop of it is exactly the frame's pixels)."""
    image = Image.open(path).convert("RGB")
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def upload(stack, labels: list[dict], files: list[tuple[str, bytes]], segment_size=None) -> dict:
    task = stack.ok("POST", "/api/tasks", 201, json={"name": "replay", "labels": labels, "segment_size": segment_size})
    stack.ok("POST", f"/api/tasks/{task['id']}/data",
             files=[(f"client_files[{index}]", file) for index, file in enumerate(files)])
    return stack.ok("GET", f"/api/tasks/{task['id']}")


def yolo_labels(stack) -> list[dict]:
    return [{"name": label["name"], "type": label["type"]}
            for label in stack.ok("GET", f"/api/lambda/functions/{YOLO}")["labels_v2"]]


def crop_png(data: bytes, region) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).crop(region).save(buffer, "PNG")
    return buffer.getvalue()


def call_function(stack, function_id: str, body: dict):
    """The function itself, through the platform, as CVAT's lambda manager would call it."""
    reply = httpx.post(f"{stack.platform.url}/api/function_invocations", json=body, timeout=60,
                       headers={"x-nuclio-function-name": function_id, "x-nuclio-path": "/"})
    assert reply.status_code == 200, reply.text
    return reply.json()


# 9.1 and 9.6: the UI's first call, and who may call

def test_the_uis_listing_probe_is_head_then_get(stack):
    reply = stack.http.head("/api/lambda/functions")
    assert (reply.status_code, reply.content) == (200, b"")
    functions = stack.ok("GET", "/api/lambda/functions")
    assert int(reply.headers["content-length"]) == len(stack.http.get("/api/lambda/functions").content)
    assert {YOLO, GRABCUT, REID} <= {f["id"] for f in functions}
    assert httpx.head(f"{stack.url}/api/lambda/functions").status_code == 401  # HEAD needs the token as GET does
    assert stack.http.head("/api/lambda/functions/nope").status_code == 404


def test_head_answers_what_get_would_on_every_get_route(stack):
    task = upload(stack, [{"name": "thing", "type": "rectangle"}], [("a.png", png(BUS, (64, 80)))])
    rid = stack.ok("POST", "/api/lambda/requests", json={"function": "probe-slow", "task": task["id"]})["id"]
    stack.wait(rid)
    (job,), (label,) = stack.jobs(task["id"]), stack.labels(task["id"])
    values = {"task_id": task["id"], "job_id": job["id"], "label_id": label["id"], "function_id": YOLO,
              "request_id": rid}
    paths = stack.ok("GET", "/openapi.json")["paths"]
    checked = 0
    for template, operations in paths.items():
        if "get" not in operations:
            continue
        path = template.format(**values)
        get, head = stack.http.get(path), stack.http.head(path)
        assert (head.status_code, head.content) == (get.status_code, b""), path
        checked += 1
    assert checked >= 12
    assert stack.http.head("/detectors/x/annotate").status_code == 405  # POST only: GET would say the same


def test_cvat_sdk_token_scheme_is_accepted(stack):
    headers = {"Authorization": f"Token {TOKEN}"}
    assert httpx.get(f"{stack.url}/api/lambda/functions", headers=headers).status_code == 200
    assert httpx.get(f"{stack.url}/api/lambda/functions", headers={"Authorization": "Token wrong"}).status_code == 401


# 9.2: roi, online

def test_a_detector_on_a_region_finds_what_it_finds_on_the_crop_in_frame_coordinates(stack):
    frame = png(ZIDANE)
    task = upload(stack, yolo_labels(stack), [("zidane.png", frame)])
    (job,) = stack.jobs(task["id"])
    region = [600, 40, 1280, 720]  # the right-hand player and his tie, not the left-hand one
    # The UI's body in the annotation view: the job and its task, and keys we have no use for.
    body = {"job": job["id"], "task": task["id"], "frame": 0, "threshold": 0.2, "roi": region,
            "type": "annotate_frame", "cleanup": False, "mapping": None}
    shapes = stack.ok("POST", f"/api/lambda/functions/{YOLO}", json=body)["shapes"]
    assert shapes
    xtl, ytl, xbr, ybr = region
    for shape in shapes:
        xs, ys = shape["points"][0::2], shape["points"][1::2]
        assert xtl <= min(xs) and max(xs) <= xbr and ytl <= min(ys) and max(ys) <= ybr
    # The same function on the crop, by hand, moved back into the frame.
    items = call_function(stack, YOLO, {"image": base64.b64encode(crop_png(frame, region)).decode(), "threshold": 0.2})
    label_id = {label["name"]: label["id"] for label in stack.labels(task["id"])}
    expected = sorted((label_id[item["label"]],
                       [v + (xtl if i % 2 == 0 else ytl) for i, v in enumerate(item["points"])])
                      for item in items)
    assert sorted((shape["label_id"], shape["points"]) for shape in shapes) == expected
    whole = stack.ok("POST", f"/api/lambda/functions/{YOLO}", json={**body, "roi": None})["shapes"]
    assert any(min(shape["points"][0::2]) < xtl for shape in whole)  # without roi: the left player too


def test_a_mask_detectors_box_moves_into_the_frame_online_and_offline(stack):
    task = upload(stack, [{"name": "thing", "type": "mask"}], [("bus.png", png(BUS, (300, 400)))])
    online = stack.ok("POST", "/api/lambda/functions/probe-mask", json={"task": task["id"], "frame": 0,
                                                                        "roi": [100, 50, 200, 150]})["shapes"]
    whole = stack.ok("POST", "/api/lambda/functions/probe-mask", json={"task": task["id"], "frame": 0})["shapes"]
    (moved,), (unmoved,) = online, whole
    # The probe's box is (5, 5)-(24, 14) on whatever it is given: on the region it lands at +(100, 50).
    assert moved["type"] == "mask" and unmoved["points"][-4:] == [5, 5, 24, 14]
    assert moved["points"] == [*unmoved["points"][:-4], 105, 55, 124, 64]  # the runs as they were, the box moved
    np.testing.assert_array_equal(decode_mask(moved["points"], image_width=300, image_height=400)[55:65, 105:125],
                                  np.ones((10, 20), bool))
    final = stack.wait(stack.ok("POST", "/api/lambda/requests", json={"function": "probe-mask", "task": task["id"],
                                                                      "roi": [100, 50, 200, 150]})["id"])
    assert final["status"] == "finished"
    (stored,) = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert stored["points"] == moved["points"]


def test_a_jpeg_frame_is_cropped_and_re_encoded_as_jpeg(stack):
    task = upload(stack, [{"name": "thing", "type": "mask"}], [("bus.jpg", BUS.read_bytes())])
    sent = stack.ok("POST", "/api/lambda/functions/probe-interactor", json={
        "task": task["id"], "frame": 0, "roi": [100, 200, 500, 700], "pos_points": [[300, 400]], "neg_points": [],
        "obj_bbox": [[150, 250], [450, 650]], "text_prompts": ["a bus"], "mask_format": "shapes"})["body"]
    assert (sent["pos_points"], sent["neg_points"], sent["obj_bbox"]) == ([[200, 200]], [], [[50, 50], [350, 450]])
    assert (sent["text_prompts"], sent["mask_format"]) == (["a bus"], "shapes")  # forwarded (§9.3), and ours
    assert "text_prompts" not in stack.ok("POST", "/api/lambda/functions/probe-interactor", json={
        "task": task["id"], "frame": 0, "pos_points": [[300, 400]], "neg_points": [], "text_prompts": []})["body"]
    frame = np.asarray(Image.open(BUS).convert("RGB"), dtype=float)

    def crop_error(region) -> float:
        """How far the crop the function got is from the frame's own pixels (mean, 0..255)."""
        reply = stack.ok("POST", "/api/lambda/functions/probe-interactor", json={
            "task": task["id"], "frame": 0, "roi": region, "pos_points": [], "neg_points": []})
        crop = Image.open(io.BytesIO(base64.b64decode(reply["body"]["image"])))
        xtl, ytl, xbr, ybr = region
        assert (crop.format, crop.size) == ("JPEG", (xbr - xtl, ybr - ytl))
        return float(np.abs(np.asarray(crop.convert("RGB"), dtype=float) - frame[ytl:ybr, xtl:xbr]).mean())

    # One more JPEG pass costs little: next to nothing on the frame's 16-pixel block grid, and less than
    # a pass at the frame's own quality off it (measured: 0.1 and 0.9; the frame's tables: 4.4).
    assert crop_error([96, 192, 496, 692]) < 0.3
    assert crop_error([100, 200, 500, 700]) < 1.5


def test_an_interactor_on_a_region_answers_a_full_frame_mask(stack):
    frame = png(BUS, (405, 540))
    task = upload(stack, [{"name": "bus", "type": "mask"}], [("bus.png", frame)])
    (job,) = stack.jobs(task["id"])
    region = [0, 100, 405, 460]
    clicks = {"pos_points": [[200, 300]], "neg_points": [[20, 120]]}
    reply = stack.ok("POST", f"/api/lambda/functions/{GRABCUT}",
                     json={"job": job["id"], "task": task["id"], "frame": 0, "roi": region, **clicks, "obj_bbox": None})
    mask = np.asarray(reply["mask"])
    assert mask.shape == (540, 405) and mask.any()
    assert not mask[:100].any() and not mask[460:].any()  # nothing outside the region
    # GrabCut itself on the crop with the clicks moved into it, pasted back by hand.
    crop_reply = call_function(stack, GRABCUT, {"image": base64.b64encode(crop_png(frame, region)).decode(),
                                                "pos_points": [[200, 200]], "neg_points": [[20, 20]], "obj_bbox": None})
    assert np.array_equal(mask[100:460], np.asarray(crop_reply["mask"]))
    # Our compact form comes back in frame coordinates too.
    compact = stack.ok("POST", f"/api/lambda/functions/{GRABCUT}", json={
        "task": task["id"], "frame": 0, "roi": region, **clicks, "mask_format": "cvat_rle"})
    ys, xs = np.nonzero(mask)
    assert compact["size"] == [540, 405] and compact["rle"][-4:] == [xs.min(), ys.min(), xs.max(), ys.max()]
    # CVAT 2.60+'s shapes reply (§9.3), asked for with mask_format: one mask shape with its
    # confidence, in frame coordinates, covering exactly the default reply's mask.
    (shape,) = stack.ok("POST", f"/api/lambda/functions/{GRABCUT}", json={
        "task": task["id"], "frame": 0, "roi": region, **clicks, "mask_format": "shapes"})["shapes"]
    assert shape["type"] == "mask" and [a["spec_id"] for a in shape["attributes"]] == [0]
    assert 0 < float(shape["attributes"][0]["value"]) <= 1
    np.testing.assert_array_equal(decode_mask(shape["points"], image_width=405, image_height=540), mask == 255)
    # Without a region the dispatcher hands the function's shapes reply on as it came.
    direct = call_function(stack, GRABCUT, {"image": base64.b64encode(frame).decode(), **clicks,
                                            "mask_format": "shapes"})
    assert stack.ok("POST", f"/api/lambda/functions/{GRABCUT}", json={
        "task": task["id"], "frame": 0, **clicks, "mask_format": "shapes"}) == direct
    assert stack.error("POST", f"/api/lambda/functions/{GRABCUT}", 400, json={
        "task": task["id"], "frame": 0, "roi": region, "pos_points": [[200, 50]], "neg_points": []}) == \
        "pos_points[0]: [200, 50] is outside the ROI [0, 100, 405, 460]"


@pytest.mark.parametrize(("roi", "message"), BAD_ROIS)
def test_a_bad_roi_is_400_with_cvats_message_online(stack, roi, message):
    task = upload(stack, [{"name": "thing", "type": "rectangle"}], [("a.png", png(BUS, (100, 120)))])
    assert stack.error("POST", f"/api/lambda/functions/{YOLO}", 400,
                       json={"task": task["id"], "frame": 0, "roi": roi}) == ROI_MESSAGES[message]


def test_roi_is_refused_for_kinds_that_cannot_use_it(stack):
    task = upload(stack, [{"name": "thing", "type": "rectangle"}], [("a.png", png(BUS, (100, 120)))] * 2)
    assert stack.error("POST", "/api/lambda/functions/probe-reid", 400, json={
        "task": task["id"], "frame0": 0, "frame1": 1, "boxes0": [], "boxes1": [], "roi": [0, 0, 10, 10]}) == \
        "roi: reid functions cannot run on a region (only detectors and interactors)"
    assert stack.error("POST", "/api/lambda/functions/probe-tracker", 400, json={
        "task": task["id"], "frame": 0, "shapes": [[0, 0, 10, 10]], "roi": [0, 0, 10, 10]}) == \
        "roi: tracker functions cannot run on a region (only detectors and interactors)"
    assert stack.error("POST", "/api/lambda/requests", 400, json={
        "function": "probe-reid", "task": task["id"], "roi": [0, 0, 10, 10]}).startswith("roi: not for ReID")


# 9.2 offline, and 9.5: the Automatic annotation dialog, polling, cancel

REQUEST_KEYS = {"id", "function", "status", "progress", "enqueued", "started", "ended", "exc_info"}  # §3.7


def test_the_dialogs_run_listed_polled_and_canceled_as_the_ui_does(stack):
    """The UI's session on a real detector: the listing probe, the dialog's request, the request
    list filtered to queued/started with each polled by id, Cancel, and at once the dialog again on
    the same task, now with a region."""
    task = upload(stack, yolo_labels(stack), [(f"{n}.png", png(ZIDANE, (320, 180))) for n in range(160)])
    assert stack.http.head("/api/lambda/functions").status_code == 200
    assert isinstance(stack.ok("GET", "/api/lambda/requests"), list)  # the page's first list of requests
    mapping = {"person": {"name": "person", "attributes": {}}}
    body = {"type": "annotate_task", "mapping": mapping, "cleanup": True, "conv_mask_to_poly": False,
            "threshold": 0.2, "task": task["id"], "function": YOLO}
    request = stack.ok("POST", "/api/lambda/requests", json=body)
    assert set(request) >= REQUEST_KEYS and request["function"] == {"id": YOLO, "threshold": 0.2, "task": task["id"]}
    assert request["status"] in ("queued", "started") and request["exc_info"] is None and request["ended"] is None

    def polled_with_progress():
        listed = [r for r in stack.ok("GET", "/api/lambda/requests") if r["status"] in ("queued", "started")]
        assert [r["id"] for r in listed].count(request["id"]) == 1  # running, so the UI keeps it
        by_id = stack.ok("GET", f"/api/lambda/requests/{request['id']}")
        assert set(by_id) >= REQUEST_KEYS and by_id["status"] in ("queued", "started")
        return by_id if by_id["progress"] else None

    running = wait_until(polled_with_progress, 60, "progress on the dialog's run")
    assert running["status"] == "started" and 0 < running["progress"] < 100
    assert stack.http.delete(f"/api/lambda/requests/{request['id']}").status_code == 204
    seen = set()

    def ended():
        by_id = stack.ok("GET", f"/api/lambda/requests/{request['id']}")
        seen.add(by_id["status"])
        return by_id if by_id["status"] not in ("queued", "started") else None

    canceled = wait_until(ended, 30, "the canceled run to end")
    # Never finished (the UI would call it done) nor any other status (it would say "accomplished").
    assert seen <= {"started", "failed"} and canceled["cancel_requested"]
    assert canceled["exc_info"].startswith("Canceled on request after ") and canceled["progress"] < 100
    assert canceled["id"] not in {r["id"] for r in stack.ok("GET", "/api/lambda/requests")
                                  if r["status"] in ("queued", "started")}

    region = [160, 0, 320, 180]
    again = stack.ok("POST", "/api/lambda/requests", json={**body, "roi": region})  # no 409
    assert again["status"] in ("queued", "started") and not again["cancel_requested"]
    final = stack.wait(again["id"])
    assert (final["status"], final["progress"], final["exc_info"]) == ("finished", 100, None)
    shapes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert Counter(s["frame"] for s in shapes).keys() == set(range(160))  # cleanup: only the new run's
    assert all(min(s["points"][0::2]) >= 160 and max(s["points"][2::2]) <= 320 for s in shapes)


def test_the_automatic_annotation_dialog_with_a_region(stack):
    frames = [("zidane.png", png(ZIDANE, (640, 360))), ("bus.png", png(BUS, (640, 720)))]
    task = upload(stack, yolo_labels(stack), frames)
    region = [320, 0, 640, 360]  # inside both frames
    mapping = {"person": {"name": "person", "attributes": {}}, "tie": {"name": "tie", "attributes": {}}}
    body = {"type": "annotate_task", "mapping": mapping, "cleanup": True, "conv_mask_to_poly": False,
            "threshold": 0.2, "roi": region, "task": task["id"], "function": YOLO}
    request = stack.ok("POST", "/api/lambda/requests", json=body)
    assert request["function"] == {"id": YOLO, "threshold": 0.2, "task": task["id"], "roi": region}
    final = stack.wait(request["id"])
    assert (final["status"], final["progress"]) == ("finished", 100)
    shapes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    assert shapes and all(min(s["points"][0::2]) >= 320 and max(s["points"][2::2]) <= 640 for s in shapes)
    # The task-wide run stores what the online call on each frame answers with the same region.
    for frame in (0, 1):
        online = stack.ok("POST", f"/api/lambda/functions/{YOLO}", json={
            "task": task["id"], "frame": frame, "threshold": 0.2, "roi": region, "mapping": mapping})["shapes"]
        assert sorted(s["points"] for s in online) == sorted(s["points"] for s in shapes if s["frame"] == frame)


@pytest.mark.parametrize(("roi", "message"), BAD_ROIS)
def test_a_bad_roi_is_400_with_cvats_message_offline(stack, roi, message):
    task = upload(stack, [{"name": "person", "type": "rectangle"}], [("a.png", png(BUS, (100, 120)))])
    detail = stack.error("POST", "/api/lambda/requests", 400, json={"function": YOLO, "task": task["id"], "roi": roi})
    assert detail.startswith(ROI_MESSAGES[message])


def test_an_offline_roi_is_checked_against_every_frame(stack):
    task = upload(stack, [{"name": "person", "type": "rectangle"}],
                  [("big.png", png(BUS, (300, 300))), ("small.png", png(BUS, (100, 300)))])
    assert stack.error("POST", "/api/lambda/requests", 400, json={
        "function": YOLO, "task": task["id"], "roi": [0, 0, 200, 200]}) == \
        "ROI is outside the image: frame 1 is 100x300"
    assert not [r for r in stack.ok("GET", "/api/lambda/requests") if r["function"]["task"] == task["id"]]
    # The sizes come from the store, not from the images: a frame that no longer decodes answers the same.
    (stack.data_dir / f"tasks/{task['id']}/frames/1.png").write_bytes(b"not an image any more")
    assert stack.error("POST", "/api/lambda/requests", 400, json={
        "function": YOLO, "task": task["id"], "roi": [0, 0, 200, 200]}) == \
        "ROI is outside the image: frame 1 is 100x300"


def test_cancel_then_a_new_request_on_the_same_task_at_once(stack):
    task = upload(stack, [{"name": "thing", "type": "rectangle"}],
                  [(f"{n}.png", png(BUS, (32, 40))) for n in range(64)])
    body = {"type": "annotate_task", "mapping": {"thing": {"name": "thing", "attributes": {}}}, "cleanup": False,
            "conv_mask_to_poly": False, "task": task["id"], "function": "probe-slow"}
    first = stack.ok("POST", "/api/lambda/requests", json=body)
    wait_until(lambda: stack.ok("GET", f"/api/lambda/requests/{first['id']}")["frames"]["done"] > 0, 60, "progress")
    assert stack.http.delete(f"/api/lambda/requests/{first['id']}").status_code == 204
    second = stack.ok("POST", "/api/lambda/requests", json={**body, "cleanup": True})  # no 409 window
    assert second["id"] == first["id"] and second["status"] in ("queued", "started") and not second["cancel_requested"]
    final = stack.wait(second["id"])
    assert final["status"] == "finished" and final["frames"] == {"total": 64, "done": 64, "failed": 0}
    # The canceled run's last frames, stored after the new run began, were refused: one thing per frame.
    frames = Counter(s["frame"] for s in stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"])
    assert frames == dict.fromkeys(range(64), 1)


# 9.4: ReID offline, on boxes a detector made

def pan(count: int, step: int) -> list[tuple[str, bytes]]:
    """Frames of a camera panning right across bus.jpg, ``step`` px per frame (JPEG, as cameras give)."""
    photo = Image.open(BUS).convert("RGB")
    frames = []
    for index in range(count):
        buffer = io.BytesIO()
        photo.crop((index * step, 250, index * step + 780, 1000)).save(buffer, "JPEG", quality=92)
        frames.append((f"pan{index}.jpg", buffer.getvalue()))
    return frames


def boxed_by_yolo(stack, frames: list[tuple[str, bytes]], segment_size=None) -> dict:
    """A task of ``frames`` whose person boxes YOLO's task-wide run made: ReID's input."""
    task = upload(stack, [{"name": "person", "type": "rectangle"}], frames, segment_size=segment_size)
    detect = stack.ok("POST", "/api/lambda/requests", json={"function": YOLO, "task": task["id"], "threshold": 0.3})
    assert stack.wait(detect["id"])["status"] == "finished"
    return task


def test_offline_reid_links_a_detectors_boxes_into_tracks(stack):
    task = boxed_by_yolo(stack, pan(5, 7))
    boxes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    per_frame = Counter(box["frame"] for box in boxes)
    assert set(per_frame) == set(range(5)) and min(per_frame.values()) >= 3

    body = {"threshold": 0.5, "max_distance": 50, "task": task["id"], "function": REID}  # the UI's defaults
    request = stack.ok("POST", "/api/lambda/requests", json=body)
    assert request["function"]["max_distance"] == 50 and request["frames"]["total"] == 4  # frame pairs
    final = stack.wait(request["id"])
    assert (final["status"], final["progress"], final["frames"]["done"]) == ("finished", 100, 4)

    data = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")
    assert data["shapes"] == []  # every rectangle became part of a track
    visible = [shape for track in data["tracks"] for shape in track["shapes"] if not shape["outside"]]
    assert sorted((s["frame"], s["points"]) for s in visible) == sorted((b["frame"], b["points"]) for b in boxes)
    # Each track follows one person (the people stand 150+ px apart), moving with the pan (7 px left
    # per frame); two are followed through all five frames. A third one's box changes shape on frame
    # 3, its centre jumping 54 px, past max_distance: two tracks, as CVAT's ReID would make them.
    steps = []
    for track in data["tracks"]:
        centres = [((s["points"][0] + s["points"][2]) / 2, (s["points"][1] + s["points"][3]) / 2)
                   for s in track["shapes"] if not s["outside"]]
        steps += np.diff(np.asarray(centres), axis=0).reshape(-1, 2).tolist()
    assert np.abs(steps).max() < 15 and abs(np.mean(steps, axis=0)[0] + 7) < 3, steps
    assert len([track for track in data["tracks"] if len(track["shapes"]) == 5]) >= 2
    for track in data["tracks"]:  # a track that ends before the last frame is closed, as CVAT's ReID does
        last = track["shapes"][-1]
        assert last["outside"] or last["frame"] == 4

    coco = stack.ok("GET", f"/api/tasks/{task['id']}/export", params={"format": "coco"})
    track_ids = Counter(a["attributes"]["track_id"] for a in coco["annotations"])
    assert len(coco["annotations"]) == len(boxes) and len(track_ids) == len(data["tracks"])
    xml = ET.fromstring(stack.http.get(f"/api/tasks/{task['id']}/export", params={"format": "cvat"}).content)
    assert len(xml.findall("track")) == len(data["tracks"])
    assert sum(box.get("outside") == "0" for box in xml.iter("box")) == len(boxes)


def test_reids_threshold_and_max_distance_reach_the_function(stack):
    """The same boxes linked under other settings: a max_distance past the 54 px jump joins the
    split person's two tracks; a threshold no histogram pair reaches links nothing."""
    def tracks_with(**settings) -> int:
        task = boxed_by_yolo(stack, pan(5, 7))
        final = stack.wait(stack.ok("POST", "/api/lambda/requests", json={"function": REID, "task": task["id"],
                                                                          **settings})["id"])
        assert final["status"] == "finished"
        return len(stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["tracks"])

    defaults = tracks_with(threshold=0.5, max_distance=50)
    assert tracks_with(threshold=0.5, max_distance=60) == defaults - 1
    assert tracks_with(threshold=0.0001, max_distance=50) > defaults


def test_reid_on_a_job_keeps_to_the_job(stack):
    """CVAT's ReID on a job: tracks from the job's rectangles only, and a path that reaches the
    job's last frame is not closed on the next job's first frame."""
    task = boxed_by_yolo(stack, pan(6, 7), segment_size=3)
    boxes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
    first, _ = stack.jobs(task["id"])
    assert (first["start_frame"], first["stop_frame"]) == (0, 2)
    final = stack.wait(stack.ok("POST", "/api/lambda/requests", json={"function": REID, "job": first["id"],
                                                                      "task": task["id"]})["id"])
    assert (final["status"], final["frames"]["total"]) == ("finished", 2)
    data = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")
    assert sorted(s["id"] for s in data["shapes"]) == sorted(b["id"] for b in boxes if b["frame"] >= 3)
    assert data["tracks"] and all(shape["frame"] <= 2 for track in data["tracks"] for shape in track["shapes"])
    assert any(track["shapes"][-1] == {**track["shapes"][-1], "frame": 2, "outside": False}
               for track in data["tracks"])  # reaches the job's end: left open there, as CVAT leaves it


def test_reid_refuses_what_would_destroy_its_input(stack):
    task = upload(stack, [{"name": "person", "type": "rectangle"}], pan(2, 7))
    assert stack.error("POST", "/api/lambda/requests", 400, json={"function": REID, "task": task["id"],
                                                                  "cleanup": True}).startswith("cleanup: not for ReID")
    assert stack.error("POST", "/api/lambda/requests", 400, json={
        "function": YOLO, "task": task["id"], "max_distance": 5}) == "max_distance: only ReID functions take it"
    # Nothing to link: no rectangles. The run still ends, having changed nothing.
    final = stack.wait(stack.ok("POST", "/api/lambda/requests", json={"function": REID, "task": task["id"]})["id"])
    assert (final["status"], final["frames"]["total"]) == ("finished", 0)
    assert stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["tracks"] == []
