"""RetinaNet R101-FPN in plain PyTorch: detectron2's inference around the network and checkpoint
of ``network.py``.

The inference follows detectron2's ``COCO-Detection/retinanet_R_101_FPN_3x.yaml`` as
``DefaultPredictor`` runs it:

- input: BGR pixels, shortest edge resized to 800 (longest at most 1333) with PIL bilinear, minus
  the BGR pixel mean (std 1: the MSRA weights absorbed it), zero-padded to a multiple of 32;
- the network's cell anchors repeated at every location of P3..P7 (offset 0);
- per level: sigmoid scores above the score threshold, best 1000, decoded with weights (1,1,1,1);
  then NMS 0.5 per class, best 100, scaled back to the image and clipped; empty boxes dropped.

Unlike CVAT (which fixes detectron2's internal threshold at 0.5), the internal score threshold is
``min(0.05, threshold)`` and results are kept when ``score >= threshold``; labels are the
function's own spec names by COCO id.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from serverless.common import detections, metadata, model_files
from serverless.common.handler import Detector

from network import ANCHOR_SIZES, ASPECT_RATIOS, NUM_CLASSES, PIXEL_MEAN_BGR, cell_anchors, load_network

FUNCTION_YAML = Path(__file__).with_name("function.yaml")
CHECKPOINT = "model_final_971ab9.pkl"

# detectron2 config values (Base-RetinaNet.yaml, retinanet_R_101_FPN_3x.yaml and defaults.py).
MIN_SIZE_TEST, MAX_SIZE_TEST = 800, 1333
SIZE_DIVISIBILITY = 32  # the FPN's coarsest input stride (res5)
STRIDES = (8, 16, 32, 64, 128)  # P3..P7
SCORE_THRESH_TEST = 0.05
TOPK_CANDIDATES_TEST = 1000
NMS_THRESH_TEST = 0.5
DETECTIONS_PER_IMAGE = 100
SCALE_CLAMP = math.log(1000.0 / 16)  # detectron2's _DEFAULT_SCALE_CLAMP


def grid_anchors(cell: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """All anchors of one level, ``(height * width * A, 4)``: location-major (row by row), then
    the cell anchors, the order the head's outputs are flattened in (offset 0)."""
    shift_x = torch.arange(width, dtype=torch.float32) * stride
    shift_y = torch.arange(height, dtype=torch.float32) * stride
    grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.view(1, -1, 4)).reshape(-1, 4)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """detectron2's Box2BoxTransform.apply_deltas with weights (1, 1, 1, 1)."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    center_x = anchors[:, 0] + 0.5 * widths
    center_y = anchors[:, 1] + 0.5 * heights
    dx, dy, dw, dh = deltas.unbind(dim=1)
    center_x = dx * widths + center_x
    center_y = dy * heights + center_y
    half_w = 0.5 * torch.exp(dw.clamp(max=SCALE_CLAMP)) * widths
    half_h = 0.5 * torch.exp(dh.clamp(max=SCALE_CLAMP)) * heights
    return torch.stack([center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], dim=1)


def flatten_level(output: torch.Tensor, channels: int) -> torch.Tensor:
    """``(1, A * channels, H, W)`` -> ``(H * W * A, channels)``, detectron2's permute_to_N_HWA_K."""
    _, _, height, width = output.shape
    return output.view(-1, channels, height, width).permute(2, 3, 0, 1).reshape(-1, channels)


def select_detections(logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                      score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RetinaNet.inference_single_image: per level, class scores ``>= score_threshold`` (the best
    ``TOPK_CANDIDATES_TEST``) decoded against their anchors; then NMS per class, best
    ``DETECTIONS_PER_IMAGE``. Inputs are per level ``(H*W*A, 80)`` logits, ``(H*W*A, 4)`` deltas
    and anchors; returns boxes (input pixels), scores and class indices 0..79, best first."""
    boxes_all, scores_all, classes_all = [], [], []
    for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
        # The best k of those above the threshold are those above it among the best k overall;
        # taking the k best logits first saves a sigmoid and a mask over up to 10M scores.
        logits_flat = level_logits.flatten()
        best_logits, candidates = logits_flat.topk(min(TOPK_CANDIDATES_TEST, logits_flat.numel()))
        scores = best_logits.sigmoid()
        kept = scores >= score_threshold
        scores, candidates = scores[kept], candidates[kept]
        anchor_index = candidates // NUM_CLASSES
        boxes_all.append(decode_boxes(level_deltas[anchor_index], level_anchors[anchor_index]))
        scores_all.append(scores)
        classes_all.append(candidates % NUM_CLASSES)
    boxes, scores, classes = (torch.cat(x).cpu().numpy() for x in (boxes_all, scores_all, classes_all))
    keep = detections.batched_nms(boxes, scores, classes, NMS_THRESH_TEST)[:DETECTIONS_PER_IMAGE]
    return boxes[keep], scores[keep], classes[keep]


def resized_size(height: int, width: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape(800, max 1333): (new height, new width)."""
    scale = MIN_SIZE_TEST / min(height, width)
    new_h, new_w = (MIN_SIZE_TEST, scale * width) if height < width else (scale * height, MIN_SIZE_TEST)
    if max(new_h, new_w) > MAX_SIZE_TEST:
        shrink = MAX_SIZE_TEST / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def class_names(function_yaml: Path = FUNCTION_YAML) -> list[str]:
    """Spec name for each class index: detectron2's contiguous ids are the COCO ids in order."""
    names = metadata.label_names(function_yaml)
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{function_yaml}: the spec must list {NUM_CLASSES} COCO classes, it has {len(names)}")
    return [names[coco_id] for coco_id in sorted(names)]


class RetinaNetR101(Detector):
    def __init__(self, checkpoint: Path | None = None):
        checkpoint = checkpoint or model_files.resolve("retinanet-r101").files[CHECKPOINT]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = load_network(checkpoint, self.device)
        self.class_names = class_names()
        self.pixel_mean = torch.tensor(PIXEL_MEAN_BGR, device=self.device).view(3, 1, 1)
        self.cell_anchors = [cell_anchors(sizes, ASPECT_RATIOS) for sizes in ANCHOR_SIZES]

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised BGR input padded to a multiple of 32, and its size before padding."""
        height, width = resized_size(image.height, image.width)
        rgb = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
        bgr = torch.from_numpy(rgb[:, :, ::-1].copy()).to(self.device).permute(2, 0, 1).float()
        # Padding after normalisation: the border is 0 in the network's input, as in detectron2.
        pad_h, pad_w = -height % SIZE_DIVISIBILITY, -width % SIZE_DIVISIBILITY
        padded = F.pad(bgr - self.pixel_mean, (0, pad_w, 0, pad_h))[None]
        return padded.contiguous(memory_format=torch.channels_last), (height, width)

    @torch.inference_mode()
    def detect(self, image: Image.Image, threshold: float) -> list[dict]:
        images, (height, width) = self.preprocess(image)
        logits, deltas = self.network(images)
        anchors = [grid_anchors(cell, level.shape[2], level.shape[3], stride).to(self.device)
                   for cell, level, stride in zip(self.cell_anchors, logits, STRIDES)]
        boxes, scores, classes = select_detections(
            [flatten_level(x, NUM_CLASSES) for x in logits], [flatten_level(x, 4) for x in deltas], anchors,
            # CVAT fixes this at 0.5, so lower request thresholds did nothing (its defect, §D4).
            min(SCORE_THRESH_TEST, threshold))
        return to_items(boxes, scores, classes, self.class_names, threshold, (height, width), image.size)


def to_items(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, names: list[str], threshold: float,
             input_size: tuple[int, int], image_size: tuple[int, int]) -> list[dict]:
    """detector_postprocess (boxes from input ``(height, width)`` to image ``(width, height)``
    pixels, clipped, empty ones dropped), then ``score >= threshold``, labelled ``names[class]``."""
    (input_h, input_w), (width, height) = input_size, image_size
    boxes = detections.clip_boxes(boxes * np.array([width / input_w, height / input_h] * 2, dtype=np.float32),
                                  width, height)
    kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (scores >= threshold)
    return [detections.rectangle(names[int(c)], box, score)
            for box, score, c in zip(boxes[kept], scores[kept], classes[kept])]
