"""Many hosts as Linux network namespaces (scripts/many_hosts.py): workers and function replicas on
hosts of their own, a worker host and a function host cut off mid-task, every frame written once."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the hosts, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "redis-server", "initdb", "postgres", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"mh-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


def test_many_hosts_scale_and_survive_a_lost_worker_host_and_a_lost_function_host(tmp_path):
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    outcome_path = tmp_path / "outcome.json"
    run = subprocess.run([sys.executable, "scripts/many_hosts.py", "--frames", "240", "--fault-frames", "900",
                          "--json", str(outcome_path)], cwd=REPO, timeout=900)
    assert run.returncode == 0, "scripts/many_hosts.py found frames lost or written twice (its output says which)"
    outcome = json.loads(outcome_path.read_text())
    assert [(row["hosts"], row["problems"]) for row in outcome["scaling"]] == [(1, []), (2, []), (3, [])]
    worker = outcome["worker_cut"]
    assert (worker["status"], worker["frames"], worker["problems"]) == (
        "finished", {"total": 900, "done": 900, "failed": 0}, [])
    assert worker["done_at_cut"] < 900  # cut mid-task
    # Back on the network, the cut-off worker's chunk was refused at its first write: the store is as it was.
    assert worker["fenced"] and worker["unchanged_after_restore"]
    function = outcome["function_cut"]
    assert (function["status"], function["frames"], function["problems"]) == (
        "finished", {"total": 900, "done": 900, "failed": 0}, [])
    assert function["done_at_cut"] < 900
