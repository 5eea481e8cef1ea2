"""The local platform: a tree of functions behind the nuclio dashboard API subset CVAT uses."""

import contextlib
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from serverless.common import settings
from serverless.runtime.platform import UnknownFunctions, discover, load_functions

from helpers import (
    FACE_FUNCTION,
    PROBE,
    TESTDATA,
    RunningProcess,
    b64_file,
    copy_function,
    free_port,
    serve_function,
    serve_platform,
    wait_until,
)

FACE = "openvino-omz-intel-face-detection-0205"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, face_models):
    tree = tmp_path_factory.mktemp("tree")
    copy_function(FACE_FUNCTION, tree / "openvino/face/nuclio")
    # The same real function with its weights missing: MODELS_DIR points at an empty directory.
    empty = tmp_path_factory.mktemp("no-models")
    copy_function(FACE_FUNCTION, tree / "openvino/face-missing/nuclio",
                  **{"metadata.name": "face-without-weights",
                     "spec.env": [{"name": "MODELS_DIR", "value": str(empty)}]})
    copy_function(PROBE, tree / "test/probe/nuclio")
    copy_function(PROBE, tree / "test/broken/nuclio", **{"metadata.name": "probe-init-fails",
                  "spec.env": [{"name": "PROBE_INIT_FAIL", "value": "cannot load"}]})
    copy_function(PROBE, tree / "test/invalid/nuclio", **{"metadata.name": "probe-invalid",
                                                          "metadata.annotations.type": "classifier"})
    with serve_platform(tree) as running:
        yield running


def test_lists_every_function_with_its_state(platform):
    functions = platform.http.get("/api/functions").json()
    assert {name: f["status"]["state"] for name, f in functions.items()} == {
        FACE: "ready", "runtime-probe": "ready",
        "face-without-weights": "error", "probe-init-fails": "error", "probe-invalid": "error"}
    face = functions[FACE]
    assert face["metadata"]["annotations"]["name"] == "Attributed face detection"
    assert face["metadata"]["labels"]["nuclio.io/project-name"] == "cvat"
    assert all(isinstance(v, str) for v in face["metadata"]["annotations"].values())
    assert json.loads(face["metadata"]["annotations"]["spec"])[0]["name"] == "face"
    assert face["spec"]["description"].startswith("Detection network finding faces")
    assert isinstance(face["status"]["httpPort"], int) and face["status"]["httpPort"] > 0


def test_error_states_say_why(platform):
    functions = platform.http.get("/api/functions").json()
    missing = functions["face-without-weights"]["status"]["message"]
    assert "face-detection-0205/FP32/face-detection-0205.xml is missing" in missing
    assert "python -m serverless.common.model_files download face-detection-0205" in missing
    assert functions["probe-init-fails"]["status"]["message"] == "init_context failed: RuntimeError: cannot load"
    assert "metadata.annotations.type: must be one of" in functions["probe-invalid"]["status"]["message"]


def test_get_one_function_and_404(platform):
    assert platform.http.get(f"/api/functions/{FACE}").json()["metadata"]["name"] == FACE
    assert platform.http.get("/api/functions/nope").status_code == 404


@pytest.mark.parametrize("in_path, name, problem", [
    ("Runtime-Probe", "Runtime-Probe", "lower case letters, digits or '-'"),  # never an alias of runtime-probe
    ("..%2Ffunction_invocations", "../function_invocations", "got '../function_invocations'"),
    ("runtime-probe%2F..%2Fruntime-probe", "runtime-probe/../runtime-probe", "got 'runtime-probe/../runtime-probe'"),
    ("runtime-probe%0A", None, "got 'runtime-probe\\n'"),  # a header cannot carry a newline at all
    ("runtime-probe%23x", "runtime-probe#x", "got 'runtime-probe#x'"),
    ("runtime-probe/extra", "runtime-probe/extra", "got 'runtime-probe/extra'"),
    ("-probe", "-probe", "start and end with a letter or digit"),
    ("p" * 64, "p" * 64, "at most 63 characters, got 64"),
])
def test_function_names_are_dns_labels_or_400(platform, in_path, name, problem):
    """nuclio's names (DNS-1123 labels): a malformed one is 400 saying why, in the path or in
    x-nuclio-function-name, and never reaches another path or function."""
    reply = platform.http.get(f"/api/functions/{in_path}")
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith("the path's function name: a function name must")
    assert problem in reply.json()["error"]
    if name is not None:
        invoked = platform.http.post("/api/function_invocations", json={}, headers={"x-nuclio-function-name": name})
        assert invoked.status_code == 400, invoked.text
        assert invoked.json()["error"].startswith("x-nuclio-function-name: a function name must")
        assert problem in invoked.json()["error"]


def test_well_formed_unknown_names_are_404(platform):
    assert platform.http.get("/api/functions/no-such-function").status_code == 404
    reply = platform.http.post("/api/function_invocations", json={},
                               headers={"x-nuclio-function-name": "no-such-function"})
    assert reply.status_code == 404 and reply.json() == {"error": "function no-such-function not found"}


def test_invocation_through_the_dashboard(platform):
    reply = platform.http.post("/api/function_invocations",
                               json={"image": b64_file(TESTDATA / "skimage/astronaut.png")},
                               headers={"x-nuclio-function-name": FACE, "x-nuclio-path": "/",
                                        "x-nuclio-invoke-timeout": "120s"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    (face,) = reply.json()
    assert face["label"] == "face"


def test_function_port_answers_directly_too(platform):
    port = platform.http.get(f"/api/functions/{FACE}").json()["status"]["httpPort"]
    reply = platform.http.post(f"http://127.0.0.1:{port}/",
                               json={"image": b64_file(TESTDATA / "skimage/astronaut.png")})
    assert reply.status_code == 200 and len(reply.json()) == 1


def test_invocation_path_headers_and_errors_pass_through(platform):
    seen = platform.http.post("/api/function_invocations", json={"k": 1},
                              headers={"x-nuclio-function-name": "runtime-probe", "x-nuclio-path": "/deep/path",
                                       "x-extra": "kept"}).json()
    assert (seen["path"], seen["body"], seen["headers"]["X-Extra"]) == ("/deep/path", {"k": 1}, "kept")
    assert not any(name.lower().startswith("x-nuclio") for name in seen["headers"])
    crash = platform.http.post("/api/function_invocations", json={"action": "raise", "message": "boom"},
                               headers={"x-nuclio-function-name": "runtime-probe"})
    assert crash.status_code == 500 and '"boom"' in crash.text
    bad = platform.http.post("/api/function_invocations", json={"image": "%%%"},
                             headers={"x-nuclio-function-name": FACE})
    assert bad.status_code == 400 and "not valid base64" in bad.text


def test_invocation_of_unknown_and_not_ready_functions(platform):
    assert platform.http.post("/api/function_invocations", json={},
                              headers={"x-nuclio-function-name": "nope"}).status_code == 404
    assert platform.http.post("/api/function_invocations", json={}).status_code == 400
    reply = platform.http.post("/api/function_invocations", json={},
                               headers={"x-nuclio-function-name": "face-without-weights"})
    assert reply.status_code == 503
    assert "not ready (state error)" in reply.json()["error"] and "is missing" in reply.json()["error"]


def test_invoke_timeout_is_504(platform):
    reply = platform.http.post("/api/function_invocations", json={"action": "sleep", "seconds": 1.5},
                               headers={"x-nuclio-function-name": "runtime-probe", "x-nuclio-invoke-timeout": "500ms"})
    assert reply.status_code == 504


def test_gpu_files_are_used_only_when_asked(tmp_path):
    copy_function(PROBE, tmp_path / "a/nuclio")
    (tmp_path / "a/nuclio/function-gpu.yaml").write_text((PROBE / "function.yaml").read_text())
    copy_function(PROBE, tmp_path / "b/nuclio")
    assert [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path)] == [
        "a/nuclio/function.yaml", "b/nuclio/function.yaml"]
    assert [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path, gpu=True)] == [
        "a/nuclio/function-gpu.yaml", "b/nuclio/function.yaml"]


def test_only_the_functions_asked_for_are_loaded(tmp_path):
    copy_function(PROBE, tmp_path / "a/nuclio")
    copy_function(PROBE, tmp_path / "b/nuclio", **{"metadata.name": "other-probe"})
    assert list(load_functions(tmp_path, only={"other-probe"})) == ["other-probe"]
    with pytest.raises(UnknownFunctions,
                       match="no function named nope under .*; there are: other-probe, runtime-probe"):
        load_functions(tmp_path, only={"nope", "runtime-probe"})


def test_remote_functions_are_listed_followed_and_forwarded_to(tmp_path):
    """docker compose: each function in a container of its own, the platform only lists and forwards."""
    copy_function(PROBE, tmp_path / "probe/nuclio")
    copy_function(PROBE, tmp_path / "other/nuclio", **{"metadata.name": "other-probe"})
    with (serve_function(tmp_path / "probe/nuclio") as function,
          serve_platform(tmp_path, extra=("--remote", f"runtime-probe={function.url}")) as platform):
        listed = platform.get_json("/api/functions")
        assert list(listed) == ["runtime-probe"]  # only the named functions
        status = listed["runtime-probe"]["status"]
        assert status["state"] == "ready" and status["httpPort"] == int(function.url.rsplit(":", 1)[1])
        reply = platform.http.post("/api/function_invocations", json={"probe": "echo"},
                                   headers={"x-nuclio-function-name": "runtime-probe", "x-nuclio-path": "/"})
        assert reply.status_code == 200, reply.text
        function.close()  # the container goes away: the platform says so, and refuses calls
        wait_until(lambda: platform.get_json("/api/functions/runtime-probe")["status"]["state"] == "error", 15,
                   "the platform to notice")
        assert "cannot reach" in platform.get_json("/api/functions/runtime-probe")["status"]["message"]
        refused = platform.http.post("/api/function_invocations", json={},
                                     headers={"x-nuclio-function-name": "runtime-probe"})
        assert refused.status_code == 503


def test_remote_names_must_be_functions_of_the_tree(tmp_path):
    copy_function(PROBE, tmp_path / "probe/nuclio")
    with pytest.raises(UnknownFunctions, match="no function named nope"):
        load_functions(tmp_path, remote={"nope": "http://elsewhere:8080"})


def _processor_pid(platform, name: str) -> int | None:
    """The processor of a function: the parent of the worker process that answers (None: none answers)."""
    reply = platform.http.post("/api/function_invocations", json={}, headers={"x-nuclio-function-name": name})
    if reply.status_code != 200:
        return None
    worker = reply.json()["pid"]
    return int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_dead_processor_is_restarted_as_its_restart_policy_says(tmp_path):
    policy = {"spec.platform.attributes.restartPolicy": {"name": "always", "maximumRetryCount": 1}}
    copy_function(PROBE, tmp_path / "restarts/nuclio", **{"metadata.name": "probe-restarts", **policy})
    copy_function(PROBE, tmp_path / "stays-down/nuclio", **{"metadata.name": "probe-stays-down"})

    def state(name):
        return platform.get_json(f"/api/functions/{name}")["status"]

    with serve_platform(tmp_path) as platform:
        first = _processor_pid(platform, "probe-restarts")
        os.kill(first, signal.SIGKILL)
        os.kill(_processor_pid(platform, "probe-stays-down"), signal.SIGKILL)
        wait_until(lambda: _processor_pid(platform, "probe-restarts") not in (None, first), 30,
                   "probe-restarts to come back")
        wait_until(lambda: state("probe-stays-down")["state"] == "error", 30, "probe-stays-down to be marked down")
        assert state("probe-stays-down")["message"] == "processor exited with code -9"
        os.kill(_processor_pid(platform, "probe-restarts"), signal.SIGKILL)  # past maximumRetryCount
        wait_until(lambda: state("probe-restarts")["state"] == "error", 30, "probe-restarts to stay down")


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow to collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _processors_of(tree: Path) -> list[int]:
    """Every processor serving a function of ``tree``, whoever started it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _running(int(entry.name)):
            with contextlib.suppress(OSError):
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
                if b"serve" in arguments and any(a.startswith(str(tree).encode()) for a in arguments):
                    found.append(int(entry.name))
    return found


def test_a_killed_platform_takes_its_processors_and_workers_along(tmp_path):
    """SIGKILL leaves the platform no chance to stop its processors: they end by themselves (their
    workers too), so a restarted platform runs the only set."""
    copy_function(PROBE, tmp_path / "a/nuclio")
    copy_function(PROBE, tmp_path / "b/nuclio", **{"metadata.name": "other-probe"})
    with serve_platform(tmp_path) as platform:
        processors = _children(platform.process.pid)
        workers = [worker for processor in processors for worker in _children(processor)]
        assert len(processors) == 2 and len(workers) == 4
        platform.process.kill()
        platform.process.wait()
        wait_until(lambda: not any(_running(pid) for pid in processors + workers), 10,
                   "the processors and workers of the killed platform to end")
    with serve_platform(tmp_path) as platform:
        assert sorted(_processors_of(tmp_path)) == sorted(_children(platform.process.pid))
        assert len(_processors_of(tmp_path)) == 2


def test_a_function_in_error_loads_model_files_added_after_the_platform_started(tmp_path, face_models):
    models = tmp_path / "models"  # empty at start, as before `model_files mirror` or a mount
    models.mkdir()
    copy_function(FACE_FUNCTION, tree := tmp_path / "tree" / "face")
    running = RunningProcess(["platform", str(tree.parent)], free_port(), env={"MODELS_DIR": str(models)})
    try:
        def state():
            return ((running.get_json("/api/functions") or {}).get(FACE) or {}).get("status", {})

        failed = wait_until(lambda: state().get("state") == "error" and state(), 120, "the function to fail to load")
        assert "face-detection-0205" in failed["message"]
        for name in face_models:  # the files arrive while the platform runs
            (models / name).symlink_to(settings.current().models_dir / name)
        wait_until(lambda: state().get("state") == "ready", 120, "the function to load the files added")
        image = b64_file(TESTDATA / "ultralytics/zidane.jpg")
        reply = running.http.post("/api/function_invocations", json={"image": image},
                                  headers={"x-nuclio-function-name": FACE})
        assert reply.status_code == 200 and {item["label"] for item in reply.json()} == {"face"}
    finally:
        running.close()


def test_free_ports_come_from_below_the_kernels_range_for_outgoing_connections():
    # A port from that range can be taken by any connect() before the server binds it.
    lowest_outgoing = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1 and all(10000 <= port < lowest_outgoing for port in ports)
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
