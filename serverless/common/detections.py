"""Detection result items as CVAT's functions return them (cvat-compat.md section 1.6)."""

from __future__ import annotations

import numpy as np


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip ``[N, 4]`` boxes ``x_min, y_min, x_max, y_max`` to the image."""
    return np.clip(boxes, 0, [width, height, width, height])


def rectangle(label: str, box, confidence: float, attributes: dict[str, str] | None = None) -> dict:
    return {
        "label": label,
        "type": "rectangle",
        "points": [round(float(v), 2) for v in box],
        "confidence": f"{float(confidence):.4f}",
        "attributes": [{"name": name, "value": value} for name, value in (attributes or {}).items()],
    }
