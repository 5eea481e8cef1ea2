"""What every ReID function shares: reading CVAT's request, matching boxes by embedding, the reply.

CVAT's ReID request (docs/wire-format.md §1.9) is ``{"image0", "image1", "boxes0", "boxes1",
"threshold"?: 0.5, "max_distance"?: 50}``: two frames (base64 of their files) and the boxes on each,
as CVAT shape objects of which only ``points`` ``[x1, y1, x2, y2]`` and ``label_id`` are read. The
reply is a list with one int per box of ``boxes0``: the index in ``boxes1`` of the same object, or -1.

The matching is CVAT's: a pair of boxes is a candidate when both have the same ``label_id`` and
their centres are at most ``max_distance`` px apart; its cost is the cosine distance between the
embeddings of the two crops (coordinates clipped to the image, then floored); every other pair costs
``NO_MATCH``. A minimum-cost assignment (Hungarian) links each box to at most one other, and a link
counts when its cost is at most ``threshold``, a cosine distance (0..2, smaller is stricter).

Unlike CVAT: 0 is a real ``threshold`` and ``max_distance`` (§D1); every input mistake is a
400 naming the field (§D21); a box whose crop has no pixels never matches (CVAT passes the
empty crop to the model); each crop is embedded once and only when it is part of a candidate pair
(CVAT embeds both crops again for every pair), all of a call's crops in one go, so a model can run
them side by side.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from serverless.common.handler import BadRequest, json_handler
from serverless.common.images import decode_image

NO_MATCH = 1000.0  # CVAT's cost of a pair that may not match: above any cosine distance and threshold
DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_DISTANCE = 50.0
MAX_COSINE_DISTANCE = 2.0

Embed = Callable[[list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Boxes:
    points: np.ndarray  # N x 4 float64: x1, y1, x2, y2 with x1 <= x2, y1 <= y2
    labels: np.ndarray  # N label ids as Python ints (object array: JSON integers have no size limit)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def centres(self) -> np.ndarray:
        return (self.points[:, :2] + self.points[:, 2:]) / 2


@dataclass(frozen=True)
class ReidRequest:
    image0: np.ndarray  # H x W x 3 uint8, RGB
    image1: np.ndarray
    boxes0: Boxes
    boxes1: Boxes
    threshold: float
    max_distance: float


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_number(body: dict, key: str, default: float, low: float, high: float, meaning: str) -> float:
    """An optional finite number in [low, high]; absent or null: ``default``; 0 is a real value."""
    value = body.get(key)
    if value is None:
        return default
    if not _is_number(value):
        raise BadRequest(f"'{key}' must be a number ({meaning}), got {value!r}")
    if not low <= value <= high:
        bounds = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise BadRequest(f"'{key}' must be {bounds} ({meaning}), got {value}")
    return float(value)


def read_boxes(body: dict, key: str) -> Boxes:
    """A list of CVAT shapes, each with ``points`` ``[x1, y1, x2, y2]`` and an integer ``label_id``."""
    shapes = body.get(key)
    if not isinstance(shapes, list):
        raise BadRequest(f"'{key}' must be a list of shapes with 'points' and 'label_id', got {type(shapes).__name__}")
    points, labels = [], []
    for index, shape in enumerate(shapes):
        where = f"{key}[{index}]"
        if not isinstance(shape, dict):
            raise BadRequest(f"'{where}' must be a shape object with 'points' and 'label_id', got {shape!r}")
        box = shape.get("points")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(c) for c in box)):
            raise BadRequest(f"'{where}.points' must be [x1, y1, x2, y2], 4 finite numbers, got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise BadRequest(f"'{where}.points' {box!r} has x2 < x1 or y2 < y1")
        label = shape.get("label_id")
        if not isinstance(label, int) or isinstance(label, bool):
            raise BadRequest(f"'{where}.label_id' must be an integer, got {label!r}")
        points.append(box)
        labels.append(label)
    label_array = np.empty(len(labels), dtype=object)
    label_array[:] = labels
    return Boxes(np.asarray(points, dtype=np.float64).reshape(-1, 4), label_array)


def read_request(body: dict) -> ReidRequest:
    # The cheap fields first: a mistake in them is reported without decoding two frames.
    threshold = read_number(body, "threshold", DEFAULT_THRESHOLD, 0.0, MAX_COSINE_DISTANCE, "a cosine distance")
    max_distance = read_number(body, "max_distance", DEFAULT_MAX_DISTANCE, 0.0, math.inf, "pixels between box centres")
    boxes0, boxes1 = read_boxes(body, "boxes0"), read_boxes(body, "boxes1")
    image0 = np.asarray(decode_image(body.get("image0"), field="image0"))
    image1 = np.asarray(decode_image(body.get("image1"), field="image1"))
    return ReidRequest(image0, image1, boxes0, boxes1, threshold, max_distance)


def crop_bounds(points: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Integer ``x1, y1, x2, y2`` per box (x2, y2 exclusive): clipped to the image, then floored."""
    height, width = image.shape[:2]
    return np.floor(np.clip(points, 0, [width, height, width, height])).astype(np.int64)


def has_pixels(bounds: np.ndarray) -> np.ndarray:
    return (bounds[:, 2] > bounds[:, 0]) & (bounds[:, 3] > bounds[:, 1])


def cosine_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """1 - cos between corresponding rows of two P x D arrays, in 0..2; a zero vector has no
    direction and is at distance 1 from everything. Computed as half the squared distance between
    the unit vectors, so identical embeddings are exactly 0 apart (1 - dot may give 1e-16)."""
    first_norm = np.linalg.norm(first, axis=1, keepdims=True)
    second_norm = np.linalg.norm(second, axis=1, keepdims=True)
    first_unit = np.divide(first, first_norm, out=np.zeros_like(first), where=first_norm > 0)
    second_unit = np.divide(second, second_norm, out=np.zeros_like(second), where=second_norm > 0)
    distances = 0.5 * np.sum((first_unit - second_unit) ** 2, axis=1)
    distances[(first_norm[:, 0] == 0) | (second_norm[:, 0] == 0)] = 1.0
    return np.clip(distances, 0.0, MAX_COSINE_DISTANCE)


def match(request: ReidRequest, embed: Embed) -> list[int]:
    """For each box of ``boxes0``, the index of its match in ``boxes1`` or -1; ``embed(crops)``
    returns one embedding row per RGB crop."""
    boxes0, boxes1 = request.boxes0, request.boxes1
    bounds0, bounds1 = crop_bounds(boxes0.points, request.image0), crop_bounds(boxes1.points, request.image1)
    centre_distances = np.linalg.norm(boxes0.centres[:, None] - boxes1.centres[None, :], axis=2)
    candidates = ((boxes0.labels[:, None] == boxes1.labels[None, :]) & (centre_distances <= request.max_distance)
                  & has_pixels(bounds0)[:, None] & has_pixels(bounds1)[None, :])
    costs = np.full(candidates.shape, NO_MATCH)
    rows, columns = np.nonzero(candidates)
    if len(rows):
        used0, row_crops = np.unique(rows, return_inverse=True)
        used1, column_crops = np.unique(columns, return_inverse=True)
        crops = ([_crop(request.image0, bounds0[i]) for i in used0]
                 + [_crop(request.image1, bounds1[j]) for j in used1])
        embeddings = np.asarray(embed(crops), dtype=np.float64)
        if embeddings.ndim != 2 or len(embeddings) != len(crops):
            raise AssertionError(f"embed returned shape {embeddings.shape} for {len(crops)} crops")
        costs[rows, columns] = cosine_distances(embeddings[:len(used0)][row_crops],
                                                embeddings[len(used0):][column_crops])
    result = [-1] * len(boxes0)
    for row, column in zip(*linear_sum_assignment(costs)):
        if costs[row, column] <= request.threshold:
            result[row] = int(column)
    return result


def _crop(image: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = bounds
    return image[y1:y2, x1:x2]


def reid_handler(embed: Callable[[Any, list[np.ndarray]], np.ndarray]) -> Callable:
    """A nuclio handler for a ReID function: ``embed(context, crops) -> N x D`` embeds every crop of
    a call (H x W x 3 uint8 RGB arrays) at once."""

    @json_handler
    @functools.wraps(embed)
    def process(context, body):
        return match(read_request(body), lambda crops: embed(context, crops))

    return process
