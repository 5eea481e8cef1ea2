"""What every interactor shares: reading CVAT's request, click maps, crop and paste-back, the reply.

CVAT's interactor request (docs/wire-format.md §1.5, §6.3) is ``{"image", "pos_points": [[x, y], ...],
"neg_points": [[x, y], ...], "obj_bbox": [[x1, y1], [x2, y2]] or null or [], "threshold"?}``
(CVAT 2.60+ may add ``text_prompts``: read by none of ours, so ignored). Coordinates are image
pixels, x to the right, y down. Unlike CVAT (§D6): a flat ``[x1, y1, x2, y2]`` box is accepted
too, ``null`` and ``[]`` mean no box, and every mistake is a 400 naming the field.

A model answers a ``Segmentation``: the object's mask and its confidence in it. The reply follows
the request's ``mask_format``:

- ``"full"`` (default): the version-2 reply ``{"mask": H x W}`` over the whole image, 0 background
  and 255 object; the only form older CVAT UIs read;
- ``"cvat_rle"`` (ours): ``{"rle": [runs..., xtl, ytl, xbr, ybr], "size": [H, W]}``, the mask as
  CVAT stores it (§4.7);
- ``"shapes"``: CVAT 2.60+'s ``{"shapes": [{"type": "mask", "points": <the same RLE and box>,
  "attributes": [{"spec_id": 0, "value": "<confidence>"}]}]}`` (§9.3), one shape, none for an
  empty mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serverless.common import masks
from serverless.common.boxes import Box
from serverless.common.handler import BadRequest, json_handler, read_probability


@dataclass(frozen=True)
class Interaction:
    image: np.ndarray  # H x W x 3 uint8, RGB
    pos_points: np.ndarray  # N x 2 float64, (x, y)
    neg_points: np.ndarray  # M x 2 float64, (x, y)
    box: Box[float] | None  # the object's box (x1 <= x2, y1 <= y2), or None
    threshold: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]


def read_points(body: dict, key: str, width: int, height: int, minimum: int = 0) -> np.ndarray:
    """``[[x, y], ...]`` inside the image (0 <= x <= W, 0 <= y <= H); the key must be present (CVAT
    always sends both lists) unless ``minimum`` is 0, in which case absence means none."""
    if key not in body:
        if minimum:
            raise BadRequest(f"'{key}' is required: at least {minimum} point{'s' * (minimum > 1)} as [[x, y], ...]")
        return np.zeros((0, 2))
    points = body[key]
    if not isinstance(points, list):
        raise BadRequest(f"'{key}' must be a list of [x, y] points, got {type(points).__name__}")
    for index, point in enumerate(points):
        if not (isinstance(point, (list, tuple)) and len(point) == 2 and all(_is_number(c) for c in point)):
            raise BadRequest(f"'{key}[{index}]' must be [x, y] with two numbers, got {point!r}")
        x, y = point
        if not (0 <= x <= width and 0 <= y <= height):
            raise BadRequest(f"'{key}[{index}]' = [{x}, {y}] is outside the {width}x{height} image")
    if len(points) < minimum:
        raise BadRequest(f"'{key}' needs at least {minimum} point{'s' * (minimum > 1)}, got {len(points)}")
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def read_box(body: dict, width: int, height: int) -> Box[float] | None:
    """``obj_bbox`` as ``[[x1, y1], [x2, y2]]`` or ``[x1, y1, x2, y2]`` (corners in any order,
    clipped to the image); ``null``, ``[]`` or absent: None."""
    value = body.get("obj_bbox")
    if value is None or value == []:
        return None
    flat = value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(c, (list, tuple)) for c in value):
        flat = [*value[0], *value[1]]
    if not (isinstance(flat, (list, tuple)) and len(flat) == 4 and all(_is_number(c) for c in flat)):
        raise BadRequest(f"'obj_bbox' must be [[x1, y1], [x2, y2]] or [x1, y1, x2, y2], got {value!r}")
    x1, x2 = sorted((flat[0], flat[2]))
    y1, y2 = sorted((flat[1], flat[3]))
    if x2 < 0 or y2 < 0 or x1 > width or y1 > height:
        raise BadRequest(f"'obj_bbox' {value!r} lies outside the {width}x{height} image")
    return (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))


def read_interaction(body: dict, *, min_pos_points: int = 0, box_required: bool = False,
                     default_threshold: float = 0.5) -> Interaction:
    from serverless.common.images import decode_image  # Pillow only where images are handled

    image = np.asarray(decode_image(body.get("image")))
    height, width = image.shape[:2]
    box = read_box(body, width, height)
    if box_required and box is None:
        raise BadRequest("'obj_bbox' is required: this interactor starts from the object's box, [[x1, y1], [x2, y2]]")
    return Interaction(image, read_points(body, "pos_points", width, height, min_pos_points),
                       read_points(body, "neg_points", width, height),
                       box, read_probability(body, "threshold", default_threshold))


@dataclass(frozen=True)
class Segmentation:
    """A model's answer: the H x W object mask (bool or any non-zero foreground) and the model's
    confidence in it, 0..1."""
    mask: np.ndarray
    confidence: float

    def __post_init__(self):
        if not 0 <= self.confidence <= 1:  # NaN fails too
            raise ValueError(f"a confidence is between 0 and 1, got {self.confidence}")

    @classmethod
    def above(cls, probabilities: np.ndarray, threshold: float) -> Segmentation:
        """Foreground where the object probability is above ``threshold``, with their mean as the
        confidence."""
        mask = probabilities > threshold
        return cls(mask, mean_probability(probabilities, mask))


def mean_probability(probabilities: np.ndarray, mask: np.ndarray) -> float:
    """The mean object probability over the mask's (non-zero) pixels; 0 for an empty mask."""
    selected = probabilities[mask != 0]
    return float(selected.mean(dtype=np.float64)) if selected.size else 0.0


class Interactor(Protocol):
    """An interactor's model, the class in its folder's ``model_handler.py``: ``init_context`` in
    ``main.py`` puts one in ``context.user_data.model``, and ``interactor_handler`` serves it."""

    def segment(self, interaction: Interaction) -> Segmentation:
        """The object the interaction points at: an image-sized mask and the confidence in it."""


def interactor_handler(segment: Callable[[Any, Interaction], Segmentation], **reading) -> Callable:
    """A nuclio handler for an interactor: ``segment(context, interaction) -> Segmentation``, in
    ``main.py`` a call to the ``Interactor`` in ``context.user_data.model``.
    ``reading`` goes to read_interaction (min_pos_points, box_required, default_threshold)."""

    @json_handler
    @functools.wraps(segment)
    def process(context, body):
        mask_format = body.get("mask_format", "full")
        if mask_format not in MASK_FORMATS:
            raise BadRequest(f"'mask_format' must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
        interaction = read_interaction(body, **reading)
        result = segment(context, interaction)
        if result.mask.shape != interaction.shape:
            raise AssertionError(f"the mask is {result.mask.shape}, the image {interaction.shape}")
        if mask_format == "full":
            return mask_reply(result.mask)
        return rle_reply(result.mask) if mask_format == "cvat_rle" else shapes_reply(result)

    return process


# "full": CVAT's version-2 reply (default: older CVAT UIs read nothing else). "cvat_rle": our
# compact extension, the mask as CVAT stores a mask shape's points (RLE of its bounding box plus the
# box), a few hundred numbers instead of H x W. "shapes": CVAT 2.60+'s reply, that RLE as a mask
# shape with the model's confidence.
MASK_FORMATS = ("full", "cvat_rle", "shapes")
CONFIDENCE_SPEC_ID = 0  # the attribute id of a shape's confidence (9.3; cvat-sdk's InteractionResultAttributes)


def mask_reply(mask: np.ndarray) -> dict:
    """CVAT's version-2 reply: the whole image, 0 or 255 (non-zero input is foreground)."""
    return {"mask": np.where(mask != 0, 255, 0).astype(np.uint8).tolist()}


def cvat_rle(mask: np.ndarray) -> list[int]:
    """``[runs..., xtl, ytl, xbr, ybr]``: CVAT's storage form of a mask (docs/wire-format.md §4.7), the RLE of
    its bounding box and that box, inclusive; ``[]`` for an empty mask."""
    box = masks.mask_box(mask != 0)
    if box is None:
        return []
    xtl, ytl, xbr, ybr = box
    return masks.rle_encode(mask[ytl:ybr + 1, xtl:xbr + 1] != 0) + [xtl, ytl, xbr, ybr]


def rle_reply(mask: np.ndarray) -> dict:
    """``{"rle": [runs..., xtl, ytl, xbr, ybr], "size": [H, W]}``; an empty mask has ``"rle": []``."""
    return {"rle": cvat_rle(mask), "size": list(mask.shape)}


def shapes_reply(segmentation: Segmentation) -> dict:
    """CVAT 2.60+'s ``{"shapes": [...]}`` (docs/wire-format.md §9.3): the mask as one mask shape, ``points``
    its CVAT RLE and box, the confidence as a string with 4 decimals (CVAT's attribute values are
    strings); no shape for an empty mask."""
    points = cvat_rle(segmentation.mask)
    if not points:
        return {"shapes": []}
    return {"shapes": [{"type": "mask", "points": points,
                        "attributes": [{"spec_id": CONFIDENCE_SPEC_ID, "value": f"{segmentation.confidence:.4f}"}]}]}


def gaussian_heatmap(points: np.ndarray, shape: tuple[int, int], sigma: float = 10.0) -> np.ndarray:
    """Max over points of exp(-4 ln2 d^2 / sigma^2): DEXTR's (and IOG's) click encoding, sigma being
    the full width at half maximum. Zeros when there are no points."""
    height, width = shape
    heatmap = np.zeros(shape, dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for x, y in points:
        heatmap = np.maximum(heatmap, np.exp(-4 * math.log(2) * ((xs - x) ** 2 + (ys - y) ** 2) / sigma ** 2))
    return heatmap


def normalise_255(values: np.ndarray) -> np.ndarray:
    """Min-max to 0..255 (a constant array becomes zeros), as DEXTR and IOG feed their maps."""
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low) * 255).astype(np.float32)


def padded_box(points: np.ndarray, pad: int, shape: tuple[int, int]) -> Box[int]:
    """The integer corners around ``points`` (N x 2, x y; truncated, as the references do) grown by
    ``pad`` and clipped to the image's last row and column. Slicing is each model's choice: DEXTR's
    reference crops [x1, x2) x [y1, y2), IOG's includes x2 and y2."""
    height, width = shape
    xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
    return (max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0),
            min(int(xs.max()) + pad, width - 1), min(int(ys.max()) + pad, height - 1))


def paste(crop_mask: np.ndarray, box: Box[int], shape: tuple[int, int]) -> np.ndarray:
    """A crop's mask (already at the crop's size) into a zero full-image uint8 mask (0/1) at
    ``box`` = (x1, y1, x2, y2), x2 and y2 exclusive."""
    x1, y1, x2, y2 = box
    if crop_mask.shape != (y2 - y1, x2 - x1):
        raise ValueError(f"the crop mask is {crop_mask.shape}, the box {(y2 - y1, x2 - x1)}")
    full = np.zeros(shape, dtype=np.uint8)
    full[y1:y2, x1:x2] = crop_mask != 0
    return full


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
