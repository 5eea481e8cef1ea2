"""ReID's linking of frame-pair matches into CVAT tracks (docs/wire-format.md §5.3, §9.4), on hand-made
boxes; the function calls and the store's one write run in test_dispatcher_chunks.py."""

import pytest

from dispatcher import reid


def box(box_id: int, frame: int, label: int = 1, x: float = 0) -> dict:
    return {"id": box_id, "frame": frame, "label_id": label, "type": "rectangle", "points": [x, 0, x + 10, 10],
            "rotation": 0, "occluded": False, "z_order": 0, "attributes": [{"spec_id": 5, "value": "a"}]}


def keyframes(track: dict) -> list[tuple[int, float, bool]]:
    return [(shape["frame"], shape["points"][0], shape["outside"]) for shape in track["shapes"]]


def test_pairs_are_consecutive_target_frames_that_both_hold_rectangles():
    rectangles = {0: [box(1, 0)], 1: [box(2, 1)], 2: [box(3, 2)], 4: [box(4, 4)], 5: [box(5, 5)]}
    assert reid.pairs(rectangles, [0, 1, 2, 3, 4, 5]) == [0, 1, 4]
    assert reid.pairs(rectangles, [1, 2, 4]) == [1]  # a job's frames: (4, 5) is not all inside


def test_paths_become_tracks_closed_where_they_end():
    rectangles = {0: [box(1, 0, x=0), box(2, 0, x=50)], 1: [box(3, 1, x=1), box(4, 1, x=51)], 2: [box(5, 2, x=2)]}
    links = {0: [[1, 3], [2, 4]], 1: [[3, 5]]}
    tracks = reid.link(rectangles, links, last_frame=9)
    assert [keyframes(t) for t in tracks] == [[(0, 0, False), (1, 1, False), (2, 2, False), (3, 2, True)],
                                              [(0, 50, False), (1, 51, False), (2, 51, True)]]
    assert tracks[0]["shapes"][0]["attributes"] == [{"spec_id": 5, "value": "a"}]  # the boxes' own
    assert (tracks[0]["frame"], tracks[0]["label_id"], tracks[0]["source"]) == (0, 1, "auto")
    # A path that reaches the task's last frame needs no closing keyframe.
    assert keyframes(reid.link({9: [box(1, 9)]}, {}, last_frame=9)[0]) == [(9, 0, False)]


def test_links_that_no_longer_hold_are_dropped():
    rectangles = {0: [box(1, 0), box(2, 0, label=2)], 1: [box(3, 1), box(4, 1, label=1)]}
    # Box 9 was deleted since the pair ran; box 2 (label 2) cannot continue as label 1's box 4.
    tracks = reid.link(rectangles, {0: [[9, 3], [2, 4], [1, 3]]}, last_frame=1)
    visible = sorted([shape["frame"] for shape in t["shapes"] if not shape["outside"]] for t in tracks)
    assert visible == [[0], [0, 1], [1]]  # every box in exactly one track: 1 -> 3, then 2 and 4 alone


def test_a_reply_is_checked_as_a_matching():
    boxes0, boxes1 = [box(1, 0), box(2, 0)], [box(3, 1), box(4, 1)]
    assert reid.checked_matching([1, -1], boxes0, boxes1) == [[1, 4]]
    for reply in ([1], [1, 1], [2, -1], ["0", -1], {"matches": []}, [True, -1]):
        with pytest.raises(reid.BadMatching):
            reid.checked_matching(reply, boxes0, boxes1)
