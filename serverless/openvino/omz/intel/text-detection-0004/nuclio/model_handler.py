"""text-detection-0004 (PixelLink, MobileNetV2 backbone) and its decoder: one mask item per text instance.

What this relies on, from the Open Model Zoo documentation of the model (the official IR cannot be
fetched on the machines this was written on, so it never ran here):
- input ``input`` ``[1, 3, 768, 1280]`` (B, C, H, W), **BGR**, pixels 0..255 with no mean or scale
  (OMZ's Intel IRs carry their own normalisation; OMZ's text detection demo feeds raw pixels);
- output ``model/segm_logits/add`` ``[1, 2, 192, 320]``: (no text, text) logits per pixel;
- output ``model/link_logits_/add`` ``[1, 16, 192, 320]``: for each of 8 neighbours, (no link, link)
  logits, channel ``2 * k + j`` for neighbour ``k`` in ``NEIGHBOURS`` order (OMZ's demo and CVAT's
  decoder both read them this way).
That is the OMZ 2021.4 IR, the one the catalogue pins. OMZ 2022 and later document the TensorFlow
model's NHWC layout instead (``Placeholder`` ``[1, 768, 1280, 3]``, outputs ``[1, 192, 320, 2]`` and
``[1, 192, 320, 16]``); both are accepted, told apart by where the 3-, 2- or 16-channel axis is.
Outputs are picked by their channel count, as OMZ's demo does, so output names do not matter.

Decoder (docs/wire-format.md §1.7.2), with CVAT's defects fixed (§D5, §D17):
- text score = softmax of the segmentation pair; link score = softmax of each neighbour's pair;
- positive pixels (score >= pixel threshold) are joined to positive 8-neighbours when the link
  between them is positive (link score >= link threshold) in either direction, as OMZ's union-find;
- each component becomes one instance: its minimum-area rectangle in image pixels (dropped when a
  side is under 10 or the area under 300, OMZ's floor), **its own pixels** as the mask (CVAT gives
  every instance the mask of all text), and the mean text score of its pixels as the confidence.
There is no separate confidence filter: every pixel of a component scores at least the pixel
threshold, so the mean does too; filtering it against the same threshold would never drop anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from serverless.common import detections, metadata, model_files
from serverless.common.handler import Detector
from serverless.common.openvino_model import OpenVINOModel

LABEL = metadata.label_names(Path(__file__).with_name("function.yaml"))[1]
PIXEL_THRESHOLD = LINK_THRESHOLD = 0.8  # CVAT's defaults
# (dx, dy) of link pair k: the neighbours row by row, the centre left out.
NEIGHBOURS = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))
MIN_SIDE, MIN_AREA = 10, 300  # image pixels


@dataclass(frozen=True)
class TextInstance:
    crop: np.ndarray  # bool: this component's pixels only, on a crop of the image
    origin: tuple[int, int]  # (x, y) of the crop in the image
    corners: np.ndarray  # [4, 2]: its minimum-area rectangle, TL, TR, BR, BL, in image pixels
    score: float  # mean text score over the component


def positive_probability(logit_pairs: np.ndarray) -> np.ndarray:
    """Softmax over a last axis of (negative, positive) logits, positive part: sigmoid(pos - neg)."""
    return 0.5 * (1.0 + np.tanh((logit_pairs[..., 1] - logit_pairs[..., 0]) / 2))


def _channels_last(logits: np.ndarray, channels: int) -> np.ndarray:
    """One image's ``[H, W, channels]`` from an NCHW or NHWC output."""
    if logits.shape[1] == channels:
        return logits[0].transpose(1, 2, 0)
    if logits.shape[-1] == channels:
        return logits[0]
    raise ValueError(f"no axis of {channels} channels in an output of shape {logits.shape}")


def _output_with_channels(outputs: dict[str, np.ndarray], channels: int) -> np.ndarray:
    """The output with a ``channels`` axis, first or last: segmentation 2, links 16."""
    (array,) = [a for a in outputs.values() if channels in (a.shape[1], a.shape[-1])]
    return array


def _component_roots(size: int, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each of ``size`` nodes, the smallest node joined to it by the edges (union-find in numpy)."""
    parent = np.arange(size)
    while True:
        a, b = parent[sources], parent[targets]
        apart = a != b
        if not apart.any():
            return parent
        # Hang the larger root of each edge under the smaller one, then point every node at its root.
        np.minimum.at(parent, np.maximum(a, b)[apart], np.minimum(a, b)[apart])
        while not np.array_equal(grandparent := parent[parent], parent):
            parent = grandparent


def link_components(pixel_mask: np.ndarray, link_mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the positive pixels joined by positive links (``link_mask`` is ``[H, W, 8]``);
    0 is background, components are numbered in raster order of their first pixel."""
    height, width = pixel_mask.shape
    padded = np.pad(pixel_mask, 1)
    sources, targets = [], []
    for k, (dx, dy) in enumerate(NEIGHBOURS):
        neighbour_positive = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        ys, xs = np.nonzero(pixel_mask & link_mask[:, :, k] & neighbour_positive)
        sources.append(ys * width + xs)
        targets.append((ys + dy) * width + xs + dx)
    roots = _component_roots(height * width, np.concatenate(sources), np.concatenate(targets))
    positive = np.flatnonzero(pixel_mask)
    # A root is its component's smallest index, i.e. its first pixel in raster order.
    _, numbers = np.unique(roots[positive], return_inverse=True)
    labels = np.zeros(height * width, np.int32)
    labels[positive] = numbers + 1
    return labels.reshape(height, width), int(numbers.max(initial=-1)) + 1


def _outline_points(mask: np.ndarray) -> np.ndarray:
    """The outer contour points of a uint8 mask's pieces (a component split by the resize stays one)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return np.concatenate(contours)


def decode_pixel_link(segm_logits: np.ndarray, link_logits: np.ndarray, image_size: tuple[int, int],
                      pixel_threshold: float, link_threshold: float) -> list[TextInstance]:
    """Text instances from the two PixelLink outputs (NCHW or NHWC, batch of one) of a frame of
    ``image_size`` (width, height)."""
    text_score = positive_probability(_channels_last(segm_logits, 2))
    map_height, map_width = text_score.shape
    link_score = positive_probability(_channels_last(link_logits, 16).reshape(map_height, map_width, 8, 2))
    labels, count = link_components(text_score >= pixel_threshold, link_score >= link_threshold)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    scores = np.bincount(labels.ravel(), weights=text_score.ravel(), minlength=count + 1) / np.maximum(sizes, 1)

    # Each component's bounds on the map, then on the image.
    ys, xs = np.nonzero(labels)
    numbers = labels[ys, xs]
    top, left = np.full(count + 1, map_height), np.full(count + 1, map_width)
    bottom, right = np.full(count + 1, -1), np.full(count + 1, -1)
    np.minimum.at(top, numbers, ys)
    np.minimum.at(left, numbers, xs)
    np.maximum.at(bottom, numbers, ys)
    np.maximum.at(right, numbers, xs)
    width, height = image_size
    # The label map at image size, nearest neighbour as cv2.INTER_NEAREST resizes it (OMZ, CVAT):
    # image pixel (X, Y) shows map pixel (X * map_width // width, Y * map_height // height).
    map_rows = np.arange(height) * map_height // height
    map_columns = np.arange(width) * map_width // width

    instances = []
    for number in range(1, count + 1):
        y0, y1 = np.searchsorted(map_rows, [top[number], bottom[number] + 1])
        x0, x1 = np.searchsorted(map_columns, [left[number], right[number] + 1])
        component = (labels[np.ix_(map_rows[y0:y1], map_columns[x0:x1])] == number).astype(np.uint8)
        if not component.any():  # a frame smaller than the map can skip a small component's pixels
            continue
        rect = cv2.minAreaRect(_outline_points(component) + np.array([x0, y0], np.int32))
        side_a, side_b = rect[1]
        if min(side_a, side_b) < MIN_SIDE or side_a * side_b < MIN_AREA:
            continue
        corners = detections.rotated_box_corners(rect, width, height)
        instances.append(TextInstance(component.astype(bool), (int(x0), int(y0)), corners, float(scores[number])))
    return instances


class TextDetector(Detector):
    def __init__(self):
        self.model = OpenVINOModel(model_files.resolve("text-detection-0004").file(".xml"))
        shape = self.model.input_shape
        self.channels_first = shape[1] == 3
        self.input_height, self.input_width = shape[2:4] if self.channels_first else shape[1:3]

    def detect(self, image: Image.Image, threshold: float, link_threshold: float = LINK_THRESHOLD) -> list[dict]:
        """Text masks; ``threshold`` is PixelLink's pixel threshold."""
        # A plain resize to the input, as OMZ's demo and CVAT do (no letterbox); BGR, raw 0..255.
        bgr = cv2.resize(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR), (self.input_width, self.input_height),
                         interpolation=cv2.INTER_LINEAR)
        blob = bgr.astype(np.float32)[np.newaxis]
        outputs = self.model.infer(blob.transpose(0, 3, 1, 2) if self.channels_first else blob)
        instances = decode_pixel_link(_output_with_channels(outputs, 2), _output_with_channels(outputs, 16),
                                      image.size, threshold, link_threshold)
        return [detections.mask(LABEL, instance.crop, instance.score, instance.corners.ravel().tolist(),
                                origin=instance.origin) for instance in instances]
