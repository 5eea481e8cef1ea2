"""The local processor against nuclio's observable behaviour, through a real process over HTTP."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import PROBE, REPO, copy_function, serve_function, wait_until


@pytest.fixture(scope="module")
def probe():
    with serve_function(PROBE) as running:
        yield running


def test_json_event_reaches_the_handler_as_nuclio_builds_it(probe):
    reply = probe.http.post("/some/path?x=1&y=two", json={"hello": "world"}, headers={"x-custom": "abc"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    seen = reply.json()
    assert seen["body_type"] == "dict" and seen["body"] == {"hello": "world"}
    assert (seen["method"], seen["path"], seen["content_type"]) == ("POST", "/some/path", "application/json")
    assert seen["headers"]["X-Custom"] == "abc"  # Go's canonical header names, as nuclio hands them over
    assert seen["fields"] == {"x": "1", "y": "two"}
    assert seen["trigger"] == ["http", "myHttpTrigger"]


def test_non_json_bodies_stay_bytes(probe):
    assert probe.http.post("/", content=b"raw", headers={"content-type": "text/plain"}).json()["body_type"] == "bytes"
    # nuclio parses only an exact application/json; broken JSON is left as bytes too.
    broken = probe.http.post("/", content=b"{not json", headers={"content-type": "application/json"}).json()
    assert (broken["body_type"], broken["body"]) == ("bytes", "{not json")
    # So is JSON nested too deeply to parse (nuclio's wrapper keeps the bytes on any parse error).
    deep = b"[" * 20_000 + b"]" * 20_000  # within the probe's maxRequestBodySize
    nested = probe.http.post("/", content=deep, headers={"content-type": "application/json"})
    assert nested.status_code == 200, nested.text[:300]
    assert nested.json()["body_type"] == "bytes" and len(nested.json()["body"]) == len(deep)


def test_json_bodies_parse_as_pythons_json_reads_them(probe):
    # What nuclio's Python wrapper reads with the stdlib and a faster parser refuses: NaN,
    # Infinity, integers past 64 bits.
    body = rb'{"a": NaN, "b": -Infinity, "c": 123456789012345678901234567890, "d": "\u00e9"}'
    seen = probe.http.post("/", content=body, headers={"content-type": "application/json"}).json()
    assert seen["body_type"] == "dict"
    assert seen["body"]["c"] == 123456789012345678901234567890 and seen["body"]["d"] == "\u00e9"
    # Nesting the stdlib parses is parsed; nesting only a deeper parser would reach stays bytes, as
    # under nuclio (the handlers' checks are written for the stdlib's depth).
    for depth, kind in ((400, "dict"), (1010, "bytes")):
        body = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        seen = probe.http.post("/", content=body, headers={"content-type": "application/json"}).json()
        assert seen["body_type"] == kind, depth


def test_spec_env_is_applied_and_common_comes_from_this_repository(probe):
    seen = probe.http.post("/", json={}).json()
    assert seen["env"] == "from-function-yaml"
    assert seen["common_module"] == str(REPO / "serverless/common/handler.py")
    assert seen["cwd"] == str(PROBE)


@pytest.mark.parametrize("form, status, content_type, body", [
    ("response", 201, "text/x-probe", b"made"),
    ("str", 200, "text/plain", b"plain text"),
    ("bytes", 200, "text/plain", b"\x00\x01binary"),
    ("dict", 200, "application/json", b'{"a": 1}'),
    ("list", 200, "application/json", b"[1, 2]"),
    ("tuple", 202, "application/json", b'{"accepted": true}'),
])
def test_every_return_form_nuclio_accepts(probe, form, status, content_type, body):
    reply = probe.http.post("/", json={"action": "return", "form": form})
    assert (reply.status_code, reply.headers["content-type"], reply.content) == (status, content_type, body)
    if form == "response":
        assert reply.headers["x-probe"] == "yes"


def test_handler_exception_is_500_with_the_message(probe):
    reply = probe.http.post("/", json={"action": "raise", "message": "the model exploded"})
    assert reply.status_code == 500
    assert reply.text.startswith('Exception caught in handler - "the model exploded"')
    assert probe.http.post("/", json={}).status_code == 200  # the worker keeps serving


def test_body_over_max_request_body_size_is_413(probe):
    too_big = b"x" * 65537
    reply = probe.http.post("/", content=too_big, headers={"content-type": "application/octet-stream"})
    assert reply.status_code == 413 and "maxRequestBodySize (65536 bytes)" in reply.text

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(70):
            yield b"y" * 1024

    assert probe.http.post("/", content=chunks()).status_code == 413
    assert probe.http.post("/", content=b"x" * 65536).status_code == 200  # exactly the limit is fine


def test_init_context_runs_once_per_worker_process(probe):
    assert len(worker_pids(probe)) == 2  # numWorkers (maxWorkers) 2, both used
    described = [probe.http.post("/", json={}).json() for _ in range(6)]
    assert {d["init_calls"] for d in described} == {1}
    assert {d["worker_id"] for d in described} <= {0, 1}


def test_saturated_workers_give_503_after_the_availability_timeout(probe):
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(probe.http.post, "/", json={"action": "sleep", "seconds": 1.5}) for _ in range(2)]
        time.sleep(0.3)
        started = time.monotonic()
        third = probe.http.post("/", json={})
        waited = time.monotonic() - started
        assert [b.result().status_code for b in busy] == [200, 200]
    assert third.status_code == 503 and "no free worker within 500 ms" in third.text
    assert 0.4 < waited < 1.4  # workerAvailabilityTimeoutMilliseconds: 500


def worker_pids(probe) -> set[int]:
    """The pids of both workers: two overlapping calls cannot share one."""
    with ThreadPoolExecutor(2) as pool:
        return {r.json()["pid"] for r in pool.map(
            lambda _: probe.http.post("/", json={"action": "sleep", "seconds": 0.3}), range(2))}


def test_event_timeout_gives_504_and_replaces_the_worker(probe):
    pids_before = worker_pids(probe)
    assert len(pids_before) == 2
    started = time.monotonic()
    reply = probe.http.post("/", json={"action": "sleep", "seconds": 10})
    assert reply.status_code == 504 and "eventTimeout (2s)" in reply.text
    assert 1.9 < time.monotonic() - started < 4
    wait_until(lambda: probe.readiness()["ready_workers"] == 2, 30, "the replacement worker")
    pids_after = worker_pids(probe)
    assert len(pids_after) == 2 and len(pids_after - pids_before) == 1  # exactly one worker is new


def test_worker_crash_gives_500_and_a_replacement(probe):
    reply = probe.http.post("/", json={"action": "exit"})
    assert reply.status_code == 500 and "exit code 3" in reply.text
    wait_until(lambda: probe.readiness()["ready_workers"] == 2, 30, "the replacement worker")
    assert probe.http.post("/", json={}).status_code == 200


def test_readiness_only_after_every_worker_finished_init(tmp_path):
    slow = copy_function(PROBE, tmp_path / "slow", **{"spec.env": [{"name": "PROBE_INIT_DELAY", "value": "3"}]})
    with serve_function(slow, until="any") as running:
        status = running.http.get("/__runtime/ready")
        assert status.status_code == 503 and status.json()["state"] == "building"
        wait_until(lambda: running.http.get("/__runtime/ready").status_code == 200, 30, "readiness")
        assert running.readiness() == {"function": "runtime-probe", "state": "ready", "message": "",
                                       "workers": 2, "ready_workers": 2}


def test_failed_init_context_is_reported_and_calls_get_503(tmp_path):
    broken = copy_function(PROBE, tmp_path / "broken",
                           **{"spec.env": [{"name": "PROBE_INIT_FAIL", "value": "weights are gone"}]})
    with serve_function(broken, until="error") as running:
        status = running.http.get("/__runtime/ready")
        assert status.status_code == 503
        assert status.json()["message"] == "init_context failed: RuntimeError: weights are gone"
        reply = running.http.post("/", json={})
        assert reply.status_code == 503 and "weights are gone" in reply.text


def test_binary_request_body_reaches_the_handler_unchanged(probe):
    payload = bytes(range(256))
    seen = probe.http.post("/", content=payload, headers={"content-type": "application/octet-stream"}).json()
    assert seen["body"].encode("latin-1") == payload
