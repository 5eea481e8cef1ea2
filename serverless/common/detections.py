"""Detection post-processing shared by every detector: letterbox, NMS, box scaling and clipping,
and the result items CVAT's functions return (docs/wire-format.md §1.6)."""

from __future__ import annotations

import cv2
import numpy as np

from serverless.common import masks


def letterbox(rgb: np.ndarray, size: tuple[int, int], *, pad_value: int = 114,
              center: bool = True) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio to fit ``size`` (height, width), then pad.

    Returns (canvas, ratio, (pad_x, pad_y)); ``center`` pads both sides as YOLOv7 does, otherwise
    only right and bottom as YOLOX does. Undo with ``unletterbox``.
    """
    height, width = rgb.shape[:2]
    target_h, target_w = size
    ratio = min(target_h / height, target_w / width)
    # At least one pixel: a 5000x3 frame must not round a side away (cv2.resize refuses 0).
    new_w, new_h = max(1, int(round(width * ratio))), max(1, int(round(height * ratio)))
    if (new_w, new_h) != (width, height):
        resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    else:
        resized = rgb
    pad_x, pad_y = ((target_w - new_w) / 2, (target_h - new_h) / 2) if center else (0.0, 0.0)
    left, top = int(round(pad_x - 0.1)), int(round(pad_y - 0.1))
    canvas = np.full((target_h, target_w, rgb.shape[2]), pad_value, dtype=rgb.dtype)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas, ratio, (float(left), float(top))


def unletterbox(boxes: np.ndarray, ratio: float, pad: tuple[float, float]) -> np.ndarray:
    """Map ``[N, 4]`` boxes from letterboxed input pixels back to the original image."""
    pad_x, pad_y = pad
    return (boxes - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)) / ratio


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip ``[N, 4]`` boxes ``x_min, y_min, x_max, y_max`` to the image."""
    return np.clip(boxes, 0, [width, height, width, height])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_candidates: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with a kept box is above ``iou_threshold``; IoU uses plain
    coordinate differences (no +1), as CVAT's and detectron2's do. Only the ``max_candidates``
    best-scoring boxes take part: at threshold 0 a detector proposes every anchor, and greedy
    NMS over hundreds of thousands of boxes would take minutes.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")[:max_candidates]
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]),
                        0, None)
        height = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]),
                         0, None)
        inter = width * height
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_candidates: int | None = None) -> np.ndarray:
    """NMS within each class only: boxes of different classes never suppress each other."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Shift each class to its own region of the plane, so one NMS pass cannot mix classes.
    offsets = np.asarray(classes, dtype=np.float32)[:, None] * (float(boxes.max()) - float(boxes.min()) + 1)
    return nms(boxes + offsets, scores, iou_threshold, max_candidates)


def _attributes(attributes: dict[str, str] | None) -> list[dict]:
    return [{"name": name, "value": value} for name, value in (attributes or {}).items()]


def rectangle(label: str, box, confidence: float, attributes: dict[str, str] | None = None) -> dict:
    return {
        "label": label,
        "type": "rectangle",
        "points": [round(float(v), 2) for v in box],
        "confidence": f"{float(confidence):.4f}",
        "attributes": _attributes(attributes),
    }


def rotated_box_corners(rect, width: int, height: int) -> np.ndarray:
    """A cv2 rotated rectangle's corners as TL, TR, BR, BL, clipped to the image: clockwise on
    screen (y points down) from the corner with the smallest x + y. Unlike ordering by x + y and
    y - x (CVAT's way), this never repeats a corner when the rectangle is at 45 degrees."""
    corners = cv2.boxPoints(rect)
    center = corners.mean(axis=0)
    clockwise = corners[np.argsort(np.arctan2(corners[:, 1] - center[1], corners[:, 0] - center[0]))]
    return np.clip(np.roll(clockwise, -int(np.argmin(clockwise.sum(axis=1))), axis=0), 0, [width, height])


def mask(label: str, object_mask: np.ndarray, confidence: float, polygon: list[float] | None = None,
         attributes: dict[str, str] | None = None, origin: tuple[int, int] = (0, 0)) -> dict:
    """A mask item: the object's own pixels over their bounds, and a polygon in ``points`` for
    clients that ask for polygons (``conv_mask_to_poly``). ``object_mask`` is a boolean array,
    image-sized or a crop whose top-left pixel is at ``origin`` (x, y) in the image."""
    return {
        "label": label,
        "type": "mask",
        "points": [round(float(v), 2) for v in (polygon or [])],
        "mask": masks.to_function_mask(object_mask, origin=origin),
        "confidence": f"{float(confidence):.4f}",
        "attributes": _attributes(attributes),
    }
