"""COCO accuracy of a detector function, run through the local runtime over HTTP.

    .venv/bin/python scripts/eval_coco.py serverless/openvino/omz/public/yolo-v3-tf/nuclio
    .venv/bin/python scripts/eval_coco.py serverless/onnx/WongKinYiu/yolov7/nuclio --env YOLOV7_MODEL_PATH=/tmp/x

Serves the function (``python -m serverless.runtime serve``), sends every image of the COCO-128
val2017 subset in ../shared/testdata with a low threshold, maps the function's label names to COCO
categories (CVAT's names: underscores, and VOC spellings such as "motorbike") and prints
mAP@[.5:.95] and AP50 from pycocotools' COCOeval.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dispatcher.store.coco_categories import coco_name
from serverless.common.metadata import FunctionMeta
from serverless.runtime.ports import free_port

REPO = Path(__file__).resolve().parents[1]
COCO_SUBSET = REPO.parent / "shared/testdata/coco128-val2017"


def coco_category_ids(function_yaml: Path, categories: list[dict]) -> dict[str, int]:
    """Function label name -> COCO category id; every label of the spec must find one."""
    by_name = {c["name"]: c["id"] for c in categories}
    labels = FunctionMeta.from_nuclio(yaml.safe_load(function_yaml.read_text())).labels
    mapping = {}
    for label in labels:
        name = coco_name(label.name)  # CVAT's YOLO labels use darknet's spellings, RetinaNet's underscores
        if name not in by_name:
            raise ValueError(f"label {label.name!r} of {function_yaml} has no COCO category")
        mapping[label.name] = by_name[name]
    return mapping


@contextlib.contextmanager
def served(function_dir: Path, env: dict[str, str]):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "serverless.runtime", "serve", str(function_dir),
                                "--port", str(port)],
                               cwd=REPO, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                status = httpx.get(f"{url}/__runtime/ready", timeout=5).json()
            except (httpx.TransportError, ValueError):
                status = {"state": "building"}
            if status["state"] == "ready":
                break
            if status["state"] == "error" or process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{function_dir} did not become ready: {status.get('message', status)}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(15)


def evaluate(function_dir: Path, env: dict[str, str] | None = None, threshold: float = 0.005,
             concurrency: int = 2, limit: int | None = None) -> dict:
    """Run the function over the COCO subset; returns mAP, AP50, image count and images/s."""
    function_dir = Path(function_dir)
    ground_truth_path = COCO_SUBSET / "instances_val2017_128.json"
    ground_truth = json.loads(ground_truth_path.read_text())
    images = ground_truth["images"][:limit]
    category_of = coco_category_ids(function_dir / "function.yaml", ground_truth["categories"])

    with served(function_dir, env or {}) as url, httpx.Client(base_url=url, timeout=120) as http:
        def detect(image: dict) -> list[dict]:
            data = base64.b64encode((COCO_SUBSET / "images" / image["file_name"]).read_bytes()).decode()
            reply = http.post("/", json={"image": data, "threshold": threshold})
            reply.raise_for_status()
            return [{"image_id": image["id"], "category_id": category_of[item["label"]],
                     "bbox": [item["points"][0], item["points"][1], item["points"][2] - item["points"][0],
                              item["points"][3] - item["points"][1]],
                     "score": float(item["confidence"])} for item in reply.json()]

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = [r for per_image in pool.map(detect, images) for r in per_image]
        elapsed = time.perf_counter() - started

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO(str(ground_truth_path))
        evaluation = COCOeval(coco, coco.loadRes(results) if results else COCO(), "bbox")
        evaluation.params.imgIds = [image["id"] for image in images]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"mAP": float(evaluation.stats[0]), "AP50": float(evaluation.stats[1]), "images": len(images),
            "detections": len(results), "images_per_s": len(images) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("function", type=Path, help="a detector function folder")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the function (e.g. a model path override)")
    parser.add_argument("--threshold", type=float, default=0.005)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N images")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    stats = evaluate(args.function, env, args.threshold, args.concurrency, args.limit)
    print(f"{args.function}: mAP@[.5:.95] {stats['mAP']:.3f}  AP50 {stats['AP50']:.3f}  "
          f"({stats['images']} images, {stats['detections']} detections at threshold {args.threshold}, "
          f"{stats['images_per_s']:.1f} images/s)")


if __name__ == "__main__":
    main()
