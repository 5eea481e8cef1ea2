"""The dispatcher's gateway and function registry against a real local nuclio platform over HTTP."""

import dataclasses
import json

import pytest
import yaml

from dispatcher import settings as dispatcher_settings
from dispatcher.gateway import Gateway, GatewayError
from dispatcher.registry import InvalidFunction, LambdaFunction, Registry

from helpers import PROBE, copy_function, free_port, serve_platform

SKELETON_SPEC = json.dumps([{"id": 0, "name": "pose", "type": "skeleton", "svg": "<line x1=\"1\"/>",
                             "sublabels": [{"id": 1, "name": "nose", "type": "points"},
                                           {"id": 2, "name": "tail", "type": "points"}]}])


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    copy_function(PROBE, tree / "probe")
    copy_function(PROBE, tree / "broken", **{"metadata.name": "probe-init-fails",
                                             "spec.env": [{"name": "PROBE_INIT_FAIL", "value": "no weights"}]})
    copy_function(PROBE, tree / "invalid", **{"metadata.name": "probe-invalid",
                                              "metadata.annotations.type": "classifier"})
    copy_function(PROBE, tree / "interactor", **{
        "metadata.name": "probe-interactor", "metadata.annotations.type": "interactor",
        "metadata.annotations.spec": "", "metadata.annotations.version": 2,
        "metadata.annotations.min_pos_points": 4, "metadata.annotations.startswith_box": True,
        "metadata.annotations.help_message": "click the extreme points"})
    copy_function(PROBE, tree / "skeleton", **{"metadata.name": "probe-skeleton",
                                               "metadata.annotations.spec": SKELETON_SPEC})
    with serve_platform(tree) as running:
        yield running


def registry_for(platform, **environ) -> Registry:
    return Registry(Gateway(dispatcher_settings.load({"NUCLIO_URL": platform.url, **environ})))


@pytest.fixture(scope="module", params=["dashboard", "direct"])
def registry(platform, request):
    registry = registry_for(platform, NUCLIO_INVOKE_METHOD=request.param)
    yield registry
    registry.gateway.close()


def test_list_keeps_broken_functions_with_their_state_and_leaves_out_invalid_ones(registry):
    functions = {f.id: f for f in registry.functions()}
    assert set(functions) == {"runtime-probe", "probe-init-fails", "probe-interactor", "probe-skeleton"}
    assert functions["runtime-probe"].workers == 2  # the probe's maxWorkers
    assert functions["runtime-probe"].to_api()["state"] == "ready"
    broken = functions["probe-init-fails"].to_api()
    assert (broken["state"], broken["message"]) == ("error", "init_context failed: RuntimeError: no weights")


def test_function_objects_have_cvats_fields(registry):
    detector = registry.function("runtime-probe").to_api()
    assert detector == {"id": "runtime-probe", "kind": "detector", "name": "Runtime probe",
                        "description": "Reports what a handler sees", "version": 1,
                        "labels_v2": [{"name": "thing", "type": "rectangle", "attributes": []}],
                        "state": "ready", "message": ""}
    interactor = registry.function("probe-interactor").to_api()
    assert {k: interactor[k] for k in ("kind", "version", "labels_v2", "min_pos_points", "min_neg_points",
                                       "startswith_box", "startswith_box_optional", "help_message")} == {
        "kind": "interactor", "version": 2, "labels_v2": [], "min_pos_points": 4, "min_neg_points": -1,
        "startswith_box": True, "startswith_box_optional": False, "help_message": "click the extreme points"}
    (pose,) = registry.function("probe-skeleton").to_api()["labels_v2"]
    assert pose == {"name": "pose", "type": "skeleton", "attributes": [], "svg": "<line x1=\"1\"/>",
                    "sublabels": [{"name": "nose", "type": "points", "attributes": []},
                                  {"name": "tail", "type": "points", "attributes": []}]}


def test_unknown_and_invalid_functions(registry):
    with pytest.raises(GatewayError) as unknown:
        registry.function("nope")
    assert unknown.value.status == 404 and "nope not found" in unknown.value.message
    with pytest.raises(InvalidFunction) as invalid:
        registry.function("probe-invalid")
    assert invalid.value.status == 500 and "metadata.annotations.type" in invalid.value.message


def test_calls_reach_the_function_with_the_payload(registry):
    seen = registry.call(registry.function("runtime-probe"), {"image": "abc", "threshold": 0})
    assert seen["body"] == {"image": "abc", "threshold": 0}  # threshold 0 arrives (CVAT's defect, §D1)
    assert (seen["method"], seen["path"], seen["content_type"]) == ("POST", "/", "application/json")


def test_function_errors_keep_their_status_and_message(registry):
    probe = registry.function("runtime-probe")
    with pytest.raises(GatewayError) as bad_input:
        registry.call(probe, {"action": "status", "status": 400, "message": "'image' is not valid base64"})
    assert (bad_input.value.status, bad_input.value.message) == (400, "'image' is not valid base64")
    with pytest.raises(GatewayError) as crash:
        registry.call(probe, {"action": "raise", "message": "model exploded"})
    assert crash.value.status == 500 and '"model exploded"' in crash.value.message
    with pytest.raises(GatewayError) as not_json:
        registry.call(probe, {"action": "return", "form": "str"})
    assert not_json.value.status == 502 and "not JSON" in not_json.value.message


def test_a_function_that_is_not_ready_answers_503_with_the_reason(registry):
    with pytest.raises(GatewayError) as error:
        registry.call(registry.function("probe-init-fails"), {})
    assert error.value.status == 503
    assert error.value.message == ("function probe-init-fails is not ready (state error): "
                                   "init_context failed: RuntimeError: no weights")


@pytest.mark.parametrize("method", ["dashboard", "direct"])
def test_timeout_is_504(platform, method):
    registry = registry_for(platform, NUCLIO_INVOKE_METHOD=method, NUCLIO_TIMEOUT="0.5")
    with pytest.raises(GatewayError) as error:
        registry.call(registry.function("runtime-probe"), {"action": "sleep", "seconds": 1.5})
    assert error.value.status == 504


def test_direct_calls_go_to_the_address_the_platform_reports(platform):
    # NUCLIO_FUNCTION_HOST names no host that answers: the call reaches the function only through
    # the address in status.internalInvocationUrls.
    registry = registry_for(platform, NUCLIO_INVOKE_METHOD="direct", NUCLIO_FUNCTION_HOST="127.0.0.2")
    probe = registry.function("runtime-probe")
    (replica,) = probe.replicas
    assert replica.address == f"127.0.0.1:{replica.http_port}"
    assert registry.call(probe, {"k": 1})["body"] == {"k": 1}
    # A dashboard that reports no address (CVAT's nuclio, some versions): NUCLIO_FUNCTION_HOST, or
    # else the dashboard's host, and httpPort.
    unlisted = dataclasses.replace(probe, replicas=(dataclasses.replace(replica, address=""),))
    with pytest.raises(GatewayError) as error:
        registry.call(unlisted, {"k": 1})
    assert error.value.status == 503 and f"http://127.0.0.2:{replica.http_port}/" in error.value.message
    assert registry_for(platform, NUCLIO_INVOKE_METHOD="direct").call(unlisted, {"k": 2})["body"] == {"k": 2}


def test_nuclio_down_is_503():
    registry = Registry(Gateway(dispatcher_settings.load({"NUCLIO_URL": f"http://127.0.0.1:{free_port()}"})))
    with pytest.raises(GatewayError) as error:
        registry.functions()
    assert error.value.status == 503 and "cannot connect to nuclio" in error.value.message


@pytest.mark.parametrize("environ, message", [
    ({"NUCLIO_INVOKE_METHOD": "carrier-pigeon"}, "NUCLIO_INVOKE_METHOD"),
    ({"NUCLIO_TIMEOUT": "soon"}, "NUCLIO_TIMEOUT='soon' is not a number"),
    ({"NUCLIO_TIMEOUT": "0"}, "must be positive"),
    ({"FRAME_RETRIES": "-1"}, "FRAME_RETRIES='-1' must be zero or more"),
    ({"FRAME_RETRIES": "2.5"}, "FRAME_RETRIES='2.5' is not an integer"),
    ({"FAILED_REQUEST_TTL": "0"}, "FAILED_REQUEST_TTL='0' must be positive"),
])
def test_bad_settings_are_refused_by_name(environ, message):
    with pytest.raises(ValueError, match=message):
        dispatcher_settings.load(environ)


def test_settings_defaults():
    settings = dispatcher_settings.load({})
    # Without TRACKER_STATE_KEY each process signs tracker states with a random key of its own.
    assert (len(settings.tracker_state_key) == 32
            and dispatcher_settings.load({}).tracker_state_key != settings.tracker_state_key)
    # The namespace's default is a hash of the store's identity (tests/test_dispatcher_resilience.py).
    assert len(settings.deployment_namespace) == 10
    # Every field by name: a new setting fails here until its default is written down.
    assert dataclasses.asdict(settings) == {
        "nuclio_urls": ("http://127.0.0.1:8070",), "nuclio_configured": False, "nuclio_invoke_method": "dashboard",
        "nuclio_function_host": None, "nuclio_timeout": 120.0, "function_token": None, "database_url": None,
        "data_dir": dispatcher_settings.REPOSITORY / "data", "server_files_root": None,
        "max_image_pixels": 100_000_000, "max_body_bytes": 128 * 2**20, "redis_url": "redis://127.0.0.1:6379/0",
        "deployment_namespace": settings.deployment_namespace, "chunk_size": 64, "frame_retries": 2,
        "retry_backoff": 0.5, "circuit_breaker_failures": 5, "circuit_breaker_wait": 30.0,
        "finished_request_ttl": 1800, "failed_request_ttl": 10800, "recovery_interval": 10.0, "api_token": None,
        "tracker_state_key": settings.tracker_state_key, "cvat_url": None, "cvat_token": None, "cvat_username": None,
        "cvat_password": None, "cvat_timeout": 60.0, "auth_cache_seconds": 30.0}
    assert dispatcher_settings.load({"TRACKER_STATE_KEY": "shared"}).tracker_state_key == b"shared"
    # One dashboard per host whose functions are called; "direct" finds ports on each one's host.
    assert dispatcher_settings.load({"NUCLIO_URL": "http://a:8070/, http://b:8070"}).nuclio_urls == \
        ("http://a:8070", "http://b:8070")
    for environ, message in [({"NUCLIO_URL": "a:8070"}, "NUCLIO_URL: 'a:8070' is not an http"),
                             ({"NUCLIO_URL": "http://a:1,http://a:1/"}, "names a dashboard twice")]:
        with pytest.raises(ValueError, match=message):
            dispatcher_settings.load(environ)
    # Fronting CVAT: a service account, and no API_TOKEN (callers are CVAT's users).
    fronting = dispatcher_settings.load({"CVAT_URL": "http://cvat:8080/", "CVAT_TOKEN": "k", "CVAT_TIMEOUT": "5"})
    assert (fronting.cvat_url, fronting.cvat_token, fronting.cvat_timeout) == ("http://cvat:8080", "k", 5.0)
    for environ, message in [({"CVAT_URL": "http://cvat:8080"}, "CVAT_URL needs the service account's CVAT_TOKEN"),
                             ({"CVAT_URL": "http://cvat:8080", "CVAT_USERNAME": "bot"}, "CVAT_URL needs"),
                             ({"CVAT_URL": "http://cvat", "CVAT_TOKEN": "k", "API_TOKEN": "t"},
                              "API_TOKEN must not be set with CVAT_URL"),
                             ({"CVAT_URL": "cvat:8080", "CVAT_TOKEN": "k"}, "must start with http")]:
        with pytest.raises(ValueError, match=message):
            dispatcher_settings.load(environ)
    # Bare PostgreSQL URLs mean psycopg 3, the driver the project installs.
    assert dispatcher_settings.load({"DATABASE_URL": "postgresql://db/tasks"}).database_url == \
        "postgresql+psycopg://db/tasks"


def test_calls_in_flight_grow_with_the_replicas_nuclio_keeps():
    """On Kubernetes a function has numWorkers per replica; minReplicas (or fixed replicas) of them
    are always there, the autoscaler's extra ones may not be."""
    config = yaml.safe_load((PROBE / "function.yaml").read_text())
    config["spec"]["triggers"]["myHttpTrigger"]["numWorkers"] = 2
    assert LambdaFunction.from_config(config).workers == 2
    config["spec"].update(minReplicas=3, maxReplicas=8)
    assert LambdaFunction.from_config(config).workers == 6
    config["spec"].update(replicas=4, minReplicas=None)
    assert LambdaFunction.from_config(config).workers == 8


# Replicas: one function on several dashboards (docs/architecture.md §13)

@pytest.fixture(scope="module")
def second_platform(tmp_path_factory):
    """Another host's platform: the probe again (PROBE_ENV tells its replies apart), and a function only it has."""
    tree = tmp_path_factory.mktemp("tree-b")
    copy_function(PROBE, tree / "probe", **{"spec.env": [{"name": "PROBE_ENV", "value": "second"}]})
    copy_function(PROBE, tree / "only-here", **{"metadata.name": "probe-only-second",
                                                 "spec.env": [{"name": "PROBE_ENV", "value": "second"}]})
    with serve_platform(tree) as running:
        yield running


@pytest.mark.parametrize("method", ["dashboard", "direct"])
def test_a_function_several_dashboards_report_is_one_function_with_replicas(platform, second_platform, method):
    registry = registry_for(platform, NUCLIO_URL=f"{platform.url},{second_platform.url}", NUCLIO_INVOKE_METHOD=method)
    functions = {function.id: function for function in registry.functions()}
    assert set(functions) == {"runtime-probe", "probe-init-fails", "probe-interactor", "probe-skeleton",
                              "probe-only-second"}
    probe = registry.function("runtime-probe")
    assert [replica.dashboard for replica in probe.replicas] == [platform.url, second_platform.url]
    assert probe.workers == functions["runtime-probe"].workers == 4  # 2 workers on each
    # Online calls take the replicas in turn; a call to a given replica goes there.
    first = "from-function-yaml"
    assert sorted(registry.call(probe, {})["env"] for _ in range(4)) == [first] * 2 + ["second"] * 2
    assert {registry.call(probe, {}, probe.replicas[1])["env"] for _ in range(3)} == {"second"}
    assert registry.call(registry.function("probe-only-second"), {})["env"] == "second"
    registry.gateway.close()


def test_a_dashboard_that_cannot_be_reached_is_left_out_while_another_answers(platform):
    dead = f"http://127.0.0.1:{free_port()}"
    registry = registry_for(platform, NUCLIO_URL=f"{dead},{platform.url}")
    probe = registry.function("runtime-probe")
    assert [replica.dashboard for replica in probe.replicas] == [platform.url]
    assert "runtime-probe" in {function.id for function in registry.functions()}
    with pytest.raises(GatewayError) as missing:  # none has it: nuclio's 404, not the dead one's 503
        registry.function("no-such-function")
    assert missing.value.status == 404
    # A replica whose address answers nothing passes an online call on to the next.
    (replica,) = probe.replicas
    lost = dataclasses.replace(replica, dashboard=dead, address=f"127.0.0.1:{free_port()}")
    two = dataclasses.replace(probe, replicas=(lost, replica))
    direct = registry_for(platform, NUCLIO_URL=f"{dead},{platform.url}", NUCLIO_INVOKE_METHOD="direct")
    assert all(direct.call(two, {"k": n})["body"] == {"k": n} for n in range(4))
    with pytest.raises(GatewayError) as error:
        direct.call(two, {}, lost)
    assert error.value.status == 503 and "cannot connect" in error.value.message
    for each in (registry, direct):
        each.gateway.close()


def test_nothing_reachable_is_503():
    urls = f"http://127.0.0.1:{free_port()},http://127.0.0.1:{free_port()}"
    registry = Registry(Gateway(dispatcher_settings.load({"NUCLIO_URL": urls})))
    with pytest.raises(GatewayError) as error:
        registry.function("runtime-probe")
    assert error.value.status == 503 and "cannot connect to nuclio" in error.value.message
