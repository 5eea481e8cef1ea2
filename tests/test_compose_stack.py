"""The compose stack, built and run for real when a Docker engine answers: scripts/compose_smoke.py
builds the images (weights from ./models, MODEL_FILES=local), brings the stack up, runs the main
job through the API for the face detector, YOLO v3 and PP-OCRv4 and compares every shape count
with the local runtime's, calls GrabCut, stops each container with SIGTERM and tears it all down.
Skipped, saying why, where no Docker engine answers (../shared/tools/docker-local/setup.sh starts
one)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import REPO


def docker_answers() -> str | None:
    """None when a Docker engine with Compose v2 answers, else why not."""
    if not shutil.which("docker"):
        return "no docker CLI on PATH"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[:200]}"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "Docker Compose v2 (docker compose) is not installed"
    return None


def test_the_compose_stack_builds_serves_the_main_job_and_leaves_nothing_behind():
    reason = docker_answers()
    if reason:
        pytest.skip(f"{reason} (../shared/tools/docker-local/setup.sh installs and starts one)")
    result = subprocess.run([sys.executable, "scripts/compose_smoke.py"], cwd=REPO, capture_output=True,
                            text=True, timeout=1500)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    for function_id in ("openvino-omz-intel-face-detection-0205", "openvino-omz-public-yolo-v3-tf",
                        "onnx-paddlepaddle-ppocrv4-det"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(f"shapes {function_id}"))
        through_compose, local = line.split()[2], line.split()[5]
        assert through_compose == local and int(local) > 0, line
    assert "nothing left after down: yes" in result.stdout
