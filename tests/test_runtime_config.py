import subprocess
import sys

import pytest
import yaml

from serverless.runtime import config as function_config

from helpers import FACE_FUNCTION, PROBE, REPO, copy_function


def test_face_function_config():
    config = function_config.load(FACE_FUNCTION)
    assert config.name == "openvino-omz-intel-face-detection-0205"
    assert config.handler == "main:handler"
    assert config.event_timeout == 30
    trigger = config.trigger
    assert (trigger.name, trigger.num_workers, trigger.worker_availability_timeout,
            trigger.max_request_body_size) == ("myHttpTrigger", 2, 10.0, 33554432)


def test_legacy_max_workers_env_and_nuclio_defaults(tmp_path):
    probe = function_config.load(PROBE)
    assert probe.trigger.num_workers == 2  # from maxWorkers
    assert probe.env == {"PROBE_ENV": "from-function-yaml"}
    bare = function_config.load(copy_function(PROBE, tmp_path / "f", **{"spec.triggers": None,
                                                                          "spec.eventTimeout": None}))
    assert (bare.trigger.num_workers, bare.trigger.worker_availability_timeout,
            bare.trigger.max_request_body_size, bare.event_timeout) == (1, 10.0, 4 * 1024 * 1024, None)


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("30000s", 30000), ("500ms", 0.5), ("1m30s", 90),
                                           ("1.5h", 5400), ("250us", 0.00025)])
def test_go_durations(text, seconds):
    assert function_config.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "s", "30 s", "thirty seconds", ""])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        function_config.parse_duration(text)


@pytest.mark.parametrize("changes, field", [
    ({"metadata.name": None}, "metadata.name"),
    # CVAT's ids allow these; a name the dashboard API addresses is a DNS-1123 label.
    ({"metadata.name": "Runtime_Probe"}, "metadata.name: a function name must consist of lower case letters"),
    ({"metadata.name": "probe." + "p" * 60}, "metadata.name: a function name must be at most 63 characters"),
    ({"metadata.annotations.type": "classifier"}, "metadata.annotations.type"),
    ({"metadata.annotations.spec": '[{"name": "a"}, {"name": "a"}]'}, "metadata.annotations.spec"),
    ({"metadata.annotations.spec": '[{"name": "a", "type": "blob"}]'}, "metadata.annotations.spec"),
    ({"metadata.annotations.spec": "not json"}, "metadata.annotations.spec"),
    ({"spec.description": None}, "spec.description"),
    ({"spec.handler": "main"}, "spec.handler"),
    ({"spec.handler": "missing_module:handler"}, "spec.handler: module 'missing_module' not found"),
    ({"spec.runtime": "golang"}, "spec.runtime"),
    ({"spec.eventTimeout": "30"}, "spec.eventTimeout"),
    ({"spec.env": [{"name": "A", "valueFrom": {"secretKeyRef": {}}}]}, "spec.env[0]"),
    ({"spec.triggers.myHttpTrigger.maxWorkers": 0}, "spec.triggers.myHttpTrigger.maxWorkers"),
    ({"spec.triggers.myHttpTrigger.numWorkers": "2"}, "spec.triggers.myHttpTrigger.numWorkers"),
    ({"spec.triggers.myHttpTrigger.workerAvailabilityTimeoutMilliseconds": -1},
     "spec.triggers.myHttpTrigger.workerAvailabilityTimeoutMilliseconds"),
    ({"spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": "big"},
     "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize"),
    ({"spec.triggers.second": {"kind": "http"}}, "spec.triggers: one http trigger expected"),
])
def test_invalid_function_yaml_is_refused_naming_the_field(tmp_path, changes, field):
    folder = copy_function(PROBE, tmp_path / "f", **changes)
    with pytest.raises(function_config.ConfigError) as error:
        function_config.load(folder)
    assert str(error.value).startswith(f"{folder / 'function.yaml'}: {field}")


def test_not_yaml_or_missing_file(tmp_path):
    (tmp_path / "function.yaml").write_text("metadata: [unclosed")
    with pytest.raises(function_config.ConfigError, match="not valid YAML"):
        function_config.load(tmp_path)
    with pytest.raises(function_config.ConfigError, match="cannot read"):
        function_config.load(tmp_path / "nowhere")


def test_serve_refuses_a_bad_file_with_the_field_in_its_message(tmp_path):
    folder = copy_function(PROBE, tmp_path / "f", **{"metadata.annotations.type": "classifier"})
    result = subprocess.run([sys.executable, "-m", "serverless.runtime", "serve", str(folder)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "metadata.annotations.type: must be one of detector, interactor, reid, tracker" in result.stderr


def test_dashboard_entry_has_string_annotations_and_status():
    entry = function_config.dashboard_entry(function_config.load(FACE_FUNCTION).raw, "ready", 1234)
    assert entry["status"] == {"state": "ready", "httpPort": 1234, "message": ""}
    assert entry["metadata"]["labels"]["nuclio.io/project-name"] == "cvat"
    assert all(isinstance(v, str) for v in entry["metadata"]["annotations"].values())
    assert yaml.safe_load((FACE_FUNCTION / "function.yaml").read_text())["metadata"]["name"] == \
        entry["metadata"]["name"]
