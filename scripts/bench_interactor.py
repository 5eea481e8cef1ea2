"""Per-click latency of interactor functions, through the local runtime over HTTP.

    .venv/bin/python scripts/bench_interactor.py serverless/opencv/grabcut/nuclio
    .venv/bin/python scripts/bench_interactor.py <folder> [<folder> ...] --env HRNET_MODEL_PATH=/tmp/x --repeat 10

Each function is served on its own (``python -m serverless.runtime serve``, eval_coco's
serve-and-wait); a function that does not become ready (state error, e.g. its model files are
missing) gets a SKIP line with the runtime's reason and the next one runs. On two real photos
(astronaut.png 512x512, bus.jpg 810x1080) a short click session is replayed as CVAT sends it: one
positive click, then a negative one, then a second positive one, every call carrying all clicks so
far (plus the object's box when the function starts with one or ``--box`` is given; DEXTR-style
functions get four points on the box's sides first). Cold is the first call after the function
became ready; warm is every call after it, ``--repeat`` rounds. Replies are CVAT's full H x W mask.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import runpy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

_eval_interactor = runpy.run_path(str(Path(__file__).with_name("eval_interactor.py")))
served, function_meta = _eval_interactor["served"], _eval_interactor["function_meta"]
TESTDATA = _eval_interactor["COCO_SUBSET"].parent


@dataclass(frozen=True)
class Scene:
    path: Path
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 around the object clicked on
    positive: tuple[tuple[int, int], ...]  # the object
    negative: tuple[tuple[int, int], ...]  # next to it


SCENES = (
    Scene(TESTDATA / "skimage/astronaut.png", (0, 0, 380, 512), ((120, 380), (230, 160)), ((430, 450),)),
    Scene(TESTDATA / "ultralytics/bus.jpg", (0, 230, 810, 740), ((600, 470), (300, 330)), ((130, 600),)),
)


def click_bodies(scene: Scene, meta, use_box: bool) -> list[dict]:
    """The session's calls: [p1], [p1 | n1], [p1 p2 | n1]."""
    image = base64.b64encode(scene.path.read_bytes()).decode()
    x1, y1, x2, y2 = scene.box
    box = [[x1, y1], [x2, y2]] if use_box or meta.startswith_box else []
    first = [[x1, (y1 + y2) // 2], [x2 - 1, (y1 + y2) // 2], [(x1 + x2) // 2, y1], [(x1 + x2) // 2, y2 - 1]] \
        if meta.min_pos_points > 1 else [list(scene.positive[0])]
    negative = [list(scene.negative[0])] if meta.min_neg_points >= 0 else []
    steps = [(first, []), (first, negative), (first + [list(scene.positive[1])], negative)]
    return [{"image": image, "pos_points": pos, "neg_points": neg, "obj_bbox": box} for pos, neg in steps]


def timed_call(http: httpx.Client, body: dict) -> float:
    started = time.perf_counter()
    reply = http.post("/", json=body)
    if reply.status_code != 200:
        raise RuntimeError(f"the function answered {reply.status_code}: {reply.text[:300]}")
    reply.json()
    return 1000 * (time.perf_counter() - started)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   ({len(ordered)} calls)"


def bench(function_dir: Path, env: dict[str, str], repeat: int, use_box: bool) -> None:
    meta = function_meta(function_dir)
    sessions = [(scene, click_bodies(scene, meta, use_box)) for scene in SCENES]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(served(function_dir, env))
        except RuntimeError as error:  # not ready: state error (e.g. missing model files), exit or timeout
            print(f"SKIP {function_dir} ({meta.id}): {error}")
            return
        ready = time.perf_counter() - started
        http = stack.enter_context(httpx.Client(base_url=url, timeout=300))
        cold = timed_call(http, sessions[0][1][0])
        print(f"{function_dir} ({meta.id}): ready after {ready:.1f} s")
        print(f"  cold  first call after start, {sessions[0][0].path.name}, 1 click: {cold:7.1f} ms")
        warm_all = []
        for scene, bodies in sessions:
            with Image.open(scene.path) as image:
                size = f"{image.width}x{image.height}"
            warm = [timed_call(http, body) for _ in range(repeat) for body in bodies]
            warm_all += warm
            print(f"  warm  {scene.path.name:<14} {size:>9}, 1-3 clicks{' + box' if bodies[0]['obj_bbox'] else ''}: "
                  f"{percentiles(warm)}")
        print(f"  warm  all: {percentiles(warm_all)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("functions", type=Path, nargs="+", help="interactor function folders")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the functions (e.g. a model path override)")
    parser.add_argument("--repeat", type=int, default=5, help="warm rounds of each click session")
    parser.add_argument("--box", action="store_true", help="send the object's box with every call")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    for function_dir in args.functions:
        bench(function_dir, env, args.repeat, args.box)


if __name__ == "__main__":
    main()
