"""FUNCTION_TOKEN: with it set, the platform, each processor and each handler refuse calls without
``Authorization: Bearer <token>`` (health and readiness excepted), and the dispatcher sends it."""

import logging

import httpx
import nuclio_sdk
import pytest

from dispatcher import settings as dispatcher_settings
from dispatcher.gateway import Gateway, GatewayError
from dispatcher.registry import Replica
from serverless.common import settings as function_settings
from serverless.common.handler import json_handler

from helpers import PROBE, RunningProcess, copy_function, free_port, serve_function, wait_until

TOKEN = "function-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    copy_function(PROBE, tree / "probe/nuclio")
    running = RunningProcess(["platform", str(tree)], free_port(), env={"FUNCTION_TOKEN": TOKEN})
    try:
        def ready():
            try:
                listed = running.http.get("/api/functions", headers=BEARER).json()
            except httpx.TransportError:
                return False
            return listed["runtime-probe"]["status"]["state"] == "ready"

        wait_until(ready, 60, "the probe to be ready")
        yield running
    finally:
        running.close()


def test_the_platform_refuses_calls_without_the_token(platform):
    required = "'Authorization: Bearer <FUNCTION_TOKEN>' is required"
    for headers, problem in [({}, required), ({"Authorization": f"Token {TOKEN}"}, required),
                             ({"Authorization": "Bearer wrong"}, "the bearer token does not match FUNCTION_TOKEN")]:
        for reply in (platform.http.get("/api/functions", headers=headers),
                      platform.http.get("/api/functions/runtime-probe", headers=headers),
                      platform.http.post("/api/function_invocations", json={},
                                         headers={**headers, "x-nuclio-function-name": "runtime-probe"})):
            assert reply.status_code == 401 and reply.json() == {"error": problem}, reply.text
            assert reply.headers["www-authenticate"] == "Bearer"
    assert platform.http.get("/api/functions", headers=BEARER).json()["runtime-probe"]["status"]["state"] == "ready"
    # The platform's health check needs no token.
    assert platform.http.get("/__runtime/ready").json() == {"functions": {"ready": 1}}
    invoked = platform.http.post("/api/function_invocations", json={"k": 1},
                                 headers={**BEARER, "x-nuclio-function-name": "runtime-probe"})
    assert invoked.status_code == 200 and invoked.json()["body"] == {"k": 1}


def test_processors_refuse_direct_calls_without_the_token(platform):
    port = platform.http.get("/api/functions/runtime-probe", headers=BEARER).json()["status"]["httpPort"]
    direct = f"http://127.0.0.1:{port}"
    refused = platform.http.post(f"{direct}/", json={})
    assert refused.status_code == 401 and refused.text == "'Authorization: Bearer <FUNCTION_TOKEN>' is required"
    assert platform.http.post(f"{direct}/", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert platform.http.post(f"{direct}/", json={"k": 2}, headers=BEARER).json()["body"] == {"k": 2}
    assert platform.http.get(f"{direct}/__runtime/ready").status_code == 200  # health checks need no token


def test_a_token_in_spec_env_protects_that_function(tmp_path):
    folder = copy_function(PROBE, tmp_path / "probe", **{"spec.env": [{"name": "FUNCTION_TOKEN", "value": TOKEN}]})
    with serve_function(folder) as function:
        assert function.http.post("/", json={}).status_code == 401
        assert function.http.post("/", json={"k": 4}, headers=BEARER).json()["body"] == {"k": 4}


@pytest.mark.parametrize("method", ["dashboard", "direct"])
def test_the_dispatcher_sends_the_token(platform, method):
    environ = {"NUCLIO_URL": platform.url, "NUCLIO_INVOKE_METHOD": method, "FUNCTION_TOKEN": TOKEN}
    gateway = Gateway(dispatcher_settings.load(environ))
    without = Gateway(dispatcher_settings.load({**environ, "FUNCTION_TOKEN": ""}))
    try:
        ((dashboard, config),) = gateway.function_configs()
        assert (dashboard, config["metadata"]["name"]) == (platform.url, "runtime-probe")
        replica = Replica.from_config(*gateway.function_config("runtime-probe")[0])
        assert gateway.invoke("runtime-probe", replica, {"k": 3})["body"] == {"k": 3}
        with pytest.raises(GatewayError) as refused:
            without.invoke("runtime-probe", replica, {"k": 3})
        assert refused.value.status == 401 and "FUNCTION_TOKEN" in refused.value.message
    finally:
        gateway.close()
        without.close()


def test_handlers_check_the_token_themselves(monkeypatch):
    """Under real nuclio the processor is nuclio's own, which checks nothing: the handler does."""
    monkeypatch.setenv("FUNCTION_TOKEN", TOKEN)
    function_settings.current.cache_clear()
    try:
        handler = json_handler(lambda context, body: {"got": body})
        context = nuclio_sdk.Context(nuclio_sdk.Logger(logging.INFO), nuclio_sdk.Platform("local"), 0,
                                     nuclio_sdk.TriggerInfo("http", "http"))

        def call(headers):
            return handler(context, nuclio_sdk.Event(body={"a": 1}, headers=headers, content_type="application/json"))

        refused = call({"Content-Type": "application/json"})
        assert (refused.status_code, refused.body) == (401, "'Authorization: Bearer <FUNCTION_TOKEN>' is required")
        assert refused.headers == {"WWW-Authenticate": "Bearer"}
        assert call({"Authorization": "Bearer wrong"}).status_code == 401
        accepted = call({"Authorization": f"Bearer {TOKEN}"})
        assert (accepted.status_code, accepted.body) == (200, '{"got": {"a": 1}}')
    finally:
        function_settings.current.cache_clear()
