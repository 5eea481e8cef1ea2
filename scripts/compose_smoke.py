"""Build the images, bring the compose stack up, run the main job against it, stop it, with timings.

    .venv/bin/python scripts/compose_smoke.py                 # MODEL_FILES=local: weights from ./models
    .venv/bin/python scripts/compose_smoke.py --model-files download --frames 32

Needs a Docker engine and Compose v2 (here: ../shared/tools/docker-local/setup.sh). Runs as its own
compose project (``cvat-autoannotate-smoke``, on a network of that name) with fresh secrets and
volumes, so a stack of the default project keeps running untouched. Steps, each timed:

1. build the OpenVINO framework base, the dispatcher image and the function images of the face
   detector, YOLO v3, PP-OCRv4 and GrabCut (with ``MODEL_FILES=local`` from ./models, checksums
   checked), and report each image's size;
2. ``up --wait``: Redis, PostgreSQL, the platform, the API, a worker and those four functions;
3. the main job through the API with ``annotate-folder --api`` (a task of COCO images, ``POST
   /detectors/<id>/annotate``, the COCO export), read back with pycocotools, for each detector;
   the shape counts must equal what the same function gives in the local runtime
   (``serverless.runtime serve`` on the same folder and weights, one call per image); one GrabCut
   call through ``/api/lambda/functions``;
4. ``docker stop`` of every container, each timed (SIGTERM must end it in well under 10 s);
5. ``down -v``, then nothing of the project may be left: containers, networks, volumes.

Exit status 0 when every check passed, 1 otherwise, 2 when Docker is not there.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dispatcher.folder import free_port, image_files, stop_process  # noqa: E402

PROJECT = "cvat-autoannotate-smoke"
IMAGES = REPO.parent / "shared" / "testdata" / "coco128-val2017" / "images"
DETECTORS = {  # compose service (= function id) -> its folder
    "openvino-omz-intel-face-detection-0205": "serverless/openvino/omz/intel/face-detection-0205/nuclio",
    "openvino-omz-public-yolo-v3-tf": "serverless/openvino/omz/public/yolo-v3-tf/nuclio",
    "onnx-paddlepaddle-ppocrv4-det": "serverless/onnx/PaddlePaddle/ppocrv4-det/nuclio",
}
INTERACTOR = "opencv-grabcut"
STACK = ["redis", "postgres", "platform", "api", "worker", *DETECTORS, INTERACTOR]
STOP_LIMIT = 5.0  # seconds; docker's own limit is 10 before it kills


class Failed(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-files", choices=["local", "download"], default="local",
                        help="where the function images take their weights (default: local, ./models)")
    parser.add_argument("--images", type=Path, default=IMAGES, help="a folder of images (default: COCO-128)")
    parser.add_argument("--frames", type=int, default=16, help="images per task (default: 16)")
    args = parser.parse_args()

    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        print("compose_smoke: no Docker engine answers (run ../shared/tools/docker-local/setup.sh)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="compose-smoke-") as scratch:
        smoke = Smoke(Path(scratch), args)
        try:
            smoke.run()
        except Failed as error:
            print(f"\nFAILED: {error}", file=sys.stderr)
            return 1
        finally:
            smoke.down()
            smoke.print_summary()
    return 0 if smoke.down_clean else 1


class Smoke:
    def __init__(self, scratch: Path, args: argparse.Namespace):
        self.scratch, self.args = scratch, args
        self.api_token = secrets.token_hex(16)
        self.api_port = free_port()
        # Its own network name: the compose file fixes "cvat-autoannotate" for nuclio's functions.
        override = scratch / "network.yml"
        override.write_text(json.dumps({"networks": {"default": {"name": PROJECT}}}))
        self.compose = ["docker", "compose", "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), "-f", str(override)]
        self.env = {**os.environ, "API_TOKEN": self.api_token, "REDIS_PASSWORD": secrets.token_hex(16),
                    "POSTGRES_PASSWORD": secrets.token_hex(16), "API_PORT": str(self.api_port),
                    "MODEL_FILES": args.model_files, "FUNCTION_TOKEN": secrets.token_hex(16)}
        self.timings: list[tuple[str, float, str]] = []
        self.down_clean = False
        self.started = False

    def step(self, what: str, command: list[str], note: str = "") -> str:
        print(f"+ {' '.join(command)}", file=sys.stderr)
        began = time.monotonic()
        result = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True)
        elapsed = time.monotonic() - began
        if result.returncode != 0:
            raise Failed(f"{what} failed ({' '.join(command)}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        self.timings.append((what, elapsed, note))
        return result.stdout

    def run(self) -> None:
        folder = self.scratch / "images"
        folder.mkdir()
        for path in image_files(self.args.images)[:self.args.frames]:
            shutil.copy(path, folder)

        # Bases first, as compose itself orders them; one build per image so that each is timed.
        for service in ["openvino-base", "api", *DETECTORS, INTERACTOR]:
            self.step(f"build {service}", [*self.compose, "build", service], self.image_of(service))
        self.started = True
        self.step("up --wait", [*self.compose, "up", "-d", "--wait", *STACK])

        listed = self.api().get("/api/lambda/functions").raise_for_status().json()
        states = {f["id"]: f.get("state") for f in listed}
        not_ready = [f for f in [*DETECTORS, INTERACTOR] if states.get(f) != "ready"]
        if not_ready:
            raise Failed(f"not ready through the dispatcher: {not_ready} (states: {states})")

        self.results = []
        for function_id, function_folder in DETECTORS.items():
            compose_counts = self.annotate_through_compose(function_id, folder)
            local_counts = local_runtime_counts(REPO / function_folder, folder)
            self.results.append((function_id, sum(compose_counts.values()), sum(local_counts.values())))
            if compose_counts != local_counts:
                raise Failed(f"{function_id}: shapes per image and label differ from the local runtime's:\n"
                             f"  compose {dict(compose_counts)}\n  local   {dict(local_counts)}")
        self.grabcut_call(folder)
        self.stop_each()

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=120,
                            headers={"Authorization": f"Bearer {self.api_token}"})

    def image_of(self, service: str) -> str:
        config = json.loads(subprocess.run([*self.compose, "config", "--format", "json"], cwd=REPO, env=self.env,
                                           capture_output=True, text=True, check=True).stdout)
        return config["services"][service].get("image") or f"{PROJECT}-{service}"

    def annotate_through_compose(self, function_id: str, folder: Path) -> collections.Counter:
        output = self.scratch / f"{function_id}.json"
        self.step(f"main job {function_id}", [
            sys.executable, "-m", "dispatcher", "annotate-folder", str(folder), "--function", function_id,
            "--api", f"http://127.0.0.1:{self.api_port}", "-o", str(output)])
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(output))
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        files = {i["id"]: i["file_name"] for i in coco.loadImgs(coco.getImgIds())}
        return collections.Counter((Path(files[a["image_id"]]).name, names[a["category_id"]])
                                   for a in coco.loadAnns(coco.getAnnIds()))

    def grabcut_call(self, folder: Path) -> None:
        with self.api() as api:
            tasks = api.get("/api/tasks").raise_for_status().json()
            task_id = tasks["results"][0]["id"]
            began = time.monotonic()
            reply = api.post(f"/api/lambda/functions/{INTERACTOR}", json={
                "task": task_id, "frame": 0, "pos_points": [[200, 200]], "neg_points": [],
                "obj_bbox": [[100, 100], [300, 300]]})
        if reply.status_code != 200:
            raise Failed(f"GrabCut through the dispatcher: {reply.status_code} {reply.text[:300]}")
        self.timings.append((f"{INTERACTOR} call", time.monotonic() - began, f"reply keys {sorted(reply.json())}"))

    def stop_each(self) -> None:
        containers = self.step("list containers", [*self.compose, "ps", "-q"]).split()
        slow = []
        for container in containers:
            name = subprocess.run(["docker", "inspect", "-f", "{{.Name}}", container], capture_output=True,
                                  text=True, check=True).stdout.strip().lstrip("/")
            began = time.monotonic()
            self.step(f"stop {name}", ["docker", "stop", "-t", "10", container])
            if time.monotonic() - began >= STOP_LIMIT:
                slow.append(name)
        if slow:
            raise Failed(f"SIGTERM took {STOP_LIMIT:.0f} s or more to stop: {slow}")

    def down(self) -> None:
        if not self.started:
            self.down_clean = True
            return
        with contextlib.suppress(Failed):
            self.step("down -v", [*self.compose, "down", "-v", "--remove-orphans"])
        label = f"label=com.docker.compose.project={PROJECT}"
        left = {kind: subprocess.run(["docker", kind, "ls", "-q", "--filter", label, *extra],
                                     capture_output=True, text=True).stdout.split()
                for kind, extra in (("container", ["-a"]), ("network", []), ("volume", []))}
        self.down_clean = not any(left.values())
        if not self.down_clean:
            print(f"FAILED: left after down: {left}", file=sys.stderr)

    def print_summary(self) -> None:
        print(f"\ncompose smoke test ({self.args.frames} frames, MODEL_FILES={self.args.model_files})")
        for what, seconds, note in self.timings:
            if what.startswith("build "):
                size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", note],
                                      capture_output=True, text=True).stdout.strip()
                note = f"{note}, {int(size) / 1e6:.0f} MB" if size.isdigit() else note
            print(f"  {what:<70} {seconds:7.1f} s  {note}")
        for function_id, through_compose, local in getattr(self, "results", []):
            print(f"  shapes {function_id:<63} {through_compose:>5} via compose, {local} in the local runtime")
        print(f"  nothing left after down: {'yes' if self.down_clean else 'NO'}")


def local_runtime_counts(function_folder: Path, images: Path) -> collections.Counter:
    """One call per image to the function served by the local runtime, as CVAT calls a function."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "serverless.runtime", "serve", str(function_folder),
                                "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(httpx.TransportError, ValueError):
                    if client.get("/__runtime/ready").json().get("state") == "ready":
                        break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise Failed(f"{function_folder} did not become ready in the local runtime")
                time.sleep(0.2)
            counts = collections.Counter()
            for path in image_files(images):
                reply = client.post("/", json={"image": base64.b64encode(path.read_bytes()).decode()})
                reply.raise_for_status()
                counts.update((path.name, shape["label"]) for shape in reply.json())
            return counts
    finally:
        stop_process(process)


if __name__ == "__main__":
    sys.exit(main())
