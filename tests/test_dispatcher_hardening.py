"""The API against hostile input, end to end: the API and a chunk worker as processes (Redis
database 1), the local platform serving the probe function (one copy that cannot start, one with
invalid metadata) and a cvat-sdk detector, on SQLite and on PostgreSQL. Function ids that are not
nuclio names, ids beyond the database's integers, bodies that are too large or come without
credentials, server files that cannot be resolved, images that cannot be decoded, thresholds that
are not numbers: each is a 4xx that names the problem, and a 500 that remains closes the connection
cleanly. No error names an SQL statement or a path outside the server files root.

First, the API fuzzed from its own OpenAPI document by schemathesis (``scripts/fuzz_api.py``): an
API process of its own with ``API_TOKEN`` set and sent, on the same Redis database, which it
empties before and after; it runs before this module's servers start, which is why it is here.
No answer may be a server error, and every answer must be one the document describes (status,
content type, headers, body schema), with invalid input refused and unsupported methods answered
405 with ``Allow``. One seeded pass over every operation, 50 examples per operation and phase
(about 2,600 requests), rather than a time budget: the same requests on any machine and under any
load. Longer explorations are ``scripts/fuzz_api.py --max-time``'s (README)."""

import io
import os
import runpy
import select
import socket
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import PROBE, REPO, TESTDATA, TOKEN, Stack, copy_function, postgres_database, serve_platform, wait_until

SDK_DETECTOR = Path(__file__).with_name("functions") / "sdk-detector"
BODY_LIMIT = 4 * 2**20
PNG = TESTDATA / "skimage/astronaut.png"
THING = [{"name": "car", "type": "rectangle"}]
fuzz = runpy.run_path(str(REPO / "scripts/fuzz_api.py"))["fuzz"]


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(tmp_path):
    outcome = fuzz(max_examples=50, redis_db=1, seed_value=20261207, report_dir=tmp_path)
    assert outcome.requests > 2000, outcome.output[-3000:]
    assert outcome.server_errors == [], outcome.server_errors[:10]
    assert outcome.failed_checks == [], outcome.failed_checks[:10]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    copy_function(PROBE, tree / "probe")
    copy_function(PROBE, tree / "down", **{"metadata.name": "probe-down",
                                           "spec.env": [{"name": "PROBE_INIT_FAIL", "value": "no weights here"}]})
    copy_function(PROBE, tree / "invalid", **{"metadata.name": "probe-invalid",
                                              "metadata.annotations.type": "not-a-kind"})
    copy_function(SDK_DETECTOR, tree / "sdk")
    with serve_platform(tree) as running:
        yield running


@pytest.fixture(scope="module")
def share(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("share")
    (root / "frames").mkdir()
    (root / "frames/astronaut.png").write_bytes(PNG.read_bytes())
    (root / "loop").symlink_to(root / "loop")
    (root / "frames/around").symlink_to(root / "frames/around-again")
    (root / "frames/around-again").symlink_to(root / "frames/around")
    (root / "outside").symlink_to("/etc")
    (root / "frames" / os.fsdecode(b"not-utf-8-\xff.png")).write_bytes(PNG.read_bytes())  # not nameable in JSON
    return root


@pytest.fixture(scope="module")
def stack(platform, share, tmp_path_factory):
    running = Stack(platform, tmp_path_factory.mktemp("data"), 1, None, workers=1,
                    SERVER_FILES_ROOT=str(share), MAX_BODY_BYTES=str(BODY_LIMIT))
    yield running
    running.close()


def task_with(stack, labels=THING, images=(PNG,)) -> int:
    return stack.task(labels, list(images))["id"]


def assert_no_internals(detail: str, *paths: Path) -> None:
    """No SQL statement and none of these absolute paths in an error's detail."""
    assert "SELECT" not in detail and "[SQL" not in detail and "parameters" not in detail, detail
    for path in paths:
        assert str(path) not in detail, detail


def raw_request(stack, head: str, body=b"", timeout: float = 10) -> tuple[str, dict, bytes, bool]:
    """One request over a socket of its own, the body (bytes, or pieces sent until the server
    answers) sent only as given: the status line, headers, body and whether the server closed the
    connection after answering."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=timeout) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for piece in [body] if isinstance(body, bytes) else body:
            if select.select([connection], [], [], 0)[0]:  # answered already: the rest would go unread
                break
            connection.sendall(piece)
        received = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:  # closed with some of the body we sent unread
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            header_end = received.find(b"\r\n\r\n")
            if header_end >= 0:
                length = [int(line.split(b":")[1]) for line in received[:header_end].split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(received) >= header_end + 4 + length[0]:
                    connection.settimeout(2)  # all of it: does the server close now?
    head_part, _, content = received.partition(b"\r\n\r\n")
    status, *lines = head_part.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status, headers, content, closed


# D1: function ids

def test_function_ids_are_nuclio_names_in_every_route(stack):
    task = task_with(stack)
    bad = {"%0a": "'\\n'", "runtime-probe%23junk": "'runtime-probe#junk'", "Bad%20Name": "'Bad Name'",
           "a" * 64: "'" + "a" * 64 + "'", "-probe": "'-probe'"}
    for segment, shown in bad.items():
        for method, path, body in [("GET", f"/api/lambda/functions/{segment}", None),
                                   ("POST", f"/api/lambda/functions/{segment}", {"task": task, "frame": 0}),
                                   ("POST", f"/detectors/{segment}/annotate", {"task": task})]:
            detail = stack.error(method, path, 400, json=body)
            assert detail.startswith(f"function_id: {shown} is not a nuclio function name"), detail
    for function in ("", "../function_invocations", "runtime-probe#junk", "runtime-probe/../x"):
        detail = stack.error("POST", "/api/lambda/requests", 400, json={"function": function, "task": task})
        assert detail.startswith(f"function: {function!r} is not a nuclio function name"), detail
    # Well formed and unknown: nuclio's 404, wherever the id comes from. Dots and underscores are
    # nuclio's to refuse (on Kubernetes it cannot deploy them; the local platform refuses them too).
    assert "no-such-function-1" in stack.error("GET", "/api/lambda/functions/no-such-function-1", 404)
    assert "is not a nuclio function name" not in stack.http.get("/api/lambda/functions/no-such.function_1").text
    stack.error("POST", "/api/lambda/functions/no-such-function", 404, json={"task": task, "frame": 0})
    stack.error("POST", "/detectors/no-such-function/annotate", 404, json={"task": task})
    stack.error("POST", "/api/lambda/requests", 404, json={"function": "no-such-function", "task": task})
    assert stack.ok("GET", "/api/lambda/functions/runtime-probe")["id"] == "runtime-probe"


# D2: ids beyond the database's integers, on SQLite and PostgreSQL

def out_of_range_calls(stack) -> None:
    task = task_with(stack)
    for big in (2**31, 2**63, 2**64):
        for path in (f"/api/tasks/{big}", f"/api/tasks/{big}/data/meta", f"/api/tasks/{big}/annotations",
                     f"/api/jobs/{big}", f"/api/jobs/{big}/annotations", f"/api/labels/{big}",
                     f"/api/tasks/{task}/data?type=frame&number={big}", f"/api/tasks/{task}/annotations?frame={big}",
                     f"/api/jobs?task_id={big}", f"/api/labels?task_id={big}", f"/api/labels?job_id={big}"):
            reply = stack.http.get(path)
            assert reply.status_code in (400, 404), f"{path}: {reply.status_code} {reply.text}"
            assert_no_internals(reply.json()["detail"])
        for method, path, body in [
                ("POST", "/api/lambda/functions/runtime-probe", {"task": big, "frame": 0}),
                ("POST", "/api/lambda/functions/runtime-probe", {"job": big, "frame": 0}),
                ("POST", "/api/lambda/requests", {"function": "runtime-probe", "task": big}),
                ("POST", "/api/lambda/requests", {"function": "runtime-probe", "task": task, "job": big}),
                ("POST", "/detectors/runtime-probe/annotate", {"task": big}),
                ("PATCH", f"/api/tasks/{task}/annotations?action=update", {"shapes": [{"id": big}]}),
                ("PATCH", f"/api/tasks/{task}/annotations?action=delete", {"tags": [{"id": big}]}),
                ("PUT", f"/api/tasks/{task}/annotations", {"shapes": [{"frame": big, "label_id": big, "type": "points",
                                                                       "points": [1, 2]}]})]:
            reply = stack.http.request(method, path, json=body)
            assert reply.status_code in (400, 404), f"{method} {path} {body}: {reply.status_code} {reply.text}"
            assert_no_internals(reply.json()["detail"])


def test_ids_beyond_the_database_range_are_refused_on_sqlite(stack):
    out_of_range_calls(stack)


def test_ids_beyond_the_database_range_are_refused_on_postgres(platform, tmp_path):
    with postgres_database("hardening") as url:
        running = Stack(platform, tmp_path, 1, url, workers=0)
        try:
            out_of_range_calls(running)
            # PostgreSQL refuses a NUL in a text: 400 with its reason, never the statement.
            reply = running.http.post("/api/tasks", json={"name": "a\x00b", "labels": THING})
            assert reply.status_code == 400, reply.text
            assert "NUL" in reply.json()["detail"]
            assert_no_internals(reply.json()["detail"])
        finally:
            running.close()


# D4: a 500 that remains

def test_a_500_is_whole_json_and_closes_the_connection(stack):
    # A function whose metadata is invalid is CVAT's 500 (docs/wire-format.md §3.3).
    status, headers, body, closed = raw_request(
        stack, f"GET /api/lambda/functions/probe-invalid HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n")
    assert status.startswith("HTTP/1.1 500") and headers["connection"] == "close" and closed
    assert "invalid metadata" in httpx.Response(500, content=body).json()["detail"]
    # A task whose frame folder cannot be made (a file stands in its way): an internal error, named
    # by its type only, not by the path it failed on.
    task = stack.ok("POST", "/api/tasks", 201, json={"name": "t", "labels": THING})["id"]
    blocker = stack.data_dir / "tasks" / str(task)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    form = b"--b\r\nContent-Disposition: form-data; name=\"client_files[0]\"; filename=\"a.png\"\r\n" \
           b"Content-Type: image/png\r\n\r\n" + PNG.read_bytes() + b"\r\n--b--\r\n"
    status, headers, body, closed = raw_request(
        stack, f"POST /api/tasks/{task}/data HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n"
               f"Content-Type: multipart/form-data; boundary=b\nContent-Length: {len(form)}\n", form)
    assert status.startswith("HTTP/1.1 500") and headers["connection"] == "close" and closed
    detail = httpx.Response(500, content=body).json()["detail"]
    assert detail.startswith("internal error: ") and "/" not in detail, detail
    blocker.unlink()
    assert stack.ok("GET", "/health") == {"status": "ok"}  # and the server goes on


# D5: credentials before the body, and the body's size

def test_credentials_and_size_are_checked_before_the_body_is_read(stack):
    # Headers announcing 200 MB and no byte of the body: the answer comes at once, not after it.
    for credentials, expected in [("", "401"), (f"Authorization: Bearer {TOKEN}\n", "413")]:
        started = time.monotonic()
        status, headers, body, _ = raw_request(
            stack, f"POST /api/tasks HTTP/1.1\nHost: x\n{credentials}Content-Type: application/json\n"
                   f"Content-Length: {200 * 2**20}\n", timeout=15)
        assert status.startswith(f"HTTP/1.1 {expected}"), status
        assert time.monotonic() - started < 5
        detail = httpx.Response(int(expected), content=body).json()["detail"]
        assert ("MAX_BODY_BYTES" if expected == "413" else "Authorization: Bearer") in detail
    # Streamed without a length: refused as soon as the bytes pass the limit, JSON or an upload.
    def chunked(first: bytes = b""):
        """HTTP/1.1 chunks, 64 KiB each, well past the limit."""
        for data in [first] * bool(first) + [b" " * 65536] * (BODY_LIMIT // 65536 + 64):
            yield f"{len(data):x}\r\n".encode() + data + b"\r\n"

    task = task_with(stack)
    part = b"--b\r\nContent-Disposition: form-data; name=\"client_files[0]\"; filename=\"a.png\"\r\n\r\n"
    for path, content_type, first in [("/api/tasks", "application/json", b""),
                                      (f"/api/tasks/{task}/data", "multipart/form-data; boundary=b", part)]:
        status, headers, body, _ = raw_request(
            stack, f"POST {path} HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\nContent-Type: {content_type}\n"
                   "Transfer-Encoding: chunked\n", chunked(first))
        assert status.startswith("HTTP/1.1 413"), (path, status, body)
        assert "MAX_BODY_BYTES" in httpx.Response(413, content=body).json()["detail"]
    # Below the limit, all is as before; the frame is served from its file, as stored.
    reply = stack.http.get(f"/api/tasks/{task}/data", params={"type": "frame", "number": 0})
    assert (reply.status_code, reply.headers["content-type"], reply.content) == (200, "image/png", PNG.read_bytes())


# D6: server files

def test_server_files_survive_loops_nuls_and_long_names(stack, share):
    listing = stack.ok("GET", "/api/server/share", params={"directory": "/"})
    assert [entry["name"] for entry in listing] == ["frames"]  # the loops and the way out are left out
    assert stack.ok("GET", "/api/server/share", params={"directory": "frames"}) == [
        {"name": "astronaut.png", "type": "REG", "mime_type": "image"}]
    for directory, status, reason in [("loop", 400, "a loop of symbolic links"),
                                      ("frames/around", 400, "a loop of symbolic links"),
                                      ("a\x00b", 400, "null byte"), ("x" * 300, 400, "File name too long"),
                                      ("x/" * 3000, 400, "File name too long"), ("outside", 404, "no folder"),
                                      ("../..", 400, "must be a folder under")]:
        detail = stack.error("GET", "/api/server/share", status, params={"directory": directory})
        assert detail.startswith("directory: ") and reason in detail, detail
        assert_no_internals(detail, share, share.parent)
    task = task_with(stack)
    for path, reason in [("loop", "a loop of symbolic links"), ("frames/around", "a loop of symbolic links"),
                         ("a\x00b", "null byte"), ("y" * 300, "File name too long"),
                         ("outside/passwd", "outside the server files root"), ("frames", "no such file")]:
        for request in ({"json": {"server_files": [path]}}, {"data": {"server_files[0]": path}}):
            detail = stack.error("POST", f"/api/tasks/{task}/data", 400, **request)
            assert detail.startswith("paths[0]") and reason in detail, detail
            assert_no_internals(detail, share, share.parent)
    assert stack.error("POST", f"/api/tasks/{task}/data", 400, content=b"{not json",
                       headers={"Content-Type": "application/json"}).startswith("body: not JSON")


# D7: images that cannot be decoded, on upload and later

def encoded(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, image_format)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_every_image_decoder_error_on_upload_is_400_naming_the_file(stack):
    task = stack.ok("POST", "/api/tasks", 201, json={"name": "t", "labels": THING})["id"]
    broken = {"cut.jpg": encoded("JPEG")[:300], "cut-early.jpg": encoded("JPEG")[:30],
              "cut.webp": encoded("WEBP")[:30], "cut.bmp": encoded("BMP")[:30],
              "header.bmp": b"BM" + b"\0" * 12 + b"\x05\0\0\0" + b"\0" * 40, "cut.ico": encoded("ICO")[:30],
              "header.ppm": b"P6\n2 2\n70000\n" + b"\0" * 24, "cut.ppm": b"P6\n", "cut.png": encoded("PNG")[:20],
              "empty.png": b"", "huge.png": png_header(100_000, 100_000), "text.jpg": b"not an image at all"}
    for name, data in broken.items():
        detail = stack.error("POST", f"/api/tasks/{task}/data", 400, files=[("client_files[0]", (name, data))])
        assert detail.startswith(f"files[0] ({name!r}): "), detail
    assert stack.ok("GET", f"/api/tasks/{task}")["size"] == 0


def test_a_frame_replaced_by_a_non_image_is_a_4xx_naming_it(stack):
    labels = [{"name": "car", "type": "rectangle", "attributes": []}]
    task = task_with(stack, labels, [PNG, PNG])
    frame_file = next((stack.data_dir / "tasks" / str(task) / "frames").glob("1.*"))
    frame_file.write_bytes(b"no longer an image")
    for function in ("sdk-shapes", "runtime-probe"):
        detail = stack.error("POST", f"/api/lambda/functions/{function}", 400, json={"task": task, "frame": 1})
        assert detail.startswith(f"frame 1 of task {task}: the stored file is no longer an image"), detail
    detail = stack.error("GET", f"/api/tasks/{task}/data", 400, params={"type": "frame", "number": 1})
    assert f"frame 1 of task {task}" in detail
    stack.ok("POST", "/api/lambda/functions/sdk-shapes", json={"task": task, "frame": 0})  # the other one is fine
    request = stack.ok("POST", "/api/lambda/requests", json={"function": "sdk-shapes", "task": task})
    ended = stack.wait(request["id"])
    assert ended["frames"]["done"] == 1 and [failure["frame"] for failure in ended["failures"]] == [1], ended
    assert ended["failures"][0]["reason"], ended
    next(frame_file.parent.glob("0.*")).unlink()
    detail = stack.error("GET", f"/api/tasks/{task}/data", 404, params={"type": "frame", "number": 0})
    assert f"frame 0 of task {task}: its file is gone" in detail
    assert_no_internals(detail, stack.data_dir)


# D8: offline thresholds

def test_offline_thresholds_are_checked_before_anything_else(stack):
    task = task_with(stack)
    for value in ("NaN", "-5", "1e400", "Infinity", "-0.5"):
        # probe-down cannot take calls (503): the body is refused first, as an online call's would be.
        for path, body in [
                ("/api/lambda/requests", f'{{"function": "probe-down", "task": {task}, "threshold": {value}}}'),
                ("/detectors/probe-down/annotate", f'{{"task": {task}, "threshold": {value}}}'),
                ("/api/lambda/requests", f'{{"function": "probe-down", "task": {task}, "max_distance": {value}}}')]:
            detail = stack.error("POST", path, 400, content=body, headers={"Content-Type": "application/json"})
            assert detail.startswith(("threshold: ", "max_distance: ")), detail
    assert "not ready" in stack.error("POST", "/api/lambda/requests", 503,
                                      json={"function": "probe-down", "task": task, "threshold": 0})


# D16: the OpenAPI document and the methods

def test_openapi_describes_the_real_responses(stack):
    document = httpx.get(f"{stack.url}/openapi.json").json()
    paths = document["paths"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorDetail"}
    for operations in paths.values():
        for operation in operations.values():
            assert "422" not in operation["responses"]
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert response["content"]["application/json"]["schema"] == error, (operation, status)
    assert document["components"]["schemas"]["ErrorDetail"]["properties"]["detail"]["type"] == "string"

    def statuses(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"400", "401", "404", "413"} <= statuses("/api/tasks/{task_id}", "get")
    assert {"404", "409"} <= statuses("/api/tasks/{task_id}", "delete")
    assert {"400", "401", "404", "409", "413", "503"} <= statuses("/api/lambda/requests", "post")
    assert {"400", "404", "502", "503", "504"} <= statuses("/api/lambda/functions/{function_id}", "post")
    assert {"400", "401", "404", "409", "503"} <= statuses("/detectors/{function_id}/annotate", "post")
    parameters = {p["name"]: p["schema"] for p in paths["/api/tasks/{task_id}/export"]["get"]["parameters"]}
    assert parameters["format"]["enum"] == ["coco", "cvat"]
    parameters = {p["name"]: p["schema"] for p in paths["/api/tasks/{task_id}/annotations"]["patch"]["parameters"]}
    assert parameters["action"]["enum"] == ["create", "update", "delete"]
    assert parameters["task_id"]["maximum"] == 2**31 - 1
    parameters = {p["name"]: p["schema"] for p in paths["/api/lambda/functions/{function_id}"]["get"]["parameters"]}
    assert parameters["function_id"]["pattern"] and parameters["function_id"]["maxLength"] == 63
    request = document["components"]["schemas"]["OfflineRequest"]["properties"]
    assert request["threshold"]["anyOf"][0]["minimum"] == 0


def test_unsupported_methods_answer_405_with_allow(stack):
    task = task_with(stack)
    for method, path, allowed in [("TRACE", "/api/tasks", "GET, HEAD, POST"),
                                  ("TRACE", f"/api/tasks/{task}", "DELETE, GET, HEAD"),
                                  ("PUT", f"/api/tasks/{task}", "DELETE, GET, HEAD"),
                                  ("OPTIONS", "/api/lambda/requests", "GET, HEAD, POST"),
                                  ("DELETE", "/api/lambda/functions", "GET, HEAD"),
                                  ("HEAD", "/api/lambda/requests/x/y", None),
                                  ("POST", "/health", "GET, HEAD"),
                                  ("TRACE", "/ui/", "GET, HEAD")]:
        reply = stack.http.request(method, path)
        if allowed is None:  # no route there at all
            assert reply.status_code == 404
            continue
        assert (reply.status_code, reply.headers.get("allow")) == (405, allowed), (method, path, reply.text)
        if method != "HEAD":
            assert reply.json() == {"detail": "Method Not Allowed"}
    # HEAD answers what GET would, headers only.
    head = stack.http.head(f"/api/tasks/{task}/data", params={"type": "frame", "number": 0})
    assert (head.status_code, head.headers["content-type"], head.content) == (200, "image/png", b"")
    assert stack.http.head(f"/api/tasks/{2**40}").status_code == 400
    wait_until(lambda: stack.http.get("/health").status_code == 200, 5, "the API")
