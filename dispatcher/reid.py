"""ReID as a task-wide request (docs/wire-format.md §5.3, §9.4): the target's rectangles linked into tracks.

The work is split by frame pair: for each pair of consecutive frames (f, f + 1) that both hold
rectangles, the function says which box on f is which box on f + 1. Pairs are independent, so
they run as chunks like frames do; only the linking at the end is sequential. It reads the
rectangles again, so boxes deleted meanwhile drop out and boxes added meanwhile become tracks of
their own, and it replaces them by tracks in one transaction.
"""

from __future__ import annotations

from dispatcher.converter import is_int


class BadMatching(ValueError):
    """A function's reply that is not a matching of the pair's boxes."""


def pairs(rectangles: dict[int, list[dict]], frames: list[int]) -> list[int]:
    """The first frame of every pair (f, f + 1) of the target's frames that both hold rectangles."""
    targeted = set(frames)
    return [frame for frame in sorted(targeted) if frame + 1 in targeted
            and rectangles.get(frame) and rectangles.get(frame + 1)]


def checked_matching(reply, boxes0: list, boxes1: list) -> list[list[int]]:
    """The function's reply, ``result[i] = j`` (box i of the first frame is box j of the second, -1:
    none), as pairs of annotation ids."""
    if not (isinstance(reply, list) and len(reply) == len(boxes0) and all(is_int(j) for j in reply)):
        raise BadMatching(f"expected a list of {len(boxes0)} integers (one per box of the first frame), got {reply!r}")
    matched = [j for j in reply if j != -1]
    if any(not 0 <= j < len(boxes1) for j in matched) or len(set(matched)) != len(matched):
        raise BadMatching(f"each entry must be -1 or the index of a different box of the second frame "
                          f"(0..{len(boxes1) - 1}), got {reply!r}")
    return [[boxes0[i]["id"], boxes1[j]["id"]] for i, j in enumerate(reply) if j != -1]


def link(rectangles: dict[int, list[dict]], links: dict[int, list[list[int]]], last_frame: int) -> list[dict]:
    """Tracks from rectangles (annotation objects with ids, by frame) and the matched id pairs per
    frame pair: one track per path, every rectangle in exactly one. A path that ends before the
    target's ``last_frame`` (the task's, or the job's) gets a closing ``outside`` copy on the next
    frame, as CVAT's ReID does, or the track would run on to the end of the task."""
    box_by_id = {box["id"]: box for boxes in rectangles.values() for box in boxes}
    path_of: dict[int, list[dict]] = {}
    paths: list[list[dict]] = []
    for frame in sorted(rectangles):
        for box in rectangles[frame]:
            if box["id"] not in path_of:
                paths.append([box])
                path_of[box["id"]] = paths[-1]
        for first, second in links.get(frame, []):
            start, following = box_by_id.get(first), box_by_id.get(second)
            # Boxes deleted since, or of another label: that link is no longer one.
            if (start is None or following is None or following["frame"] != frame + 1
                    or following["id"] in path_of or following["label_id"] != start["label_id"]):
                continue
            path_of[first].append(following)
            path_of[following["id"]] = path_of[first]
    return [_track(path, last_frame) for path in paths]


def _track(path: list[dict], last_frame: int) -> dict:
    shapes = [{"type": "rectangle", "frame": box["frame"], "points": box["points"], "rotation": box.get("rotation", 0),
               "occluded": box.get("occluded", False), "outside": False, "z_order": box.get("z_order", 0),
               "attributes": box.get("attributes", [])} for box in path]
    if shapes[-1]["frame"] < last_frame:
        shapes.append({**shapes[-1], "frame": shapes[-1]["frame"] + 1, "outside": True})
    return {"frame": shapes[0]["frame"], "label_id": path[0]["label_id"], "group": None, "source": "auto",
            "attributes": [], "shapes": shapes}
