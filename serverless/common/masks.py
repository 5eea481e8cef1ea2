"""Masks on the wire (docs/wire-format.md §1.6 and §4.7).

- Function mask: the pixels of an *inclusive* box ``xtl, ytl, xbr, ybr`` row by row (0 background,
  255 object), followed by the four box numbers.
- CVAT RLE: run lengths over the same pixels, starting with a background run (0 when the first
  pixel is object), followed by the same four numbers. Any non-zero value is object: CVAT splits
  runs at every value change, so mixed values would corrupt its RLE.
"""

from __future__ import annotations

import cv2
import numpy as np

from serverless.common.boxes import Box


def mask_box(mask: np.ndarray) -> Box[int] | None:
    """Inclusive bounds of the non-zero pixels of an image-sized mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def to_function_mask(mask: np.ndarray, box: Box[int] | None = None, origin: tuple[int, int] = (0, 0)) -> list[int]:
    """Encode a mask over ``box`` (default: the mask's own bounds) in the function format.

    ``mask`` is image-sized, or a crop whose top-left pixel is at ``origin`` (x, y) in the image;
    ``box`` is in the mask's own coordinates.
    """
    box = box or mask_box(mask)
    if box is None:
        raise ValueError("cannot encode an empty mask")
    xtl, ytl, xbr, ybr = box
    crop = mask[ytl:ybr + 1, xtl:xbr + 1] != 0
    x, y = origin
    return np.where(crop, 255, 0).ravel().tolist() + [xtl + x, ytl + y, xbr + x, ybr + y]


def from_function_mask(values: list) -> tuple[np.ndarray, Box[int]]:
    """Decode the function format into (boolean crop, inclusive box); raises ValueError when malformed."""
    if len(values) < 5:
        raise ValueError("a function mask needs pixel values followed by xtl, ytl, xbr, ybr")
    xtl, ytl, xbr, ybr = (int(v) for v in values[-4:])
    width, height = xbr - xtl + 1, ybr - ytl + 1
    if width <= 0 or height <= 0:
        raise ValueError(f"mask box ({xtl}, {ytl}, {xbr}, {ybr}) is empty")
    pixels = np.asarray(values[:-4])
    if pixels.size != width * height:
        raise ValueError(f"mask box {width}x{height} needs {width * height} values, got {pixels.size}")
    return (pixels != 0).reshape(height, width), (xtl, ytl, xbr, ybr)


def function_mask_to_rle(values: list) -> list[int]:
    """CVAT's stored form of a function mask."""
    crop, box = from_function_mask(values)
    return rle_encode(crop) + list(box)


def rle_encode(crop: np.ndarray) -> list[int]:
    """Run lengths of a boolean crop in row-major order, starting with a (possibly empty) background run."""
    flat = crop.ravel().astype(bool)
    # Positions where the value changes, framed by the start and end of the sequence.
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0] + runs if flat.size and flat[0] else runs


def mask_to_polygons(mask: np.ndarray, *, offset: tuple[int, int] = (0, 0),
                     tolerance: float = 0.0) -> list[list[float]]:
    """Outer contours of a boolean mask as flat ``[x1, y1, x2, y2, ...]`` polygons of 3+ points.

    ``offset`` shifts the result (for a mask crop placed at ``offset`` in the image);
    ``tolerance`` is the Douglas-Peucker distance in pixels. The default 0 keeps the exact outline
    (straight runs are already one segment each): any simplification can flatten an object two
    pixels thick into a line, which is then lost.
    """
    contours, _ = cv2.findContours((mask != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance, True)
        points = contour.reshape(-1, 2)
        if len(points) >= 3:
            polygons.append((points + np.asarray(offset)).astype(float).ravel().tolist())
    return polygons
