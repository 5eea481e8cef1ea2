"""Tracks as CVAT keeps them, and the shapes they stand for on each frame.

A track is ``{frame, label_id, group, source, attributes, shapes: [...]}`` with one shape per
keyframe, in frame order. Between keyframes CVAT interpolates; after a keyframe marked ``outside``
the object is gone until the next keyframe; after the last keyframe the object stays to the end of
the task unless that keyframe is ``outside`` (which is why a track that ends early carries a
closing outside copy). Exports and per-frame views read tracks through ``frames_of``.

Interpolation here: rectangles, ellipses, cuboids and polygons, polylines and points with the same
number of points move linearly (rotation too); anything else (masks, a changed point count) holds
the previous keyframe, as CVAT does for masks.
"""

from __future__ import annotations

_LINEAR = ("rectangle", "ellipse", "cuboid", "polygon", "polyline", "points")


def frames_of(track: dict, last_frame: int) -> list[dict]:
    """The track's shape on every frame from its first keyframe to where it ends (``last_frame``:
    the task's last frame), each ``{frame, keyframe, outside, ...}``; outside frames included."""
    keyframes = sorted(track["shapes"], key=lambda shape: shape["frame"])
    expanded = []
    for index, shape in enumerate(keyframes):
        following = keyframes[index + 1] if index + 1 < len(keyframes) else None
        expanded.append({**shape, "keyframe": True})
        if shape["outside"]:
            continue  # gone until the next keyframe
        stop = following["frame"] if following else last_frame + 1
        for frame in range(shape["frame"] + 1, stop):
            expanded.append({**_between(shape, following, frame), "frame": frame, "keyframe": False})
    return expanded


def shape_at(track: dict, frame: int, last_frame: int) -> dict | None:
    """The track's visible shape on ``frame``, or None where it is absent or outside."""
    for shape in frames_of(track, last_frame):
        if shape["frame"] == frame:
            return None if shape["outside"] else shape
    return None


def _between(shape: dict, following: dict | None, frame: int) -> dict:
    if (following is None or following["outside"] or shape["type"] not in _LINEAR
            or following["type"] != shape["type"] or len(following["points"]) != len(shape["points"])):
        return dict(shape)
    share = (frame - shape["frame"]) / (following["frame"] - shape["frame"])
    return {**shape,
            "points": [a + (b - a) * share for a, b in zip(shape["points"], following["points"])],
            "rotation": shape.get("rotation", 0) + (following.get("rotation", 0) - shape.get("rotation", 0)) * share}
