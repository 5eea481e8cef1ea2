"""The dispatcher's task store on SQLite and on PostgreSQL (a database of its own for the session),
with real images from the shared test data."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import xml.etree.ElementTree as ET
from datetime import datetime

import datumaro
import numpy as np
import psycopg
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dispatcher import settings as dispatcher_settings
from dispatcher.converter import TaskAttribute, TaskLabel
from dispatcher.store import InvalidInput, NotFound, StaleRun, Store, metadata
from dispatcher.store.coco_categories import coco_name
from serverless.common import masks
from serverless.common.images import decode_image
from serverless.common.metadata import FunctionMeta

from helpers import REPO, TESTDATA, wait_until

PIXELS = 100_000_000  # MAX_IMAGE_PIXELS's default
COCO_IMAGES = sorted((TESTDATA / "coco128-val2017" / "images").glob("*.jpg"))[:4]
COCO_TRUTH = TESTDATA / "coco128-val2017" / "instances_val2017_128.json"
YOLO_YAML = REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio/function.yaml"
ASTRONAUT = TESTDATA / "skimage" / "astronaut.png"

LABELS = [
    {"name": "car", "type": "rectangle", "attributes": [
        {"name": "color", "input_type": "select", "values": ["red", "blue"], "mutable": True},
        {"name": "speed", "input_type": "number", "values": ["0", "300", "5"], "default_value": "50"},
        {"name": "parked", "input_type": "checkbox", "values": ["false"]},
        {"name": "plate", "input_type": "text", "values": []},
        {"name": "kind", "input_type": "radio", "values": ["sedan", "van"]}]},
    {"name": "region", "type": "polygon"},
    {"name": "stain", "type": "mask"},
    {"name": "thing"},
    {"name": "pose", "type": "skeleton", "svg": '<line x1="1" data-node-from="1" data-node-to="2"/>',
     "sublabels": [{"name": "nose", "type": "points", "attributes": [
                        {"name": "visible", "input_type": "checkbox", "values": ["true"]}]},
                   {"name": "tail", "type": "points"}]},
]


@pytest.fixture
def server_root(tmp_path):
    root = tmp_path / "share"
    (root / "set").mkdir(parents=True)
    shutil.copy(COCO_IMAGES[0], root / "set" / "a.jpg")
    shutil.copy(ASTRONAUT, root / "b.png")
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, server_root):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = Store(url, tmp_path / "data", server_root, PIXELS)
    yield store
    metadata.drop_all(store._engine)  # the next test starts from empty tables
    store.close()


def new_task(store: Store, segment_size=None, frames=COCO_IMAGES) -> dict:
    task = store.create_task("streets", LABELS, segment_size)
    if frames:
        store.add_frames(task["id"], [(path.name, path.read_bytes()) for path in frames])
    return store.get_task(task["id"])


def ids(task: dict) -> dict:
    """Label name -> id, and (label name, attribute name) -> id, sublabels included."""
    found = {}
    for top in task["labels"]:
        for label in (top, *top["sublabels"]):
            found[label["name"]] = label["id"]
            found.update({(label["name"], a["name"]): a["id"] for a in label["attributes"]})
    return found


def box(task, frame, points, **fields) -> dict:
    return {"frame": frame, "label_id": ids(task)["car"], "type": "rectangle", "points": points, **fields}


def shape_points(data: dict) -> list:
    return sorted((shape["frame"], shape["points"]) for shape in data["shapes"])


# Tasks and labels

def test_a_task_gets_ids_for_labels_attributes_and_jobs(store):
    task = new_task(store, segment_size=3)
    assert task["name"] == "streets" and task["size"] == 4 and task["segment_size"] == 3
    assert task["created_date"].endswith("Z")
    car, region, stain, thing, pose = task["labels"]
    assert [label["name"] for label in task["labels"]] == ["car", "region", "stain", "thing", "pose"]
    assert thing["type"] == "any" and pose["type"] == "skeleton" and pose["svg"] == LABELS[4]["svg"]
    assert [(a["name"], a["input_type"], a["mutable"], a["default_value"], a["values"]) for a in car["attributes"]] == [
        ("color", "select", True, "red", ["red", "blue"]), ("speed", "number", False, "50", ["0", "300", "5"]),
        ("parked", "checkbox", False, "false", ["false"]), ("plate", "text", False, "", []),
        ("kind", "radio", False, "sedan", ["sedan", "van"])]
    assert [(s["name"], s["type"], s["parent_id"]) for s in pose["sublabels"]] == [
        ("nose", "points", pose["id"]), ("tail", "points", pose["id"])]
    every_id = [label["id"] for label in (car, region, stain, thing, pose, *pose["sublabels"])]
    every_id += [a["id"] for a in car["attributes"] + pose["sublabels"][0]["attributes"]]
    assert all(isinstance(i, int) for i in every_id) and len(set(every_id[:7])) == 7
    assert [(j["start_frame"], j["stop_frame"]) for j in task["jobs"]] == [(0, 2), (3, 3)]

    # What the converter takes: number values as (min, max, step), sublabels nested.
    labels = store.task_labels(task["id"])
    assert labels[0].attributes[1] == TaskAttribute(ids(task)[("car", "speed")], "speed", "number", ("0", "300", "5"))
    assert labels[4] == TaskLabel(pose["id"], "pose", "skeleton", (), (
        TaskLabel(ids(task)["nose"], "nose", "points",
                  (TaskAttribute(ids(task)[("nose", "visible")], "visible", "checkbox", ("true",)),)),
        TaskLabel(ids(task)["tail"], "tail", "points")))

    other = store.create_task("empty", [{"name": "car"}])
    assert [t["id"] for t in store.list_tasks()] == [task["id"], other["id"]]
    assert other["size"] == 0 and other["jobs"] == []

    frames_dir = store.data_dir / "tasks" / str(task["id"])
    assert frames_dir.is_dir()
    store.delete_task(task["id"])
    assert not frames_dir.exists()
    with pytest.raises(NotFound, match=f"task {task['id']} does not exist"):
        store.get_task(task["id"])
    with pytest.raises(NotFound):
        store.delete_task(task["id"])
    assert [t["id"] for t in store.list_tasks()] == [other["id"]]


def test_bad_tasks_are_refused_naming_the_field(store):
    def refused(name, labels, segment_size=None):
        with pytest.raises(InvalidInput) as error:
            store.create_task(name, labels, segment_size)
        return str(error.value)

    car = {"name": "car", "type": "rectangle"}
    assert refused("", [car]).startswith("name:")
    assert refused("t", [car], segment_size=0).startswith("segment_size:")
    assert refused("t", []).startswith("labels:")
    assert refused("t", [car, car]) == "labels: label 'car' appears twice"
    assert refused("t", [{"name": "car", "type": "circle"}]).startswith("labels[0] ('car').type: must be one of")
    assert refused("t", [{"name": "car", "attributes": [{"name": "speed", "input_type": "number",
                                                         "values": ["fast", "300", "1"]}]}]).startswith(
        "labels[0] ('car').attributes[0] ('speed').values: a number attribute needs [min, max, step]")
    assert refused("t", [{"name": "car", "attributes": [{"name": "speed", "input_type": "number",
                                                         "values": ["10", "0", "1"]}]}]).startswith(
        "labels[0] ('car').attributes[0] ('speed').values: need min <= max")
    assert refused("t", [{"name": "car", "attributes": [{"name": "a", "input_type": "text"}] * 2}]) == \
        "labels[0] ('car').attributes: attribute 'a' appears twice"
    assert refused("t", [{"name": "car", "attributes": [{"name": "a", "input_type": "slider"}]}]).startswith(
        "labels[0] ('car').attributes[0] ('a').input_type:")
    skeleton_without_svg = {"name": "pose", "type": "skeleton", "sublabels": [{"name": "nose", "type": "points"}]}
    assert refused("t", [car, skeleton_without_svg]) == "labels[1] ('pose').svg: required for a skeleton"
    assert refused("t", [{"name": "pose", "type": "skeleton", "svg": "<x/>",
                          "sublabels": [{"name": "nose", "type": "rectangle"}]}]).startswith(
        "labels[0] ('pose').sublabels[0] ('nose').type: skeleton sublabels must be points")
    assert refused("t", [{"name": "car", "attributes": [{"name": "color", "input_type": "select",
                                                         "values": ["red"], "default_value": "green"}]}]) == \
        "labels[0] ('car').attributes[0] ('color').default_value: 'green' is not one of red"
    assert refused("t", [{"name": "car", "attributes": [{"name": "color", "input_type": "text",
                                                         "mutable": "yes"}]}]).startswith(
        "labels[0] ('car').attributes[0] ('color').mutable:")
    # CVAT's column sizes, which cvat-sdk checks when it reads a label back.
    assert refused("t", [{"name": "c" * 65}]) == \
        f"labels[0] ({'c' * 65!r}).name: at most 64 characters (CVAT's limit), got 65"
    assert refused("t", [{"name": "car", "attributes": [{"name": "a" * 65, "input_type": "text"}]}]).endswith(
        ".name: at most 64 characters (CVAT's limit), got 65")
    assert refused("t", [{"name": "car", "attributes": [{"name": "a", "input_type": "text",
                                                         "default_value": "x" * 129}]}]) == \
        "labels[0] ('car').attributes[0] ('a').default_value: at most 128 characters (CVAT's limit), got 129"
    assert store.list_tasks() == []


# Jobs and frames

def test_jobs_split_the_frames_and_keep_their_ids_as_frames_are_added(store):
    task = new_task(store, segment_size=2, frames=COCO_IMAGES[:3])
    first, second = task["jobs"]
    assert (first["start_frame"], first["stop_frame"], second["start_frame"], second["stop_frame"]) == (0, 1, 2, 2)
    store.add_frames(task["id"], [(path.name, path.read_bytes()) for path in COCO_IMAGES[3:]] +
                     [(ASTRONAUT.name, ASTRONAUT.read_bytes())])
    jobs = store.get_task(task["id"])["jobs"]
    assert [(j["id"], j["start_frame"], j["stop_frame"]) for j in jobs[:2]] == [
        (first["id"], 0, 1), (second["id"], 2, 3)]
    assert [(j["start_frame"], j["stop_frame"]) for j in jobs[2:]] == [(4, 4)]
    assert store.get_job(second["id"]) == {"id": second["id"], "task_id": task["id"], "start_frame": 2, "stop_frame": 3}
    assert store.job_frames(second["id"]) == [2, 3] and store.job_frames(jobs[2]["id"]) == [4]
    with pytest.raises(NotFound, match="job 999999 does not exist"):
        store.get_job(999999)

    whole = new_task(store, frames=COCO_IMAGES[:2])  # no segment size: one job with every frame
    (job,) = whole["jobs"]
    store.add_frames(whole["id"], [(ASTRONAUT.name, ASTRONAUT.read_bytes())])
    assert store.get_task(whole["id"])["jobs"] == [{"id": job["id"], "start_frame": 0, "stop_frame": 2}]
    assert store.job_frames(job["id"]) == [0, 1, 2]


def test_uploads_are_stored_as_sent_with_their_sizes(store):
    files = [(path.name, path.read_bytes()) for path in (*COCO_IMAGES[:2], ASTRONAUT)]
    task = store.create_task("t", [{"name": "car"}])
    store.add_frames(task["id"], files)
    meta = store.frames_meta(task["id"])
    assert meta["size"] == 3 and (meta["start_frame"], meta["stop_frame"]) == (0, 2) and meta["deleted_frames"] == []
    assert meta["frames"] == [{"name": name, "width": Image.open(io.BytesIO(data)).width,
                               "height": Image.open(io.BytesIO(data)).height} for name, data in files]
    for frame, (_, data) in enumerate(files):
        assert store.frame_bytes(task["id"], frame) == data
    stored = store.data_dir / "tasks" / str(task["id"]) / "frames"
    assert sorted(p.name for p in stored.iterdir()) == ["0.jpg", "1.jpg", "2.png"]
    with pytest.raises(NotFound, match="has no frame 3"):
        store.frame_bytes(task["id"], 3)


def test_frame_sizes_follow_exif_orientation_as_functions_see_them(store):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = io.BytesIO()
    Image.open(COCO_IMAGES[0]).save(rotated, "JPEG", exif=exif)
    task = store.create_task("t", [{"name": "car"}])
    store.add_frames(task["id"], [("rotated.jpg", rotated.getvalue())])
    (frame,) = store.frames_meta(task["id"])["frames"]
    on_disk = Image.open(COCO_IMAGES[0]).size
    assert (frame["width"], frame["height"]) == (on_disk[1], on_disk[0])
    assert decode_image(base64.b64encode(store.frame_bytes(task["id"], 0)).decode()).size == \
        (frame["width"], frame["height"])


def test_bad_uploads_are_refused_naming_the_file(store):
    task = store.create_task("t", [{"name": "car"}])
    good = (COCO_IMAGES[0].name, COCO_IMAGES[0].read_bytes())

    def refused(files) -> str:
        with pytest.raises(InvalidInput) as error:
            store.add_frames(task["id"], files)
        return str(error.value)

    assert refused([good, ("notes.txt", b"not an image")]) == \
        "files[1] ('notes.txt'): not an image file Pillow can read"
    assert refused([("cut.jpg", good[1][:len(good[1]) // 2])]).startswith("files[0] ('cut.jpg'): truncated or corrupt")
    assert refused([]).startswith("files:")
    store.max_image_pixels = 1000  # MAX_IMAGE_PIXELS=1000
    assert refused([good]) == "files[0] ('000000000139.jpg'): 640x426 = 272640 pixels, over the limit of 1000"
    # Nothing of a refused batch is kept.
    assert store.get_task(task["id"])["size"] == 0
    assert not (store.data_dir / "tasks" / str(task["id"])).exists()


def test_server_files_are_read_in_place_and_confined_to_the_root(store, server_root, tmp_path):
    task = store.create_task("t", [{"name": "car"}])
    store.add_server_files(task["id"], ["set/a.jpg", "b.png", "set/../b.png"])
    meta = store.frames_meta(task["id"])["frames"]
    assert [(f["name"], f["width"], f["height"]) for f in meta] == [
        ("set/a.jpg", 640, 426), ("b.png", 512, 512), ("b.png", 512, 512)]
    assert store.frame_bytes(task["id"], 0) == COCO_IMAGES[0].read_bytes()
    assert store.frame_bytes(task["id"], 1) == ASTRONAUT.read_bytes()

    outside = tmp_path / "secret.jpg"
    shutil.copy(COCO_IMAGES[1], outside)
    (server_root / "link.jpg").symlink_to(outside)
    (server_root / "notes.txt").write_text("not an image")
    for path, message in [("../secret.jpg", "resolves outside the server files root"),
                          ("link.jpg", "resolves outside the server files root"),
                          (str(server_root / "b.png"), "must be relative to the server files root"),
                          ("set/missing.jpg", "no such file under the server files root"),
                          ("notes.txt", "not an image file Pillow can read")]:
        with pytest.raises(InvalidInput) as error:
            store.add_server_files(task["id"], ["b.png", path])
        assert str(error.value) == f"paths[1] ({path!r}): {message}"
    assert store.get_task(task["id"])["size"] == 3

    # Read again at annotation time: a file swapped since for a link out of the root is refused,
    # one for a link that stays inside is read.
    (server_root / "b.png").rename(server_root / "b-moved.png")
    (server_root / "b.png").symlink_to(outside)
    with pytest.raises(NotFound, match=r"task \d+: frame 1: no such file under the server files root"):
        store.frames_bytes(task["id"], [0, 1])
    (server_root / "b.png").unlink()
    (server_root / "b.png").symlink_to(server_root / "b-moved.png")
    assert store.frames_bytes(task["id"], [1, 0]) == {1: ASTRONAUT.read_bytes(), 0: COCO_IMAGES[0].read_bytes()}
    (server_root / "b.png").unlink()
    with pytest.raises(NotFound, match=r"frame 1: cannot be read \(No such file or directory\)"):
        store.frame_bytes(task["id"], 1)

    disabled = Store(None, tmp_path / "other", None, PIXELS)
    other = disabled.create_task("t", [{"name": "car"}])
    with pytest.raises(InvalidInput, match=r"paths\[0\] \('b.png'\): server files are disabled"):
        disabled.add_server_files(other["id"], ["b.png"])
    disabled.close()


def test_server_folders_are_listed_as_cvat_share_does_and_confined_to_the_root(store, server_root, tmp_path):
    (server_root / "set" / "deeper").mkdir()
    (server_root / "notes.txt").write_text("not an image")
    (tmp_path / "outside").mkdir()
    (server_root / "escape").symlink_to(tmp_path / "outside")
    (server_root / "inside").symlink_to(server_root / "set")
    assert store.server_files.listing("/") == [
        {"name": "inside", "type": "DIR", "mime_type": "DIR"}, {"name": "set", "type": "DIR", "mime_type": "DIR"},
        {"name": "b.png", "type": "REG", "mime_type": "image"},
        {"name": "notes.txt", "type": "REG", "mime_type": "unknown"}]
    assert store.server_files.listing("set") == store.server_files.listing("/set/") == [
        {"name": "deeper", "type": "DIR", "mime_type": "DIR"}, {"name": "a.jpg", "type": "REG", "mime_type": "image"}]
    for directory, error, message in [("../", InvalidInput, "must be a folder under the server files root"),
                                      ("set/../..", InvalidInput, "must be a folder under the server files root"),
                                      ("escape", NotFound, "no folder 'escape'"),
                                      ("b.png", NotFound, "no folder 'b.png'"),
                                      ("missing", NotFound, "no folder 'missing'")]:
        with pytest.raises(error, match=message):
            store.server_files.listing(directory)
    disabled = Store(None, tmp_path / "other", None, PIXELS)
    with pytest.raises(InvalidInput, match="server files are disabled"):
        disabled.server_files.listing("/")
    disabled.close()


def test_tasks_count_their_annotations(store):
    task = new_task(store)
    assert task["annotations_count"] == 0
    store.put_annotations(task["id"], annotations_for(task) | {"tracks": []})
    assert store.get_task(task["id"])["annotations_count"] == 8
    assert [t["annotations_count"] for t in store.list_tasks()] == [8]


def test_frames_cannot_be_added_once_the_task_has_annotations(store):
    task = new_task(store, frames=COCO_IMAGES[:1])
    store.put_annotations(task["id"], {"shapes": [box(task, 0, [1, 2, 3, 4])]})
    with pytest.raises(InvalidInput, match="already has annotations"):
        store.add_frames(task["id"], [(ASTRONAUT.name, ASTRONAUT.read_bytes())])
    assert store.get_task(task["id"])["size"] == 1


# Annotations

def annotations_for(task) -> dict:
    i = ids(task)
    return {
        "version": 0,
        "tags": [{"frame": 1, "label_id": i["thing"], "attributes": []}],
        "shapes": [
            box(task, 0, [10, 20, 110, 220.5], attributes=[{"spec_id": i[("car", "color")], "value": "blue"},
                                                           {"spec_id": i[("car", "speed")], "value": "55"}]),
            {"frame": 0, "label_id": i["region"], "type": "polygon", "points": [5, 5, 50, 5, 50, 40, 5, 40],
             "z_order": 2, "occluded": True},
            {"frame": 1, "label_id": i["stain"], "type": "mask", "source": "auto",
             "points": [0, 2, 2, 2, 2, 2, 2, 100, 200, 102, 203]},
            {"frame": 2, "label_id": i["pose"], "type": "skeleton", "points": [], "elements": [
                {"label_id": i["nose"], "points": [30, 40], "attributes": [
                    {"spec_id": i[("nose", "visible")], "value": "true"}]},
                {"label_id": i["tail"], "points": [60, 80], "outside": True}]},
            {"frame": 3, "label_id": i["thing"], "type": "ellipse", "points": [100, 100, 130, 80], "rotation": 15},
            {"frame": 3, "label_id": i["thing"], "type": "points", "points": [1, 1, 2, 2, 3, 3]},
            {"frame": 3, "label_id": i["thing"], "type": "polyline", "points": [0, 0, 9.5, 9.5]},
        ],
        "tracks": [{"frame": 1, "label_id": i["car"], "group": 0, "source": "manual", "attributes": [],
                    "shapes": [{"frame": 1, "type": "rectangle", "points": [1, 1, 5, 5], "outside": False},
                               {"frame": 2, "type": "rectangle", "points": [1, 1, 5, 5], "outside": True}]}],
    }


def test_annotations_round_trip_with_ids_and_cvat_defaults(store):
    task = new_task(store, segment_size=2)
    stored = store.put_annotations(task["id"], annotations_for(task))
    assert store.get_annotations(task["id"]) == stored
    item_ids = [item["id"] for kind in ("tags", "shapes", "tracks") for item in stored[kind]]
    assert len(set(item_ids)) == len(item_ids) == 9

    rectangle = stored["shapes"][0]
    assert {k: v for k, v in rectangle.items() if k not in ("id", "attributes")} == {
        "type": "rectangle", "frame": 0, "label_id": ids(task)["car"], "points": [10, 20, 110, 220.5], "rotation": 0,
        "occluded": False, "outside": False, "z_order": 0, "group": None, "source": "manual"}
    skeleton = stored["shapes"][3]
    assert [(e["type"], e["frame"], e["points"], e["outside"]) for e in skeleton["elements"]] == [
        ("points", 2, [30, 40], False), ("points", 2, [60, 80], True)]
    assert stored["tags"][0]["source"] == "manual" and stored["tracks"][0]["shapes"][0]["points"] == [1, 1, 5, 5]

    second_job = task["jobs"][1]  # frames 2 and 3
    in_job = store.get_annotations(task["id"], second_job["id"])
    assert {s["frame"] for s in in_job["shapes"]} == {2, 3} and in_job["tags"] == in_job["tracks"] == []
    with pytest.raises(NotFound):
        store.get_annotations(task["id"], 999999)
    on_frame_3 = store.get_annotations(task["id"], frame=3)
    assert on_frame_3["shapes"] == [s for s in stored["shapes"] if s["frame"] == 3] and len(on_frame_3["shapes"]) == 3
    assert on_frame_3["tags"] == on_frame_3["tracks"] == []
    assert store.get_annotations(task["id"], frame=1)["tracks"] == stored["tracks"]  # visible on frame 1 only
    assert stored["tracks"][0]["shapes"][1] == {"type": "rectangle", "frame": 2, "points": [1, 1, 5, 5], "rotation": 0,
                                                "occluded": False, "outside": True, "z_order": 0, "attributes": []}

    created = store.patch_annotations(task["id"], {"shapes": [box(task, 2, [0, 0, 5, 5])]}, "create")
    (new_box,) = created["shapes"]
    assert new_box["id"] not in item_ids
    updated = store.patch_annotations(task["id"], {"shapes": [{**new_box, "points": [1, 1, 6, 6]}]}, "update")
    assert updated["shapes"] == [{**new_box, "points": [1, 1, 6, 6]}]
    deleted = store.patch_annotations(task["id"], {"shapes": [{"id": new_box["id"]}],
                                                   "tags": [{"id": stored["tags"][0]["id"]}]}, "delete")
    assert [s["id"] for s in deleted["shapes"]] == [new_box["id"]] and len(deleted["tags"]) == 1
    after = store.get_annotations(task["id"])
    assert after["shapes"] == stored["shapes"] and after["tags"] == [] and after["tracks"] == stored["tracks"]

    store.delete_annotations(task["id"])
    assert store.get_annotations(task["id"]) == {"version": 0, "tags": [], "shapes": [], "tracks": []}


def test_a_shapes_score_is_kept_when_given_and_checked(store):
    task = new_task(store, frames=COCO_IMAGES[:1])
    stored = store.put_annotations(task["id"], {"shapes": [box(task, 0, [1, 2, 3, 4], score=0.75),
                                                          box(task, 0, [1, 2, 3, 4], score=None),
                                                          box(task, 0, [1, 2, 3, 4])]})
    assert [shape.get("score", "absent") for shape in stored["shapes"]] == [0.75, "absent", "absent"]
    assert store.get_annotations(task["id"]) == stored
    with pytest.raises(InvalidInput, match=r"shapes\[0\]\.score: must be a number or null, got 'high'"):
        store.put_annotations(task["id"], {"shapes": [box(task, 0, [1, 2, 3, 4], score="high")]})
    assert store.get_annotations(task["id"]) == stored


def test_bad_annotations_are_refused_naming_the_item(store):
    task = new_task(store)
    other = new_task(store, frames=COCO_IMAGES[:1])
    i = ids(task)
    store.put_annotations(task["id"], {"shapes": [box(task, 0, [1, 1, 2, 2])]})
    (kept,) = store.get_annotations(task["id"])["shapes"]

    def refused(data, action=None) -> str:
        with pytest.raises(InvalidInput) as error:
            if action:
                store.patch_annotations(task["id"], data, action)
            else:
                store.put_annotations(task["id"], data)
        return str(error.value)

    assert refused({"shapes": [box(task, 0, [1, 1, 2, 2]), box(task, 4, [1, 1, 2, 2])]}) == \
        f"shapes[1].frame: 4 is not a frame of task {task['id']} (it has 4 frames)"
    assert refused({"shapes": [box(task, 0, [1, 1, 2, 2], label_id=ids(other)["car"])]}) == \
        f"shapes[0].label_id: {ids(other)['car']} is not a label of task {task['id']}"
    assert refused({"tags": [{"frame": 0, "label_id": i["car"],
                              "attributes": [{"spec_id": i[("nose", "visible")], "value": "true"}]}]}) == \
        f"tags[0].attributes[0].spec_id: {i[('nose', 'visible')]} is not an attribute of label {i['car']}"
    assert refused({"shapes": [box(task, 0, [1, 1, 2, 2], type="circle")]}).startswith(
        "shapes[0].type: must be one of rectangle, polygon")
    assert refused({"shapes": [box(task, 0, [1, 1, 2])]}) == \
        "shapes[0]: rectangle points need exactly 4 coordinates, got 3"
    assert refused({"shapes": [{"frame": 0, "label_id": i["stain"], "type": "mask", "points": [0, 5, 0, 0, 1, 1]}]}) \
        == "shapes[0].points: the runs cover 5 pixels but the box (0, 0, 1, 1) has 4"
    assert refused({"shapes": [{"frame": 0, "label_id": i["stain"], "type": "mask", "points": [0, 4.5, 0, 0, 1, 1]}]}) \
        == "shapes[0].points: a mask is run lengths followed by xtl, ytl, xbr, ybr, all non-negative integers"
    assert refused({"shapes": [{"frame": 0, "label_id": i["pose"], "type": "skeleton", "elements": [
        {"label_id": i["car"], "points": [1, 1]}]}]}) == \
        f"shapes[0].elements[0].label_id: {i['car']} is not a sublabel of skeleton {i['pose']} in task {task['id']}"
    assert refused({"shapes": [box(task, 0, [1, 1, 2, 2], label_id=i["pose"])]}).startswith(
        "shapes[0].type: skeleton shapes and skeleton labels go together")
    assert refused({"shapes": [box(task, 0, [1, 1, 2, 2], occluded="no")]}) == \
        "shapes[0].occluded: must be true or false, got 'no'"
    assert refused({"tracks": [{"frame": 9, "label_id": i["car"], "shapes": [
        {"frame": 9, "type": "rectangle", "points": [0, 0, 1, 1]}]}]}).startswith("tracks[0].frame: 9 is not a frame")
    assert refused({"tracks": [{"frame": 1, "label_id": i["car"]}]}) == \
        "tracks[0].shapes: a track needs a list of at least one shape"
    track_shapes = [{"frame": 2, "type": "rectangle", "points": [0, 0, 1, 1]},
                    {"frame": 1, "type": "rectangle", "points": [0, 0, 1, 1]}]
    assert refused({"tracks": [{"label_id": i["car"], "shapes": track_shapes}]}) == \
        "tracks[0].shapes[1].frame: shapes of a track go in frame order, one per frame"
    assert refused({"tracks": [{"label_id": i["car"], "shapes": [
        track_shapes[1], {**track_shapes[0], "type": "polygon", "points": [0, 0, 1, 1, 0, 1]}]}]}) == \
        "tracks[0].shapes[1].type: a track keeps one shape type, rectangle"
    assert refused({"tracks": [{"frame": 2, "label_id": i["car"], "shapes": track_shapes[1:]}]}) == \
        "tracks[0].frame: 2 is not the frame of its first shape, 1"
    assert refused({"shapes": [{**kept, "id": kept["id"] + 1000}]}, "update") == \
        f"shapes[0].id: task {task['id']} has no shape {kept['id'] + 1000}"
    assert refused({"tags": [{"id": kept["id"]}]}, "delete") == f"tags[0].id: task {task['id']} has no tag {kept['id']}"
    assert refused({}, "replace").startswith("action: must be one of create, update, delete")
    # A refused write changes nothing.
    assert store.get_annotations(task["id"])["shapes"] == [kept]


# Results of annotation requests

def result(task, frame, x) -> tuple[list[dict], list[dict]]:
    """One frame of converter output: a tag and a box."""
    return ([{"frame": frame, "label_id": ids(task)["thing"], "source": "auto", "group": None, "attributes": []}],
            [box(task, frame, [x, x, x + 10, x + 10], source="auto")])


def test_a_retried_chunk_replaces_its_own_results(store):
    task = new_task(store)
    chunk = {0: result(task, 0, 1), 1: ([], []), 2: result(task, 2, 3)}
    store.begin_run("req-1", "run-1", task["id"])
    assert store.write_results("req-1", "run-1", task["id"], chunk, cleanup_frames=None) is False
    store.write_results("req-1", "run-1", task["id"], chunk, cleanup_frames=None)
    data = store.get_annotations(task["id"])
    assert shape_points(data) == [(0, [1, 1, 11, 11]), (2, [3, 3, 13, 13])] and len(data["tags"]) == 2
    assert store.request_frames("req-1") == {0, 1, 2}  # frame 1 had no results, and is recorded
    # A retry with other output for a frame replaces that frame only.
    store.write_results("req-1", "run-1", task["id"], {2: result(task, 2, 7)}, cleanup_frames=None)
    assert shape_points(store.get_annotations(task["id"])) == [(0, [1, 1, 11, 11]), (2, [7, 7, 17, 17])]
    assert store.request_frames("other") == set()
    with pytest.raises(InvalidInput, match=r"results\[9\]: 9 is not a frame"):
        store.write_results("req-1", "run-1", task["id"], {9: ([], [])}, cleanup_frames=None)


def test_cleanup_happens_once_per_request(store):
    task = new_task(store)
    store.put_annotations(task["id"], {"shapes": [box(task, frame, [0, 0, 1, 1]) for frame in range(4)]})
    every_frame = [0, 1, 2, 3]
    store.begin_run("req", "run-1", task["id"])

    assert store.write_results("req", "run-1", task["id"],
                               {0: result(task, 0, 10), 1: result(task, 1, 11)}, every_frame)
    assert shape_points(store.get_annotations(task["id"])) == [(0, [10, 10, 20, 20]), (1, [11, 11, 21, 21])]
    # An annotator draws a box while the request runs; the later chunks must not clean it away.
    store.patch_annotations(task["id"], {"shapes": [box(task, 3, [5, 5, 6, 6])]}, "create")
    assert not store.write_results("req", "run-1", task["id"],
                                   {2: result(task, 2, 12), 3: result(task, 3, 13)}, every_frame)
    assert not store.write_results("req", "run-1", task["id"],
                                   {0: result(task, 0, 10), 1: result(task, 1, 11)}, every_frame)
    assert shape_points(store.get_annotations(task["id"])) == [
        (0, [10, 10, 20, 20]), (1, [11, 11, 21, 21]), (2, [12, 12, 22, 22]), (3, [5, 5, 6, 6]), (3, [13, 13, 23, 23])]

    # A new run of the id: the last run's results are the task's own, and the new run cleans them.
    store.begin_run("req", "run-2", task["id"])
    assert store.request_frames("req") == set() and len(store.get_annotations(task["id"])["shapes"]) == 5
    job_frames = [2, 3]  # a job-level run cleans its job's frames only
    assert store.write_results("req", "run-2", task["id"], {2: result(task, 2, 30)}, job_frames)
    assert shape_points(store.get_annotations(task["id"])) == [
        (0, [10, 10, 20, 20]), (1, [11, 11, 21, 21]), (2, [30, 30, 40, 40])]


def test_a_replaced_run_writes_nothing(store):
    """A chunk of a canceled run that finishes after the next run on its target began (or a worker
    cut off from Redis that comes back) must not add its frames to the new run's."""
    task = new_task(store)
    store.begin_run("req", "run-1", task["id"])
    store.write_results("req", "run-1", task["id"], {0: result(task, 0, 1)}, cleanup_frames=None)
    store.begin_run("req", "run-2", task["id"])
    with pytest.raises(StaleRun, match="run run-1 of request req has been replaced"):
        store.write_results("req", "run-1", task["id"], {1: result(task, 1, 2)}, cleanup_frames=None)
    with pytest.raises(StaleRun):
        store.write_results("never-begun", "run-9", task["id"], {1: result(task, 1, 2)}, cleanup_frames=None)
    assert shape_points(store.get_annotations(task["id"])) == [(0, [1, 1, 11, 11])]
    assert store.request_frames("req") == set()


def test_an_older_attempt_of_a_chunk_writes_nothing_once_a_newer_one_has_begun(store):
    """A worker cut off mid-chunk comes back after the chunk ran again elsewhere: it is fenced off."""
    task = new_task(store)
    store.begin_run("req", "run-1", task["id"])
    store.write_results("req", "run-1", task["id"], {0: result(task, 0, 1)}, None, ("chunk-0", 1))
    store.write_results("req", "run-1", task["id"], {}, None, ("chunk-0", 2))  # attempt 2 begins
    with pytest.raises(StaleRun, match="attempt 1 of chunk chunk-0 of request req has been replaced by attempt 2"):
        store.write_results("req", "run-1", task["id"], {1: result(task, 1, 5)}, None, ("chunk-0", 1))
    store.write_results("req", "run-1", task["id"], {1: result(task, 1, 2)}, None, ("chunk-0", 2))
    store.write_results("req", "run-1", task["id"], {2: result(task, 2, 3)}, None, ("chunk-1", 1))  # its own count
    assert shape_points(store.get_annotations(task["id"])) == [(0, [1, 1, 11, 11]), (1, [2, 2, 12, 12]),
                                                               (2, [3, 3, 13, 13])]
    store.begin_run("req", "run-2", task["id"])  # a new run counts afresh
    store.write_results("req", "run-2", task["id"], {3: result(task, 3, 4)}, None, ("chunk-0", 1))
    assert store.request_frames("req") == {3}


def test_concurrent_chunks_of_one_request_clean_up_once(postgres_url, tmp_path):
    """Two workers write two chunks of one request at once; the table lock holds the first to claim
    the cleanup inside its transaction until the second is waiting too."""
    workers = [Store(postgres_url, tmp_path / "data", None, PIXELS) for _ in range(2)]
    try:
        task = new_task(workers[0])
        workers[0].put_annotations(task["id"], {"shapes": [box(task, frame, [0, 0, 1, 1]) for frame in range(4)]})
        chunks = [{0: result(task, 0, 10), 1: result(task, 1, 11)}, {2: result(task, 2, 12), 3: result(task, 3, 13)}]
        workers[0].begin_run("req", "run-1", task["id"])
        outcomes: list = [None, None]

        def write(index: int) -> None:
            try:
                outcomes[index] = workers[index].write_results("req", "run-1", task["id"], chunks[index],
                                                               [0, 1, 2, 3])
            except Exception as error:  # reported by the assertion below
                outcomes[index] = error

        dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as locker, psycopg.connect(dsn, autocommit=True) as observer:
            locker.execute("LOCK TABLE annotations IN ACCESS EXCLUSIVE MODE")
            threads = [threading.Thread(target=write, args=(index,)) for index in range(2)]
            for thread in threads:
                thread.start()

            def both_waiting() -> bool:
                return observer.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'").fetchone()[0] == 2

            wait_until(both_waiting, 10, "both chunks to wait inside their transactions")
            locker.rollback()
            for thread in threads:
                thread.join(10)
        assert sorted(outcomes, key=str) == [False, True]
        assert shape_points(workers[0].get_annotations(task["id"])) == [
            (0, [10, 10, 20, 20]), (1, [11, 11, 21, 21]), (2, [12, 12, 22, 22]), (3, [13, 13, 23, 23])]
        assert workers[1].request_frames("req") == {0, 1, 2, 3}
    finally:
        metadata.drop_all(workers[0]._engine)
        for worker in workers:
            worker.close()


# Exports

def drawn_mask() -> np.ndarray:
    """An image-sized mask (426x640, frame 0) with a ring, so runs start and stop inside rows."""
    yy, xx = np.mgrid[:426, :640]
    distance = np.hypot(xx - 300, yy - 200)
    return (distance < 40) & (distance > 15)


def test_coco_export_reads_back_with_pycocotools(store, tmp_path):
    task = new_task(store)
    i = ids(task)
    mask = drawn_mask()
    rle = masks.function_mask_to_rle(masks.to_function_mask(mask))
    store.put_annotations(task["id"], {"shapes": [
        box(task, 0, [10, 20, 110, 220.5]),
        box(task, 1, [10, 10, 30, 20], rotation=90),
        {"frame": 0, "label_id": i["region"], "type": "polygon", "points": [5, 5, 50, 5, 50, 40, 5, 40]},
        {"frame": 0, "label_id": i["stain"], "type": "mask", "points": rle},
        {"frame": 2, "label_id": i["thing"], "type": "points", "points": [1, 1]},  # not in COCO detection
    ]})
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(store.export_coco(task["id"])))
    coco = COCO(str(path))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [
        (1, "car"), (2, "region"), (3, "stain"), (4, "thing"), (5, "pose")]
    assert [(img["file_name"], img["width"], img["height"]) for img in coco.loadImgs(coco.getImgIds())] == [
        (p.name, *Image.open(p).size) for p in COCO_IMAGES]

    car, region, stain = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert (car["category_id"], car["bbox"], car["area"], car["iscrowd"]) == (1, [10, 20, 100, 200.5], 20050.0, 0)
    assert (region["bbox"], region["area"], region["segmentation"]) == (
        [5, 5, 45, 35], 1575.0, [[5, 5, 50, 5, 50, 40, 5, 40]])
    rows, cols = np.nonzero(mask)
    assert stain["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
    assert stain["area"] == mask.sum() and stain["iscrowd"] == 0
    assert np.array_equal(coco.annToMask(stain), mask)  # pycocotools decodes our RLE to the same pixels
    (turned,) = coco.loadAnns(coco.getAnnIds(imgIds=[2]))  # 20x10 turned a quarter: 10x20 about (20, 15)
    assert np.allclose(turned["bbox"], [15, 5, 10, 20]) and turned["area"] == 200
    assert coco.getAnnIds(imgIds=[3]) == []


def test_coco_export_with_cocos_ids_scores_against_cocos_ground_truth(store, tmp_path):
    """A task labelled as CVAT's YOLO functions label (darknet's spellings), holding COCO's own
    boxes as detections with a score: pycocotools scores the export against COCO's ground truth
    file as it is, and finds every box (AP 1.0); datumaro reads it too."""
    truth = COCO(str(COCO_TRUTH))
    yolo = FunctionMeta.from_nuclio(yaml.safe_load(YOLO_YAML.read_text()))
    labels = [{"name": label.name, "type": "rectangle"} for label in yolo.labels]
    task = store.create_task("coco", labels, None)
    store.add_frames(task["id"], [(path.name, path.read_bytes()) for path in COCO_IMAGES])
    task = store.get_task(task["id"])
    label_of = {coco_name(label["name"]): label["id"] for label in task["labels"]}
    image_ids = [int(path.stem) for path in COCO_IMAGES]
    shapes = []
    for frame, image_id in enumerate(image_ids):
        for gt in truth.loadAnns(truth.getAnnIds(imgIds=[image_id], iscrowd=False)):
            x, y, w, h = gt["bbox"]
            shapes.append({"frame": frame, "label_id": label_of[truth.loadCats(gt["category_id"])[0]["name"]],
                           "type": "rectangle", "points": [x, y, x + w, y + h], "score": 0.75})
    store.put_annotations(task["id"], {"shapes": shapes})

    exported = store.export_coco(task["id"], coco_ids=True)
    assert [image["id"] for image in exported["images"]] == image_ids
    assert {(c["id"], c["name"]) for c in exported["categories"]} >= {(1, "person"), (4, "motorcycle"), (72, "tv")}
    assert {a["score"] for a in exported["annotations"]} == {0.75}
    detections = truth.loadRes([{key: a[key] for key in ("image_id", "category_id", "bbox", "score")}
                                for a in exported["annotations"]])
    evaluation = COCOeval(truth, detections, "bbox")
    evaluation.params.imgIds = image_ids
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP at IoU .50:.95: every box found, none extra
    # The task's own numbering stays the default; scores are there too.
    default = store.export_coco(task["id"])
    assert [c["id"] for c in default["categories"]] == list(range(1, 81)) and default["annotations"][0]["score"] == 0.75

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_default.json").write_text(json.dumps(exported))
    (tmp_path / "images").mkdir()
    for path in COCO_IMAGES:
        (tmp_path / "images/default").mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / "images/default" / path.name)
    dataset = datumaro.Dataset.import_from(str(tmp_path), "coco_instances")
    assert len(dataset) == 4 and sum(len(item.annotations) for item in dataset) == len(shapes)

    other = store.create_task("mixed", [{"name": "person"}, {"name": "gizmo"}, {"name": "widget"}], None)
    with pytest.raises(InvalidInput, match="these are not: gizmo, widget"):
        store.export_coco(other["id"], coco_ids=True)


def test_cvat_xml_export_has_cvats_structure(store):
    task = new_task(store, segment_size=2)
    i = ids(task)
    mask = drawn_mask()
    rle = masks.function_mask_to_rle(masks.to_function_mask(mask))
    data = annotations_for(task)
    data["shapes"].append({"frame": 0, "label_id": i["stain"], "type": "mask", "points": rle})
    store.put_annotations(task["id"], data)
    root = ET.fromstring(store.export_cvat_xml(task["id"]))

    assert root.tag == "annotations" and root.find("version").text == "1.1"
    meta_task = root.find("meta/task")
    assert (meta_task.find("id").text, meta_task.find("name").text, meta_task.find("size").text) == (
        str(task["id"]), "streets", "4")
    assert [(s.find("start").text, s.find("stop").text) for s in meta_task.findall("segments/segment")] == [
        ("0", "1"), ("2", "3")]
    labels = {label.find("name").text: label for label in meta_task.findall("labels/label")}
    assert list(labels) == ["car", "region", "stain", "thing", "pose", "nose", "tail"]
    assert [(label.find("type").text, getattr(label.find("parent"), "text", None)) for label in labels.values()] == [
        ("rectangle", None), ("polygon", None), ("mask", None), ("any", None), ("skeleton", None),
        ("points", "pose"), ("points", "pose")]
    assert labels["pose"].find("svg").text == LABELS[4]["svg"]
    color = labels["car"].find("attributes/attribute")
    assert [(child.tag, child.text) for child in color] == [
        ("name", "color"), ("mutable", "True"), ("input_type", "select"), ("default_value", "red"),
        ("values", "red\nblue")]

    images = root.findall("image")
    assert [(im.get("id"), im.get("name"), im.get("width"), im.get("height")) for im in images] == [
        (str(n), p.name, *map(str, Image.open(p).size)) for n, p in enumerate(COCO_IMAGES)]
    frame0 = images[0]
    assert [child.tag for child in frame0] == ["box", "mask", "polygon"]  # by z_order, as CVAT writes them
    car = frame0.find("box")
    assert car.attrib == {"label": "car", "source": "manual", "occluded": "0", "xtl": "10.00", "ytl": "20.00",
                          "xbr": "110.00", "ybr": "220.50", "z_order": "0"}
    assert [(a.get("name"), a.text) for a in car.findall("attribute")] == [("color", "blue"), ("speed", "55")]
    assert frame0.find("polygon").attrib == {"label": "region", "source": "manual", "occluded": "1",
                                             "points": "5.00,5.00;50.00,5.00;50.00,40.00;5.00,40.00", "z_order": "2"}
    # The mask: run lengths only, from a background run, over the box given as left/top/width/height.
    xml_mask = frame0.find("mask")
    left, top, width, height = (int(xml_mask.get(key)) for key in ("left", "top", "width", "height"))
    runs = [int(v) for v in xml_mask.get("rle").split(",")]
    crop = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(height, width)
    assert np.array_equal(mask[top:top + height, left:left + width], crop) and crop.sum() == mask.sum()

    frame1 = images[1]
    assert [child.tag for child in frame1] == ["mask", "tag"]
    assert frame1.find("mask").attrib == {"label": "stain", "source": "auto", "occluded": "0",
                                          "rle": "0, 2, 2, 2, 2, 2, 2", "left": "100", "top": "200", "width": "3",
                                          "height": "4", "z_order": "0"}
    assert frame1.find("tag").attrib == {"label": "thing", "source": "manual"}
    skeleton = images[2].find("skeleton")
    assert skeleton.attrib == {"label": "pose", "source": "manual", "z_order": "0"}
    assert [p.attrib for p in skeleton.findall("points")] == [
        {"label": "nose", "source": "manual", "outside": "0", "occluded": "0", "points": "30.00,40.00"},
        {"label": "tail", "source": "manual", "outside": "1", "occluded": "0", "points": "60.00,80.00"}]
    assert [(a.get("name"), a.text) for a in skeleton.find("points").findall("attribute")] == [("visible", "true")]
    ellipse, points, polyline = images[3]
    assert ellipse.attrib == {"label": "thing", "source": "manual", "occluded": "0", "cx": "100.00", "cy": "100.00",
                              "rx": "30.00", "ry": "20.00", "z_order": "0", "rotation": "15.00"}
    assert (points.tag, points.get("points")) == ("points", "1.00,1.00;2.00,2.00;3.00,3.00")
    assert (polyline.tag, polyline.get("points")) == ("polyline", "0.00,0.00;9.50,9.50")


def test_tracks_export_on_every_frame_they_cover(store, tmp_path):
    """A track stands for a shape on each frame from its first keyframe until an outside keyframe (or
    the task's end), interpolated between keyframes: COCO gets one annotation per such frame with the
    track's id, the CVAT XML one <track> with a box per frame, as CVAT and datumaro read it."""
    task = new_task(store)  # 4 frames
    i = ids(task)
    car = {"frame": 0, "label_id": i["car"], "shapes": [
        {"frame": 0, "type": "rectangle", "points": [10, 10, 30, 20]},
        {"frame": 2, "type": "rectangle", "points": [30, 30, 50, 40]},  # frame 1 lies halfway
        {"frame": 3, "type": "rectangle", "points": [30, 30, 50, 40], "outside": True}]}
    region = {"frame": 2, "label_id": i["region"], "shapes": [  # no closing keyframe: on to the last frame
        {"frame": 2, "type": "polygon", "points": [0, 0, 8, 0, 8, 8]}]}
    store.put_annotations(task["id"], {"tracks": [car, region]})
    assert [len(store.get_annotations(task["id"], frame=frame)["tracks"]) for frame in range(4)] == [1, 1, 2, 1]

    coco = store.export_coco(task["id"])
    rows = sorted((a["attributes"]["track_id"], a["image_id"] - 1, a["bbox"], a["attributes"]["keyframe"])
                  for a in coco["annotations"])
    assert rows == [(0, 0, [10, 10, 20, 10], True), (0, 1, [20, 20, 20, 10], False), (0, 2, [30, 30, 20, 10], True),
                    (1, 2, [0, 0, 8, 8], True), (1, 3, [0, 0, 8, 8], False)]

    xml = store.export_cvat_xml(task["id"])
    tracks = ET.fromstring(xml).findall("track")
    assert [t.attrib for t in tracks] == [{"id": "0", "label": "car", "source": "manual"},
                                          {"id": "1", "label": "region", "source": "manual"}]
    assert [(b.get("frame"), b.get("keyframe"), b.get("outside"), b.get("xtl")) for b in tracks[0]] == [
        ("0", "1", "0", "10.00"), ("1", "0", "0", "20.00"), ("2", "1", "0", "30.00"), ("3", "1", "1", "30.00")]
    (tmp_path / "cvat/images").mkdir(parents=True)  # datumaro reads the XML beside the images
    (tmp_path / "cvat/annotations.xml").write_text(xml)
    for image in COCO_IMAGES:
        (tmp_path / "cvat/images" / image.name).symlink_to(image)
    dataset = datumaro.Dataset.import_from(str(tmp_path / "cvat"), "cvat")
    tracked = sorted((item.id, a.attributes["track_id"], a.attributes["keyframe"]) for item in dataset
                     for a in item.annotations if not a.attributes.get("outside"))
    assert tracked == sorted([(COCO_IMAGES[0].stem, 0, True), (COCO_IMAGES[1].stem, 0, False),
                              (COCO_IMAGES[2].stem, 0, True), (COCO_IMAGES[2].stem, 1, True),
                              (COCO_IMAGES[3].stem, 1, False)])


# Settings of the store

def test_store_settings_are_read_and_checked(tmp_path):
    loaded = dispatcher_settings.load({"DATABASE_URL": "postgresql+psycopg://u@db:5432/tasks",
                                       "DATA_DIR": str(tmp_path), "SERVER_FILES_ROOT": str(tmp_path)})
    assert (loaded.database_url, loaded.data_dir, loaded.server_files_root, loaded.max_image_pixels) == (
        "postgresql+psycopg://u@db:5432/tasks", tmp_path, tmp_path, 100_000_000)
    assert dispatcher_settings.load({"MAX_IMAGE_PIXELS": "1000"}).max_image_pixels == 1000
    (tmp_path / "file").write_text("")
    for environ, message in [({"DATABASE_URL": "mysql://db/tasks"}, "DATABASE_URL must start with"),
                             ({"DATA_DIR": str(tmp_path / "file")}, "DATA_DIR=.* is not a directory"),
                             ({"SERVER_FILES_ROOT": str(tmp_path / "missing")},
                              "SERVER_FILES_ROOT=.* is not a directory")]:
        with pytest.raises(ValueError, match=message):
            dispatcher_settings.load(environ)
    # No database URL: SQLite in the data directory.
    Store(None, tmp_path / "data", None, PIXELS).close()
    assert (tmp_path / "data" / "dispatcher.sqlite3").is_file()


# What CVAT's REST shapes need of the store (docs/wire-format.md §3.9)

def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_updated_date_follows_every_change_and_data_updated_date_the_frames(store):
    """cvat-sdk keeps a task's labels, frames and annotations in a local cache until the task's
    updated_date moves, so every write must move it; data/meta's chunks_updated_date moves with
    the frames only."""
    task = store.create_task("streets", LABELS)
    assert task["created_date"] == task["updated_date"] == task["data_updated_date"]
    dates = [task["updated_date"]]

    def changed(frames: bool) -> dict:
        now = store.get_task(task["id"])
        assert moment(now["updated_date"]) > moment(dates[-1])
        assert (now["data_updated_date"] == now["updated_date"]) is frames
        dates.append(now["updated_date"])
        return now

    store.add_frames(task["id"], [(path.name, path.read_bytes()) for path in COCO_IMAGES])
    with_frames = changed(frames=True)
    store.put_annotations(task["id"], {"shapes": [box(with_frames, 0, [1, 2, 3, 4])]})
    changed(frames=False)
    new_box = box(with_frames, 1, [1, 2, 3, 4])
    (created,) = store.patch_annotations(task["id"], {"shapes": [new_box]}, "create")["shapes"]
    changed(frames=False)
    store.patch_annotations(task["id"], {"shapes": [{**created, "points": [2, 2, 4, 4]}]}, "update")
    changed(frames=False)
    store.patch_annotations(task["id"], {"shapes": [{"id": created["id"]}]}, "delete")
    changed(frames=False)
    store.delete_annotations(task["id"])
    changed(frames=False)
    store.begin_run("req", "run", task["id"])
    store.write_results("req", "run", task["id"], {0: result(with_frames, 0, 1)}, cleanup_frames=None)
    latest = changed(frames=False)
    store.get_annotations(task["id"])
    store.list_tasks()
    assert store.get_task(task["id"]) == latest  # reading changes nothing
    assert latest["data_updated_date"] == with_frames["data_updated_date"]


def test_a_database_from_before_the_dates_gets_them_filled(store):
    """metadata.create_all adds no columns: the store adds them to an existing database, filled
    with the task's created_date, and keeps working with it."""
    task = new_task(store, frames=COCO_IMAGES[:1])
    url = store._engine.url.render_as_string(hide_password=False)
    url = None if url.startswith("sqlite") else url
    with store._engine.begin() as connection:
        for column in ("updated_date", "data_updated_date"):
            connection.exec_driver_sql(f"ALTER TABLE tasks DROP COLUMN {column}")
    reopened = Store(url, store.data_dir, None, PIXELS)
    try:
        migrated = reopened.get_task(task["id"])
        assert migrated["updated_date"] == migrated["data_updated_date"] == task["created_date"]
        assert {key: migrated[key] for key in task if "date" not in key} == \
            {key: task[key] for key in task if "date" not in key}
        reopened.put_annotations(task["id"], {"shapes": [box(task, 0, [1, 2, 3, 4])]})
        assert moment(reopened.get_task(task["id"])["updated_date"]) > moment(task["created_date"])
        Store(url, store.data_dir, None, PIXELS).close()  # a second start finds nothing to add
    finally:
        reopened.close()


def test_a_jobs_annotations_are_written_on_its_frames_only(store):
    task = new_task(store, segment_size=2)  # jobs: frames 0-1 and 2-3
    first, second = (job["id"] for job in task["jobs"])
    track = {"frame": 0, "label_id": ids(task)["thing"], "shapes": [
        {"frame": 0, "type": "rectangle", "points": [1, 1, 5, 5]},
        {"frame": 3, "type": "rectangle", "points": [2, 2, 6, 6]}]}
    store.put_annotations(task["id"], {"shapes": [box(task, 0, [1, 1, 2, 2]), box(task, 2, [2, 2, 3, 3])],
                                       "tracks": [track]})
    with pytest.raises(InvalidInput) as refused:
        store.put_annotations(task["id"], {"shapes": [box(task, 2, [0, 0, 1, 1]), box(task, 1, [0, 0, 1, 1])]},
                              job_id=second)
    assert str(refused.value) == f"shapes[1].frame: 1 is outside job {second} (frames 2..3)"
    with pytest.raises(InvalidInput, match=rf"tracks\[0\].shapes\[1\].frame: 3 is outside job {first} "):
        store.patch_annotations(task["id"], {"tracks": [track]}, "create", job_id=first)

    # The job's annotations are replaced: its shapes, and the track that runs through it.
    stored = store.put_annotations(task["id"], {"shapes": [box(task, 3, [3, 3, 4, 4])]}, job_id=second)
    everything = store.get_annotations(task["id"])
    assert shape_points(everything) == [(0, [1, 1, 2, 2]), (3, [3, 3, 4, 4])] and everything["tracks"] == []
    assert store.get_annotations(task["id"], second)["shapes"] == stored["shapes"]
    # Updates and deletes through a job reach its own items only.
    mine, = stored["shapes"]
    others = [shape for shape in everything["shapes"] if shape["frame"] == 0]
    with pytest.raises(InvalidInput, match=f"shapes: shape {others[0]['id']} is not one of job {second}'s annotations"):
        store.patch_annotations(task["id"], {"shapes": [others[0]]}, "delete", job_id=second)
    with pytest.raises(InvalidInput, match=f"shapes\\[0\\].frame: 0 is outside job {second}"):
        store.patch_annotations(task["id"], {"shapes": [{**mine, "frame": 0}]}, "update", job_id=second)
    store.patch_annotations(task["id"], {"shapes": [{**mine, "points": [9, 9, 10, 10]}]}, "update", job_id=second)
    assert shape_points(store.get_annotations(task["id"], second)) == [(3, [9, 9, 10, 10])]
    store.delete_annotations(task["id"], job_id=first)
    assert shape_points(store.get_annotations(task["id"])) == [(3, [9, 9, 10, 10])]


def test_frame_files_are_the_stored_files_in_frame_order(store, server_root):
    task = new_task(store, frames=COCO_IMAGES[:2])
    store.add_server_files(task["id"], ["b.png"])
    files = store.frame_files(task["id"], 1, 5)
    assert [(frame, name) for frame, name, _ in files] == [(1, COCO_IMAGES[1].name), (2, "b.png")]
    assert [path.read_bytes() for _, _, path in files] == [COCO_IMAGES[1].read_bytes(), ASTRONAUT.read_bytes()]
    assert files[1][2] == server_root / "b.png"  # read in place
