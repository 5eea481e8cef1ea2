"""Secure by default: the API never serves the network without credentials unless told to, and
compose gives every secret a value of the operator's own."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest
from test_deploy import SERVICES, compose_file

from helpers import REPO, free_port, wait_until


def serve(host: str, *flags: str, **env: str) -> subprocess.Popen:
    environ = {key: value for key, value in os.environ.items() if key not in ("API_TOKEN", "CVAT_URL")}
    environ.update(env, REDIS_URL="redis://127.0.0.1:6379/1")  # never touched: the API refuses or serves /health
    port = free_port()
    return subprocess.Popen([sys.executable, "-m", "dispatcher", "serve", "--host", host, "--port", str(port), *flags],
                            cwd=REPO, env=environ, stderr=subprocess.PIPE, text=True), port


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_the_api_refuses_a_network_address_without_a_token_and_names_the_risk(host):
    process, _ = serve(host)
    try:
        assert process.wait(30) == 2
    finally:
        if process.poll() is None:
            process.kill()
    error = process.stderr.read()
    assert f"refusing to serve {host} without API_TOKEN" in error
    assert "--no-auth-on-network" in error and "delete every task" in error


@pytest.mark.parametrize("flags, env", [((), {"API_TOKEN": "s3cret"}), (("--no-auth-on-network",), {}),
                                        ((), {})], ids=["token", "explicit flag", "loopback"])
def test_the_api_serves_with_a_token_an_explicit_flag_or_on_loopback(flags, env):
    process, port = serve("127.0.0.1" if not flags and not env else "0.0.0.0", *flags, **env)
    try:
        wait_until(lambda: _healthy(port), 30, "the API to answer /health")
    finally:
        process.terminate()
        process.wait(15)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_compose_demands_a_token_and_a_redis_password_and_redis_requires_it():
    environment = SERVICES["api"]["environment"]
    assert environment["API_TOKEN"].startswith("${API_TOKEN:?")
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/0", environment["REDIS_URL"])
    redis_service = SERVICES["redis"]
    assert "--requirepass \"$$REDIS_PASSWORD\"" in redis_service["command"][-1]
    assert redis_service["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert redis_service["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")  # its health check


def test_the_cvat_override_gives_its_redis_a_password():
    services = compose_file(REPO / "deploy/cvat/docker-compose.autoannotate.yml")["services"]
    assert "--requirepass" in services["autoannotate_redis"]["command"][-1]
    assert services["autoannotate_api"]["environment"]["REDIS_URL"].startswith(
        "redis://:${AUTOANNOTATE_REDIS_PASSWORD:?")
