"""``python -m dispatcher annotate-folder``: a folder of images in, a COCO or CVAT XML file out,
through the product's real path: a task in the task store, a request split into RQ chunks, the
function called by workers, the export read back from the API.

Unless ``--api`` names a running dispatcher, it starts its own API and worker processes; unless
NUCLIO_URL is set, also the local platform serving just the chosen function. Their logs go to
``<DATA_DIR>/logs``. Ctrl-C or SIGTERM cancels the request and stops what it started; what was
annotated stays in the task, and ``python -m dispatcher export`` writes it without a server. The
summary goes to stdout, progress and diagnostics to stderr.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import redis
from tqdm import tqdm

from dispatcher.request_book import FINAL_STATES
from dispatcher.settings import REPOSITORY, Settings
from serverless.runtime.ports import free_port

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UPLOAD_BATCH = 64  # frames per upload request
POLL_SECONDS = 0.5
STARTUP_SECONDS = 300  # loading a model can take minutes on a cold machine


class FolderError(Exception):
    """A problem the user can fix; printed without a traceback."""


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a directory")
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FolderError(f"{folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class LocalProcesses(contextlib.ExitStack):
    """The processes annotate-folder starts, stopped (with their process groups) on exit."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = log_dir

    def start(self, name: str, command: list[str], environment: dict[str, str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The log must stay open for the child's life, past this method: the stack closes it on exit,
        # after stopping the process (callbacks run last-registered first).
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 -- outlives start(), closed by the stack
        process = subprocess.Popen(command, env={**os.environ, **environment}, cwd=REPOSITORY, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.callback(log.close)
        self.callback(stop_process, process)

    def log_hint(self) -> str:
        return f"logs: {self.log_dir}"


def stop_process(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM to the process group of a process started with ``start_new_session``; after
    ``grace`` seconds SIGKILL to the group and to the process's children, which may have process
    groups of their own (an orphan would go on working)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        for pid in child_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def child_pids(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return []


def _wait(what: str, check, timeout: float, services: LocalProcesses):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise FolderError(f"{what} did not happen within {timeout:.0f} s; {services.log_hint()}")
        time.sleep(0.2)


def _get(client: httpx.Client, path: str, **kwargs):
    with contextlib.suppress(httpx.TransportError):
        response = client.get(path, **kwargs)
        if response.status_code == 200:
            return response.json()
    return None


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = response.text
        raise FolderError(f"{response.request.method} {response.request.url.path} answered "
                          f"{response.status_code}: {detail}")
    return response


def annotate_folder(settings: Settings, folder: Path, function_id: str, output: Path, threshold: float | None,
                    output_format: str, api_url: str | None) -> int:
    # SIGTERM (`timeout`, a supervisor) takes Ctrl-C's path: the request canceled, our processes stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    files = image_files(folder)
    if output.parent and not output.parent.is_dir():
        raise FolderError(f"the output's folder {output.parent} does not exist")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    remote = api_url is not None
    with LocalProcesses(settings.data_dir / "logs" / f"annotate-folder-{stamp}") as services:
        if api_url is None:
            api_url = _start_local(settings, function_id, services)
        headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
        with httpx.Client(base_url=api_url, headers=headers, timeout=settings.nuclio_timeout + 30) as client:
            _wait(f"the dispatcher API at {api_url} to answer", lambda: _get(client, "/health"), 60, services)
            function = _wait_ready(client, function_id, services)
            return _run(client, function, files, threshold, output, output_format, folder.name, remote)


def _start_local(settings: Settings, function_id: str, services: LocalProcesses) -> str:
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        raise FolderError(f"Redis is not reachable at {settings.redis_url} ({error}). Start it with "
                          f"`redis-server --daemonize yes` (or `docker run -d -p 6379:6379 redis:7`), "
                          f"or point REDIS_URL at one.") from None
    environment = {}
    if not settings.nuclio_configured:
        from serverless.runtime.platform import function_names  # the local platform's; not needed otherwise

        known = function_names(REPOSITORY / "serverless")
        if function_id not in known:
            raise FolderError(f"there is no function {function_id!r} under {REPOSITORY / 'serverless'}; "
                              f"--function takes one of: {', '.join(known)}")
        nuclio_port = free_port()
        services.start("platform", [sys.executable, "-m", "serverless.runtime", "platform",
                                    str(REPOSITORY / "serverless"), "--port", str(nuclio_port),
                                    "--function", function_id], {})
        # Calls go straight to the function's port (the platform reports it), not through its proxy.
        environment.update(NUCLIO_URL=f"http://127.0.0.1:{nuclio_port}", NUCLIO_INVOKE_METHOD="direct")
    api_port = free_port()
    services.start("api", [sys.executable, "-m", "dispatcher", "serve", "--port", str(api_port)], environment)
    services.start("worker", [sys.executable, "-m", "dispatcher", "worker"], environment)
    return f"http://127.0.0.1:{api_port}"


def _wait_ready(client: httpx.Client, function_id: str, services: LocalProcesses) -> dict:
    def settled():
        response = client.get(f"/api/lambda/functions/{function_id}")
        if response.status_code == 404:
            raise FolderError(f"there is no function {function_id!r}; "
                              f"`GET {client.base_url}/api/lambda/functions` lists them")
        if response.status_code != 200:
            return None  # the platform is still starting
        function = response.json()
        return function if function["state"] != "building" else None

    function = _wait(f"function {function_id} to load", settled, STARTUP_SECONDS, services)
    if function["state"] != "ready":
        raise FolderError(f"function {function_id} is in state {function['state']}: {function['message']}")
    if function["kind"] != "detector":
        raise FolderError(f"function {function_id} is a{'n' if function['kind'][0] in 'aeiou' else ''} "
                          f"{function['kind']}; annotate-folder runs detectors")
    return function


def _task_labels(function: dict) -> list[dict]:
    """The function's own labels, so that the default by-name mapping keeps every result."""
    def label(spec: dict) -> dict:
        entry = {"name": spec["name"], "type": spec["type"], "attributes": spec["attributes"]}
        if spec["type"] == "skeleton":
            entry.update(sublabels=[label(sublabel) for sublabel in spec["sublabels"]], svg=spec["svg"])
        return entry

    return [label(spec) for spec in function["labels_v2"]]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(client: httpx.Client, function: dict, files: list[Path], threshold: float | None, output: Path,
         output_format: str, name: str, remote: bool) -> int:
    task = _checked(client.post("/api/tasks", json={"name": name, "labels": _task_labels(function)})).json()
    for start in range(0, len(files), UPLOAD_BATCH):
        batch = files[start:start + UPLOAD_BATCH]
        _checked(client.post(f"/api/tasks/{task['id']}/data", files=[
            (f"client_files[{start + index}]", (path.name, path.read_bytes())) for index, path in enumerate(batch)]))
    body = {"task": task["id"]} if threshold is None else {"task": task["id"], "threshold": threshold}
    request = _checked(client.post(f"/detectors/{function['id']}/annotate", json=body)).json()
    print(f"task {task['id']}: {len(files)} frames, request {request['id']}", file=sys.stderr)

    try:
        request = _follow(client, request, len(files))
    except KeyboardInterrupt:
        print("\ncanceling...", file=sys.stderr)
        client.delete(f"/api/lambda/requests/{request['id']}")
        request = _follow(client, request, len(files), show=False)
        status = "canceled" if request["cancel_requested"] else request["status"]
        if remote:  # that API goes on serving
            how = f"GET {client.base_url}/api/tasks/{task['id']}/export?format={output_format}"
        else:  # ours stops with this command: the task store is read directly
            how = (f"python -m dispatcher export {task['id']} --format {output_format} -o {output} "
                   f"(with the same DATA_DIR and DATABASE_URL)")
        print(f"{status}: {request['exc_info']}. Task {task['id']} keeps them; to write them: {how}", file=sys.stderr)
        return 130

    for failure in request["failures"]:
        print(f"frame {failure['frame']} ({files[failure['frame']].name}) failed: {failure['reason']}",
              file=sys.stderr)
    if request["status"] != "finished":
        print(f"the request {request['status']}: {request['exc_info']}", file=sys.stderr)
        return 1
    export = _checked(client.get(f"/api/tasks/{task['id']}/export", params={"format": output_format}))
    output.write_bytes(export.content)
    frames = request["frames"]
    print(f"wrote {output}: {frames['done']} frames annotated, {frames['failed']} failed")
    return 0 if frames["failed"] == 0 else 1


def _follow(client: httpx.Client, request: dict, total: int, show: bool = True) -> dict:
    """Poll the request until it ends, with a progress bar (frames/s and ETA) on stderr."""
    with tqdm(total=total, unit="frame", disable=not show, dynamic_ncols=True) as bar:
        while True:
            request = _checked(client.get(f"/api/lambda/requests/{request['id']}")).json()
            frames = request["frames"]
            bar.update(frames["done"] + frames["failed"] - bar.n)
            if frames["failed"]:
                bar.set_postfix(failed=frames["failed"])
            if request["status"] in FINAL_STATES:
                return request
            time.sleep(POLL_SECONDS)
