"""Click-based accuracy of an interactor function, run through the local runtime over HTTP.

    .venv/bin/python scripts/eval_interactor.py serverless/opencv/grabcut/nuclio
    .venv/bin/python scripts/eval_interactor.py serverless/opencv/grabcut/nuclio --box
    .venv/bin/python scripts/eval_interactor.py <interactor folder> --env HRNET_MODEL_PATH=/tmp/x

Test images whose true mask is exact: a real COCO object (COCO-128 val2017 in ../shared/testdata,
not crowd, box 3-50% of its image, at most one per image, spread evenly over the candidates) is cut
out of its photo and pasted, at the same place, onto a different COCO photo resized to the same
size; the ground truth is exactly the pasted mask. The subset's JSON has boxes only (no
segmentations), so the cut-out's outline is a smooth irregular blob inscribed in the object's box
(seeded by the annotation id): real pixels inside, a synthetic outline. Images go as PNG.

Clicks follow the standard NoC protocol (RITM's ``get_next_click``): the first click is the object
pixel farthest from its boundary; each next click is the pixel farthest from the boundary of the
current errors (missed object or false positive, whichever lies deeper), positive on a missed
region, negative on a false positive. Every call carries all clicks so far, as CVAT sends them.

What the function's metadata asks for is honoured: ``startswith_box`` sends the object's tight box
with every call (``--box`` does so for any function); ``min_pos_points`` of 2-4 starts from the
object's extreme points (DEXTR's protocol); without negative points (``min_neg_points`` -1) only
missed regions are clicked. Prints the mean IoU after 1, 3 and 5 clicks and the time per click.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import runpy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml
from pycocotools.coco import COCO

from serverless.common.metadata import FunctionMeta

# Serve-and-wait and the data location are eval_coco's (scripts are run by path, not imported).
_eval_coco = runpy.run_path(str(Path(__file__).with_name("eval_coco.py")))
COCO_SUBSET, served = _eval_coco["COCO_SUBSET"], _eval_coco["served"]

REPORTED_CLICKS = (1, 3, 5)


@dataclass(frozen=True)
class Sample:
    name: str  # "<object's image>-<annotation id>-on-<background's image>"
    image_b64: str  # the composite, PNG, base64
    mask: np.ndarray  # H x W bool, exactly the pasted object

    @property
    def box(self) -> list[list[int]]:
        """The object's tight box in pixel edges, as CVAT's canvas sends it: [[x1, y1], [x2, y2]]."""
        rows, cols = np.nonzero(self.mask)
        return [[int(cols.min()), int(rows.min())], [int(cols.max()) + 1, int(rows.max()) + 1]]


def blob_mask(box: list[float], shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth irregular shape inscribed in ``box`` (x, y, w, h): an ellipse whose radius is bent
    by random low harmonics (2-5 lobes), so the outline has concavities, as objects do."""
    x, y, w, h = box
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    radius = np.ones_like(angles)
    for harmonic in range(2, 6):
        radius += rng.uniform(-0.12, 0.12) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radius /= radius.max()
    outline = np.stack([x + w / 2 * (1 + radius * np.cos(angles)), y + h / 2 * (1 + radius * np.sin(angles))], axis=1)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def composite_samples(count: int = 20, min_area: float = 0.03, max_area: float = 0.5) -> list[Sample]:
    """``count`` real COCO objects pasted onto other COCO photos, chosen deterministically."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO(str(COCO_SUBSET / "instances_val2017_128.json"))
    candidates = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        objects = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]
                   and min_area <= a["bbox"][2] * a["bbox"][3] / (info["width"] * info["height"]) <= max_area]
        if objects:
            candidates.append(min(objects, key=lambda a: a["id"]))
    if len(candidates) < count:
        raise ValueError(f"only {len(candidates)} COCO objects qualify, {count} asked for")
    chosen = [candidates[i * len(candidates) // count] for i in range(count)]

    def photo(image_id: int) -> np.ndarray:
        return cv2.imread(str(COCO_SUBSET / "images" / coco.imgs[image_id]["file_name"]), cv2.IMREAD_COLOR)

    samples = []
    for annotation in chosen:
        # Half the list away: always another image (at most one object per image).
        background_id = candidates[(candidates.index(annotation) + len(candidates) // 2) % len(candidates)]["image_id"]
        source = photo(annotation["image_id"])
        height, width = source.shape[:2]
        composite = cv2.resize(photo(background_id), (width, height), interpolation=cv2.INTER_AREA)
        mask = blob_mask(annotation["bbox"], (height, width), np.random.default_rng(annotation["id"]))
        composite[mask] = source[mask]
        encoded = cv2.imencode(".png", composite)[1].tobytes()
        samples.append(Sample(f"{annotation['image_id']}-{annotation['id']}-on-{background_id}",
                              base64.b64encode(encoded).decode(), mask))
    return samples


def farthest_from_boundary(region: np.ndarray) -> tuple[tuple[int, int], float]:
    """The pixel of ``region`` farthest from its boundary (the image border counts as boundary),
    as (x, y), and that distance; the first such pixel in row order, as RITM takes it."""
    padded = np.pad(region.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return (int(x), int(y)), float(distance[y, x])


def next_click(truth: np.ndarray, prediction: np.ndarray,
               negatives: bool = True) -> tuple[tuple[int, int], bool] | None:
    """The NoC protocol's next click, ``((x, y), positive)``; None when nothing is left to fix."""
    missed, missed_depth = farthest_from_boundary(truth & ~prediction)
    extra, extra_depth = farthest_from_boundary(~truth & prediction) if negatives else ((0, 0), 0.0)
    if max(missed_depth, extra_depth) == 0:
        return None
    return (missed, True) if missed_depth >= extra_depth else (extra, False)


def extreme_points(mask: np.ndarray) -> list[list[int]]:
    """Leftmost, rightmost, topmost and bottommost object pixels (the first of each in row order)."""
    rows, cols = np.nonzero(mask)
    return [[int(cols[i]), int(rows[i])] for i in (np.argmin(cols), np.argmax(cols), np.argmin(rows), np.argmax(rows))]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def function_meta(function_dir: Path) -> FunctionMeta:
    meta = FunctionMeta.from_nuclio(yaml.safe_load((Path(function_dir) / "function.yaml").read_text()))
    if meta.kind != "interactor":
        raise ValueError(f"{function_dir} is a {meta.kind}, not an interactor")
    if meta.min_pos_points > 4:
        raise ValueError(f"{function_dir} wants {meta.min_pos_points} first points; "
                         "only up to 4 (extreme points) is simulated")
    return meta


def first_points(meta: FunctionMeta, mask: np.ndarray) -> list[list[int]]:
    """What the first interaction places: one click, or the extreme points when more are needed."""
    if meta.min_pos_points > 1:
        return extreme_points(mask)
    (x, y), _ = farthest_from_boundary(mask)
    return [[x, y]]


def call(http: httpx.Client, sample: Sample, positive: list, negative: list,
         box: list | None) -> tuple[np.ndarray, float]:
    """One interaction over HTTP: the full-image mask it answers and the seconds it took."""
    started = time.perf_counter()
    reply = http.post("/", json={"image": sample.image_b64, "pos_points": positive, "neg_points": negative,
                                 "obj_bbox": box or []})
    if reply.status_code != 200:
        raise RuntimeError(f"{sample.name}: the function answered {reply.status_code}: {reply.text[:300]}")
    mask = np.asarray(reply.json()["mask"]) != 0
    elapsed = time.perf_counter() - started
    if mask.shape != sample.mask.shape:
        raise RuntimeError(f"{sample.name}: the mask is {mask.shape}, the image {sample.mask.shape}")
    return mask, elapsed


def click_session(http: httpx.Client, meta: FunctionMeta, sample: Sample, clicks: int,
                  use_box: bool) -> tuple[list[float], list[float]]:
    """IoU after each of ``clicks`` interactions (a perfect mask stays perfect), and each call's seconds."""
    box = sample.box if use_box else None
    positive, negative = first_points(meta, sample.mask), []
    prediction, seconds = call(http, sample, positive, negative, box)
    ious, times = [iou(prediction, sample.mask)], [seconds]
    while len(ious) < clicks:
        click = next_click(sample.mask, prediction, negatives=meta.min_neg_points >= 0)
        if click is None:
            ious.append(ious[-1])
            continue
        (x, y), is_positive = click
        (positive if is_positive else negative).append([x, y])
        prediction, seconds = call(http, sample, positive, negative, box)
        ious.append(iou(prediction, sample.mask))
        times.append(seconds)
    return ious, times


def evaluate(function_dir: Path, env: dict[str, str] | None = None, count: int = 20, use_box: bool = False,
             verbose: bool = False) -> dict:
    """Mean IoU after 1, 3 and 5 clicks over ``count`` composites, and milliseconds per call."""
    meta = function_meta(function_dir)
    use_box = use_box or meta.startswith_box
    samples = composite_samples(count)
    per_sample = []
    with served(Path(function_dir), env or {}) as url, httpx.Client(base_url=url, timeout=120) as http:
        call(http, samples[0], first_points(meta, samples[0].mask), [], samples[0].box if use_box else None)  # warm-up
        for sample in samples:
            ious, times = click_session(http, meta, sample, max(REPORTED_CLICKS), use_box)
            per_sample.append((ious, times))
            if verbose:
                print(f"  {sample.name:<28} IoU by click {' '.join(f'{v:.3f}' for v in ious)}")
    times = [t for _, sample_times in per_sample for t in sample_times]
    return {"objects": len(samples), "box": use_box,
            **{f"iou@{k}": statistics.fmean(ious[k - 1] for ious, _ in per_sample) for k in REPORTED_CLICKS},
            "ms_per_click": 1000 * statistics.fmean(times), "ms_p50": 1000 * statistics.median(times),
            "calls": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("function", type=Path, help="an interactor function folder")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the function (e.g. a model path override)")
    parser.add_argument("--objects", type=int, default=20, help="how many composite objects")
    parser.add_argument("--box", action="store_true", help="send the object's box with every call")
    parser.add_argument("--verbose", action="store_true", help="print each object's IoU by click")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    stats = evaluate(args.function, env, args.objects, args.box, args.verbose)
    print(f"{args.function}: mean IoU  1 click {stats['iou@1']:.3f}  3 clicks {stats['iou@3']:.3f}  "
          f"5 clicks {stats['iou@5']:.3f}  ({stats['objects']} composite COCO objects, "
          f"{'with' if stats['box'] else 'no'} box; {stats['ms_per_click']:.0f} ms per click mean, "
          f"{stats['ms_p50']:.0f} p50, over HTTP, {stats['calls']} calls)")
    if args.json:
        print(json.dumps(stats))


if __name__ == "__main__":
    main()
