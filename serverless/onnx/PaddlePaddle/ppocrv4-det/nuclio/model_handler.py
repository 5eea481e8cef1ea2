"""PP-OCRv4 text detection (DBNet) on OpenVINO: one mask item per text region.

The model (``ch_PP-OCRv4_det_infer.onnx``, as RapidOCR ships it) takes ``x`` f32 ``[N, 3, H, W]``,
BGR scaled to [-1, 1], H and W multiples of 32, and returns ``sigmoid_0.tmp_0`` ``[N, 1, H, W]``:
per pixel, the probability of lying in a text region *shrunk* the way DB trains it. Pre- and
post-processing follow RapidOCR's detector settings (limit_side_len 736 "min", thresh 0.3,
box_thresh, unclip_ratio 1.6, use_dilation):

- scale the short side up to 736, round H and W to multiples of 32;
- binarise at 0.3, dilate 2x2, take the 8-connected components;
- score = mean probability over the component, kept when ``>=`` the request's threshold;
- grow each kept component back to the whole text ("unclip") by d = area * 1.6 / perimeter of its
  minimum-area rectangle: every pixel within d of the component (a distance transform, i.e. the
  component dilated by a disk of radius d). That is the polygon offset with round joins DB does
  with pyclipper, so pyclipper is not needed;
- the box is the minimum-area rectangle of the grown region (DB's output); the mask is the grown
  region less the pixels nearer another kept component, so instances never share pixels.

The input is dynamic, so each frame goes in at its own size: OpenVINO's CPU plugin compiled the
model once with dynamic H and W and handles every new shape itself (no reshape, no recompiling);
ONNX Runtime (ONNX_BACKEND=onnxruntime) does the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from serverless.common import detections, metadata, model_files, onnx_model
from serverless.common.handler import Detector

LABEL = metadata.label_names(Path(__file__).with_name("function.yaml"))[0]
OUTPUT = "sigmoid_0.tmp_0"
SHORT_SIDE = 736
# RapidOCR has no upper bound in its detector; this one keeps huge or very elongated frames from
# making inputs of many megapixels (which would blow the 30 s event timeout on a small CPU).
LONG_SIDE_LIMIT = 2000
STRIDE = 32
BITMAP_THRESHOLD = 0.3
UNCLIP_RATIO = 1.6
MIN_BOX_SIDE = 3  # input pixels, before unclipping (DB's min_size)
MIN_IMAGE_SIDE = 3  # image pixels: thinner boxes are dropped, as RapidOCR's filter_tag_det_res does
MAX_CANDIDATES = 1000


@dataclass(frozen=True)
class TextRegion:
    crop: np.ndarray  # bool: the grown region less the pixels nearer another region, on a crop of the image
    origin: tuple[int, int]  # (x, y) of the crop in the image
    corners: np.ndarray  # [4, 2]: the grown region's minimum-area rectangle, TL, TR, BR, BL, in image pixels
    score: float  # mean text probability over the component


def input_size(height: int, width: int) -> tuple[int, int]:
    """The network input (height, width) for a frame."""
    ratio = min(max(1.0, SHORT_SIDE / min(height, width)), LONG_SIDE_LIMIT / max(height, width))
    return tuple(max(STRIDE, round(int(side * ratio) / STRIDE) * STRIDE) for side in (height, width))


def preprocess(rgb: np.ndarray) -> np.ndarray:
    height, width = input_size(*rgb.shape[:2])
    resized = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (width, height), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[np.newaxis]  # (x/255 - 0.5) / 0.5


def _outline_points(mask: np.ndarray) -> list[np.ndarray]:
    """The outer contours of a uint8 mask's pieces, as ``[N, 2]`` point arrays."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [contour.reshape(-1, 2) for contour in contours]


@dataclass(frozen=True)
class _GrownComponent:
    """A kept component grown by its unclip distance, on a crop of the map whose corner is ``origin``."""
    score: float
    origin: tuple[int, int]  # (x, y) on the map; negative when the growth passes the map's edge
    distances: np.ndarray  # each crop pixel's distance to the component
    reach: float  # the unclip distance
    rect: tuple  # cv2 rotated rectangle of the grown region, image pixels

    def window(self, pad: int) -> tuple[slice, slice]:
        """The crop's place on a copy of the map padded by ``pad`` on every side."""
        (x, y), (height, width) = self.origin, self.distances.shape
        return slice(y + pad, y + pad + height), slice(x + pad, x + pad + width)


def text_regions(probability: np.ndarray, image_size: tuple[int, int], box_threshold: float) -> list[TextRegion]:
    """Text regions from one frame's probability map ``[H', W']``; ``image_size`` is (width, height)."""
    width, height = image_size
    scale = np.array([width / probability.shape[1], height / probability.shape[0]])

    def to_image(points: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
        """Crop pixel centres to image pixel centres."""
        return (points + origin + 0.5) * scale - 0.5

    bitmap = cv2.dilate((probability > BITMAP_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bitmap, connectivity=8)
    scores = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count) / stats[:, cv2.CC_STAT_AREA]

    grown = []
    for label in range(1, min(count, MAX_CANDIDATES + 1)):
        if scores[label] < box_threshold:
            continue
        left, top, box_width, box_height = stats[label, :4]
        component = (labels[top:top + box_height, left:left + box_width] == label).astype(np.uint8)
        _, (rect_width, rect_height), _ = cv2.minAreaRect(np.concatenate(_outline_points(component)))
        if min(rect_width, rect_height) < MIN_BOX_SIDE:
            continue
        reach = rect_width * rect_height * UNCLIP_RATIO / (2 * (rect_width + rect_height))
        margin = int(np.ceil(reach))
        # Distances to the component: the pixels within ``reach`` are its dilation by a disk, in linear time.
        background = (np.pad(component, margin) == 0).astype(np.uint8)
        distances = cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        origin = (int(left) - margin, int(top) - margin)
        outline = [to_image(points, origin) for points in _outline_points((distances <= reach).astype(np.uint8))]
        rect = cv2.minAreaRect(np.concatenate(outline).astype(np.float32))
        if min(rect[1]) > MIN_IMAGE_SIDE:
            grown.append(_GrownComponent(float(scores[label]), origin, distances, reach, rect))

    # Grown regions of neighbouring lines can meet: a pixel both reach goes to the one whose
    # component is nearer, so no two masks claim the same pixels. The boxes keep DB's whole growth.
    pad = max((int(np.ceil(g.reach)) for g in grown), default=0)
    nearest = np.full((probability.shape[0] + 2 * pad, probability.shape[1] + 2 * pad), np.inf, np.float32)
    owner = np.full(nearest.shape, -1, np.int32)
    for index, region in enumerate(grown):
        window = region.window(pad)
        closer = (region.distances <= region.reach) & (region.distances < nearest[window])
        nearest[window][closer] = region.distances[closer]
        owner[window][closer] = index

    # Image pixel (X, Y) shows the padded map pixel its centre falls in (rows and columns ascend).
    map_rows = np.minimum(((np.arange(height) + 0.5) / scale[1]).astype(int), probability.shape[0] - 1) + pad
    map_columns = np.minimum(((np.arange(width) + 0.5) / scale[0]).astype(int), probability.shape[1] - 1) + pad
    regions = []
    for index, region in enumerate(grown):
        rows, columns = region.window(pad)
        top, bottom = np.searchsorted(map_rows, [rows.start, rows.stop])
        left, right = np.searchsorted(map_columns, [columns.start, columns.stop])
        own = owner[np.ix_(map_rows[top:bottom], map_columns[left:right])] == index
        if own.any():  # a frame smaller than its map can show none of a small region's pixels
            corners = detections.rotated_box_corners(region.rect, width, height)
            regions.append(TextRegion(own, (int(left), int(top)), corners, region.score))
    return regions


class TextDetector(Detector):
    def __init__(self):
        self.model = onnx_model.load(model_files.resolve("text-detection-ppocrv4-dbnet").file(".onnx"))

    def detect(self, image: Image.Image, threshold: float) -> list[dict]:
        probability = self.model.infer(preprocess(np.asarray(image)))[OUTPUT][0, 0]
        return [detections.mask(LABEL, region.crop, region.score, region.corners.ravel().tolist(), origin=region.origin)
                for region in text_regions(probability, image.size, threshold)]
