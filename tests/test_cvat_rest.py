"""The standalone task store as CVAT's REST API (docs/wire-format.md §3.9), driven by the real
cvat-sdk ``Client`` and the real ``cvat-cli`` from PyPI, unchanged: login by password (CVAT's session
and CSRF token) and by access token, the server's version, tasks, labels, jobs, frames, chunks and
annotations as the SDK reads and writes them, ``cvat_sdk.auto_annotation.annotate_task`` and
``cvat-cli task auto-annotate`` with a built-in function on real weights.

The stack runs on Redis database 5. These tests call no serverless function (cvat-sdk functions run
in the client), so its nuclio URL points where nothing answers."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import cvat_sdk.auto_annotation as cvataa
import httpx
import numpy as np
import packaging.version
import pytest
from cvat_sdk import Client, Config, models
from cvat_sdk.api_client import exceptions
from cvat_sdk.core.client import AccessTokenCredentials
from cvat_sdk.core.helpers import get_paginated_collection
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
from cvat_sdk.datasets import TaskDataset
from PIL import Image

from dispatcher import authentication
from serverless.common import sdk
from serverless.sdk_functions import yolo_v3

from helpers import REPO, TESTDATA, TOKEN, Stack, free_port

COCO_IMAGES = sorted((TESTDATA / "coco128-val2017/images").glob("*.jpg"))
CLI = Path(sys.executable).with_name("cvat-cli")
SKELETON_SVG = ('<circle r="1.5" cx="50" cy="10" data-type="element node" data-element-id="1" data-node-id="1" '
                'data-label-name="head"></circle><circle r="1.5" cx="50" cy="90" data-type="element node" '
                'data-element-id="2" data-node-id="2" data-label-name="foot"></circle>')
LABELS = [
    {"name": "person", "type": "rectangle", "attributes": [
        {"name": "pose", "input_type": "select", "mutable": True, "values": ["standing", "sitting"]}]},
    {"name": "car", "type": "rectangle"},
    {"name": "blob", "type": "any"},
    {"name": "body", "type": "skeleton", "svg": SKELETON_SVG, "sublabels": [
        {"name": "head", "type": "points", "attributes": [
            {"name": "visible", "input_type": "checkbox", "mutable": False, "values": ["true"]}]},
        {"name": "foot", "type": "points"}]},
    {"name": "scene", "type": "tag"},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    nowhere = types.SimpleNamespace(url=f"http://127.0.0.1:{free_port()}")
    running = Stack(nowhere, tmp_path_factory.mktemp("data"), 5, None)
    yield running
    running.close()


@pytest.fixture(scope="module")
def frames_task(stack) -> dict:
    """35 photos (two chunks of 32), two jobs of 20 and 15 frames; read, never written."""
    return stack.task(LABELS, COCO_IMAGES[:35], segment_size=20)


def sdk_client(stack, cache: Path, login=None) -> Client:
    """cvat-sdk's Client, refusing a server whose version it does not support."""
    client = Client(stack.url, config=Config(cache_dir=cache, allow_unsupported_server=False))
    if login is not None:
        client.login(login)
    return client


@pytest.fixture(params=["password", "access token"])
def client(request, stack, tmp_path):
    login = ("annotator", TOKEN) if request.param == "password" else AccessTokenCredentials(TOKEN)
    with sdk_client(stack, tmp_path / "cache", login) as running:
        yield running


def named(items) -> dict:
    return {item.name: item for item in items}


# The server, and who may call it

def test_about_names_this_server_and_passes_the_sdks_version_check(stack, tmp_path):
    about = httpx.get(f"{stack.url}/api/server/about").json()  # open, as CVAT's
    assert about["version"] == "2.80.0" and about["name"] == "cvat-autoannotate dispatcher"
    assert "not CVAT" in about["description"]
    with sdk_client(stack, tmp_path) as client:  # allow_unsupported_server=False: a mismatch would raise
        assert client.get_server_version() == packaging.version.Version("2.80.0")


def test_password_login_is_cvats_session_with_its_csrf_token(stack, tmp_path):
    with sdk_client(stack, tmp_path, ("anyone at all", TOKEN)) as client:
        cookies = client.api_client.cookies
        assert {"sessionid", "csrftoken"} <= cookies.keys() and cookies["sessionid"]["httponly"]
        user, _ = client.api_client.users_api.retrieve_self()
        assert (user.id, user.username, user.groups, user.is_superuser, user.is_active) == (1, "admin", ["admin"],
                                                                                            True, True)
        assert client.users.retrieve_current_user().username == "admin"
        client.tasks.list()
        client.logout()
        assert not client.has_credentials()
        with pytest.raises(exceptions.UnauthorizedException):
            client.api_client.users_api.retrieve_self()

    with sdk_client(stack, tmp_path) as client, pytest.raises(exceptions.ApiException) as refused:
        client.login(("anyone", "not the token"))
    assert refused.value.status == 400 and "Unable to log in with provided credentials." in refused.value.body

    # CVAT's login key (40 characters, as its model wants) is a token too.
    key = httpx.post(f"{stack.url}/api/auth/login", json={"username": "anyone", "password": TOKEN}).json()["key"]
    assert len(key) == 40 and key != TOKEN
    assert httpx.get(f"{stack.url}/api/users/self", headers={"Authorization": f"Token {key}"}).status_code == 200


def test_refusals_wrong_token_401_and_a_session_without_its_csrf_header_403(stack, tmp_path):
    frames = stack.task(LABELS, COCO_IMAGES[:1])
    with sdk_client(stack, tmp_path, AccessTokenCredentials("wrong")) as client, \
            pytest.raises(exceptions.UnauthorizedException) as refused:
        client.tasks.retrieve(frames["id"])
    assert refused.value.status == 401

    with sdk_client(stack, tmp_path, ("annotator", TOKEN)) as client:
        task = client.tasks.retrieve(frames["id"])
        csrf = client.api_client.configuration.api_key.pop("csrfHeaderAuth")  # the header the SDK sends
        assert task.get_meta().size == 1  # reads need no CSRF token
        with pytest.raises(exceptions.ForbiddenException) as refused:
            task.update_annotations(models.PatchedLabeledDataRequest(), action=AnnotationUpdateAction.CREATE)
        assert refused.value.status == 403 and "CSRF Failed: CSRF token missing." in refused.value.body
        client.api_client.configuration.api_key["csrfHeaderAuth"] = csrf[::-1]
        with pytest.raises(exceptions.ForbiddenException) as refused:
            task.update_annotations(models.PatchedLabeledDataRequest(), action=AnnotationUpdateAction.CREATE)
        assert "CSRF Failed: CSRF token incorrect." in refused.value.body
        client.api_client.configuration.api_key["csrfHeaderAuth"] = csrf
        task.update_annotations(models.PatchedLabeledDataRequest(), action=AnnotationUpdateAction.CREATE)

    path = f"{stack.url}/api/tasks/{frames['id']}"
    assert httpx.get(path).status_code == 401
    assert httpx.get(path, auth=("anyone", TOKEN)).status_code == 200  # Basic, the token as password
    assert httpx.get(path, auth=("anyone", "wrong")).status_code == 401
    assert httpx.get(path, headers={"Authorization": f"Token {TOKEN}"}).status_code == 200
    # Sessions are signed with a key from API_TOKEN, and expire.
    genuine = authentication.new_session(TOKEN)[0]
    for session in (authentication.new_session("another token")[0],
                    authentication.new_session(TOKEN, now=time.time() - authentication.SESSION_SECONDS - 1)[0],
                    genuine[:-1] + ("A" if genuine[-1] != "A" else "B")):
        reply = httpx.get(path, cookies={"sessionid": session})
        assert reply.status_code == 401 and "log in again" in reply.json()["detail"]
    session, csrf = authentication.new_session(TOKEN)
    assert httpx.get(path, cookies={"sessionid": session}).status_code == 200
    assert httpx.delete(f"{path}/annotations", cookies={"sessionid": session, "csrftoken": csrf}).json() == \
        {"detail": "CSRF Failed: CSRF token missing."}
    # A csrftoken of another session does not do, even sent both ways.
    other_csrf = authentication.new_session(TOKEN)[1]
    assert httpx.delete(f"{path}/annotations", cookies={"sessionid": session, "csrftoken": other_csrf},
                        headers={"X-CSRFToken": other_csrf}).status_code == 403


# Reading a task as cvat-sdk does

def test_a_task_reads_as_cvats_task_read(client, frames_task):
    task = client.tasks.retrieve(frames_task["id"])
    assert (task.id, task.name, task.size, task.segment_size, task.overlap) == (frames_task["id"], "t", 35, 20, 0)
    assert (task.data_chunk_size, task.data_original_chunk_type, task.data_compressed_chunk_type) == \
        (32, "imageset", "imageset")
    assert (task.mode, task.dimension, task.media_type, task.status, task.organization) == \
        ("annotation", "2d", "image", "annotation", None)
    assert task.url == f"{client.api_map.host}/api/tasks/{task.id}"
    assert task.labels.url == f"{client.api_map.host}/api/labels?task_id={task.id}"
    assert (task.jobs.count, task.jobs.completed, task.jobs.validation) == (2, 0, 0)
    assert task.jobs.url == f"{client.api_map.host}/api/jobs?task_id={task.id}"
    assert task.created_date < task.updated_date  # the frames came after the task
    assert task.annotations_count == 0  # ours rides along: cvat-sdk keeps unknown fields
    assert frames_task["id"] in {listed.id for listed in client.tasks.list()}


def test_a_task_made_by_the_sdk_is_answered_as_task_read(client):
    task = client.tasks.create(models.TaskWriteRequest(name="made by cvat-sdk", segment_size=5, labels=[
        models.PatchedLabelRequest(name="car", type="rectangle", color="#ff0000", attributes=[
            models.AttributeRequest(name="colour", mutable=False, input_type="select", values=["red", "blue"],
                                    default_value="blue")])]))
    assert (task.name, task.size, task.segment_size, task.jobs.count, task.data_chunk_size) == \
        ("made by cvat-sdk", 0, 5, 0, 32)
    (car,) = task.get_labels()
    assert (car.name, car.type, [(a.name, a.default_value, a.values) for a in car.attributes]) == \
        ("car", "rectangle", [("colour", "blue", ["red", "blue"])])
    task.remove()
    with pytest.raises(exceptions.NotFoundException):
        client.tasks.retrieve(task.id)


def test_labels_are_cvats_paginated_labels(client, frames_task):
    task = client.tasks.retrieve(frames_task["id"])
    labels = task.get_labels()
    assert [(label.name, label.type, label.has_parent, label.task_id) for label in labels] == [
        (spec["name"], spec["type"], False, task.id) for spec in LABELS]
    person, body = named(labels)["person"], named(labels)["body"]
    (pose,) = person.attributes
    assert (pose.name, pose.input_type.value, pose.mutable, pose.default_value, pose.values) == \
        ("pose", "select", True, "standing", ["standing", "sitting"])
    assert [(sub.name, sub.type, sub.has_parent) for sub in body.sublabels] == [
        ("head", "points", True), ("foot", "points", True)]
    assert body.sublabels[0].attributes[0].input_type.value == "checkbox" and body.svg == SKELETON_SVG
    # Page by page, as get_labels reads them, following next.
    by_twos = get_paginated_collection(client.api_client.labels_api.list_endpoint, task_id=task.id, page_size=2)
    assert [label.to_dict() for label in by_twos] == [label.to_dict() for label in labels]
    first_page, _ = client.api_client.labels_api.list(task_id=task.id, page_size=2)
    assert (first_page.count, len(first_page.results), first_page.previous) == (5, 2, None)
    assert "page=2" in first_page.next and "page_size=2" in first_page.next
    head, _ = client.api_client.labels_api.retrieve(body.sublabels[0].id)
    assert (head.name, head.has_parent, head.parent_id) == ("head", True, body.id)
    job_labels = get_paginated_collection(client.api_client.labels_api.list_endpoint,
                                          job_id=task.get_jobs()[1].id)
    assert [label.id for label in job_labels] == [label.id for label in labels]


def test_jobs_are_cvats_job_read(client, frames_task):
    task = client.tasks.retrieve(frames_task["id"])
    jobs = task.get_jobs()
    assert [(job.start_frame, job.stop_frame, job.frame_count, job.task_id) for job in jobs] == [
        (0, 19, 20, task.id), (20, 34, 15, task.id)]
    job = client.jobs.retrieve(jobs[1].id)
    assert (job.type, job.stage, job.state, job.data_chunk_size, job.data_original_chunk_type, job.dimension) == \
        ("annotation", "annotation", "new", 32, "imageset", "2d")
    assert job.labels.url == f"{client.api_map.host}/api/labels?job_id={job.id}" and job.issues.count == 0
    assert job.updated_date == task.updated_date


def test_frames_meta_and_chunks_are_the_stored_files(client, frames_task, tmp_path):
    files = COCO_IMAGES[:35]
    task = client.tasks.retrieve(frames_task["id"])
    meta = task.get_meta()
    assert (meta.size, meta.chunk_size, meta.start_frame, meta.stop_frame, meta.deleted_frames,
            meta.image_quality) == (35, 32, 0, 34, [], 100)
    assert [(frame.name, frame.width, frame.height, frame.related_files) for frame in meta.frames] == [
        (path.name, *Image.open(path).size, 0) for path in files]
    assert meta.chunks_updated_date <= task.updated_date
    assert task.get_frame(33, quality="original").read() == files[33].read_bytes()

    for number, members in ((0, files[:32]), (1, files[32:])):
        chunk = io.BytesIO()
        task.download_chunk(number, chunk, quality="original")
        with zipfile.ZipFile(chunk) as archive:
            infos = archive.infolist()
            assert [info.compress_type for info in infos] == [zipfile.ZIP_STORED] * len(members)
            assert [archive.read(info) for info in infos] == [path.read_bytes() for path in members]
    compressed = io.BytesIO()
    task.download_chunk(1, compressed, quality="compressed")
    assert compressed.getvalue() == chunk.getvalue()
    with pytest.raises(exceptions.ApiException) as refused:
        task.download_chunk(2, io.BytesIO())
    assert refused.value.status == 400

    # cvat-sdk's dataset: member f % 32 of chunk f // 32 is frame f.
    dataset = TaskDataset(client, task.id, load_annotations=False)
    assert [sample.frame_name for sample in dataset.samples] == [path.name for path in files]
    for frame in (0, 31, 32, 34):
        np.testing.assert_array_equal(np.asarray(dataset.samples[frame].media.load_image()),
                                      np.asarray(Image.open(files[frame])))


# Writing annotations as cvat-sdk does

def test_annotations_are_set_updated_and_removed_through_the_sdk(client, stack):
    frames = stack.task(LABELS, COCO_IMAGES[:3], segment_size=2)  # jobs: frames 0-1 and 2
    task = client.tasks.retrieve(frames["id"])
    labels = named(task.get_labels())
    pose = labels["person"].attributes[0]
    head, foot = labels["body"].sublabels
    person = models.LabeledShapeRequest(type="rectangle", frame=0, label_id=labels["person"].id,
                                        points=[10, 20, 110, 220], attributes=[
                                            models.AttributeValRequest(spec_id=pose.id, value="sitting")])
    skeleton = models.LabeledShapeRequest(type="skeleton", frame=1, label_id=labels["body"].id, points=[], elements=[
        models.SubLabeledShapeRequest(type="points", frame=1, label_id=head.id, points=[30, 40]),
        models.SubLabeledShapeRequest(type="points", frame=1, label_id=foot.id, points=[30, 90], outside=True)])
    scene = models.LabeledImageRequest(frame=2, label_id=labels["scene"].id)
    before = task.updated_date
    task.set_annotations(models.LabeledDataRequest(shapes=[person, skeleton], tags=[scene]))
    stored = task.get_annotations()
    assert [(s.type.value, s.frame, s.label_id, s.points) for s in stored.shapes] == [
        ("rectangle", 0, labels["person"].id, [10, 20, 110, 220]), ("skeleton", 1, labels["body"].id, [])]
    assert [(a.spec_id, a.value) for a in stored.shapes[0].attributes] == [(pose.id, "sitting")]
    assert [(e.label_id, e.points, e.outside) for e in stored.shapes[1].elements] == [
        (head.id, [30, 40], False), (foot.id, [30, 90], True)]
    assert [(t.frame, t.label_id) for t in stored.tags] == [(2, labels["scene"].id)]
    task.fetch()
    assert task.updated_date > before

    moved = models.LabeledShapeRequest(**{**stored.shapes[0].to_dict(), "points": [11, 21, 111, 221]})
    task.update_annotations(models.PatchedLabeledDataRequest(shapes=[moved]))  # action=update
    task.update_annotations(models.PatchedLabeledDataRequest(shapes=[person]), action=AnnotationUpdateAction.CREATE)
    shapes = task.get_annotations().shapes
    assert [(s.id, s.points) for s in shapes[:1]] == [(stored.shapes[0].id, [11, 21, 111, 221])]
    assert len(shapes) == 3
    task.remove_annotations(ids=[shapes[2].id])
    assert [s.id for s in task.get_annotations().shapes] == [s.id for s in stored.shapes]

    # A job's annotations: the items on its frames; writes keep to them.
    first, second = (client.jobs.retrieve(job.id) for job in task.get_jobs())
    assert ([t.frame for t in second.get_annotations().tags], second.get_annotations().shapes) == ([2], [])
    assert [s.frame for s in first.get_annotations().shapes] == [0, 1]
    on_two = models.LabeledShapeRequest(type="rectangle", frame=2, label_id=labels["car"].id, points=[1, 2, 3, 4])
    second.set_annotations(models.LabeledDataRequest(shapes=[on_two]))
    assert [(s.frame, s.label_id) for s in second.get_annotations().shapes] == [(2, labels["car"].id)]
    assert second.get_annotations().tags == []  # replaced with the job's others
    assert [s.frame for s in task.get_annotations().shapes] == [0, 1, 2]
    with pytest.raises(exceptions.ApiException) as refused:
        second.set_annotations(models.LabeledDataRequest(shapes=[person]))
    assert refused.value.status == 400 and f"shapes[0].frame: 0 is outside job {second.id} (frames 2..2)" in \
        refused.value.body
    second.update_annotations(models.PatchedLabeledDataRequest(shapes=[on_two]), action=AnnotationUpdateAction.CREATE)
    assert len(second.get_annotations().shapes) == 2
    second.remove_annotations()
    assert [s.frame for s in task.get_annotations().shapes] == [0, 1]
    first.remove_annotations(ids=[first.get_annotations().shapes[0].id])
    assert [s.frame for s in task.get_annotations().shapes] == [1]
    task.remove_annotations()
    assert task.get_annotations().shapes == []


def test_the_sdks_task_cache_sees_every_change(client, stack):
    """cvat-sdk caches a task's annotations (and chunks) until its updated_date moves."""
    frames = stack.task(LABELS, COCO_IMAGES[:2])
    car = named(client.tasks.retrieve(frames["id"]).get_labels())["car"].id
    assert TaskDataset(client, frames["id"]).samples[0].annotations.shapes == []
    stack.ok("PATCH", f"/api/tasks/{frames['id']}/annotations", params={"action": "create"}, json={"shapes": [
        {"type": "rectangle", "frame": 0, "label_id": car, "points": [1, 2, 3, 4]}]})
    (shape,) = TaskDataset(client, frames["id"]).samples[0].annotations.shapes
    assert (shape.label_id, shape.points) == (car, [1, 2, 3, 4])


# cvat-sdk's annotate_task and cvat-cli's task auto-annotate, with a built-in function

def normalized(shapes: list[dict], names: dict[int, str]) -> list[tuple]:
    return sorted((s["frame"], names[s["label_id"]], s["type"], s["source"], [round(v, 2) for v in s["points"]],
                   round(s["score"], 3)) for s in shapes)


def cli(stack, home: Path, task_id: int, *auth: str, **env: str) -> subprocess.CompletedProcess:
    """The real cvat-cli, with a home of its own (no saved profile, its own cache)."""
    environment = {key: value for key, value in os.environ.items() if key not in ("CVAT_ACCESS_TOKEN", "PASS")}
    environment.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"),
                       **env)
    return subprocess.run([str(CLI), "--server-host", stack.url, *auth, "task", "auto-annotate", str(task_id),
                           "--function-module", "serverless.sdk_functions.yolo_v3", "--conf-threshold", "0.3"],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def test_annotate_task_and_cvat_cli_store_the_functions_own_detections(stack, tmp_path):
    images = COCO_IMAGES[:4]
    function = yolo_v3.create()
    labels = [{"name": label.name, "type": "rectangle"} for label in function.spec.labels]
    runs = {how: stack.task(labels, images)["id"] for how in ("sdk", "token", "password prompt", "password")}

    with sdk_client(stack, tmp_path / "sdk-cache", ("annotator", TOKEN)) as client:
        cvataa.annotate_task(client, runs["sdk"], function, conf_threshold=0.3)
    done = {
        "token": cli(stack, tmp_path / "a", runs["token"], CVAT_ACCESS_TOKEN=TOKEN),
        "password prompt": cli(stack, tmp_path / "b", runs["password prompt"], "--auth", "annotator", PASS=TOKEN),
        "password": cli(stack, tmp_path / "c", runs["password"], "--auth", f"annotator:{TOKEN}"),
    }
    for how, run in done.items():
        assert run.returncode == 0, f"{how}: {run.stderr}"
        assert "4/4" in run.stderr and "not compatible" not in run.stderr, run.stderr

    stored = {}
    for how, task_id in runs.items():
        names = {label["id"]: label["name"] for label in stack.labels(task_id)}
        stored[how] = normalized(stack.ok("GET", f"/api/tasks/{task_id}/annotations")["shapes"], names)
    # The function's own answer on each photo, as a caller of detect() gets it.
    expected = []
    for frame, path in enumerate(images):
        for shape in function.detect(sdk.detection_context(path.name, 0.3, False), Image.open(path)):
            expected.append((frame, function.spec.labels[shape.label_id].name, "rectangle", "auto",
                             [round(v, 2) for v in shape.points], round(shape.score, 3)))
    assert len(expected) >= 5, "YOLO found too little on these photos to tell runs apart"
    assert stored["sdk"] == sorted(expected)
    for how in done:
        assert stored[how] == stored["sdk"], how
