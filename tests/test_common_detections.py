"""Shared detection post-processing, against cases computed by hand."""

import numpy as np
import pytest

from serverless.common import detections, masks

A, B, C = [0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]  # IoU(A, B) = 81 / 119 = 0.68


def test_nms_keeps_the_best_of_overlapping_boxes():
    scores = [0.9, 0.8, 0.7]
    assert detections.nms([A, B, C], scores, 0.5).tolist() == [0, 2]
    assert detections.nms([A, B, C], scores, 0.7).tolist() == [0, 1, 2]  # 0.68 is not above 0.7
    assert detections.nms([B, A, C], [0.8, 0.9, 0.7], 0.5).tolist() == [1, 2]  # order follows the scores


def test_nms_candidate_cap_and_empty_input():
    assert detections.nms([A, C, [40, 40, 50, 50]], [0.5, 0.9, 0.7], 0.5, max_candidates=2).tolist() == [1, 2]
    assert detections.batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


def test_batched_nms_never_suppresses_across_classes():
    assert detections.batched_nms([A, B], [0.9, 0.8], [3, 7], 0.5).tolist() == [0, 1]
    assert detections.batched_nms([A, B], [0.9, 0.8], [3, 3], 0.5).tolist() == [0]


def test_centred_letterbox_and_its_inverse():
    image = np.zeros((100, 200, 3), dtype=np.uint8)  # h 100, w 200 into 64 x 64: ratio 0.32, 64 x 32
    canvas, ratio, pad = detections.letterbox(image, (64, 64))
    assert canvas.shape == (64, 64, 3) and ratio == pytest.approx(0.32) and pad == (0.0, 16.0)
    assert (canvas[:16] == 114).all() and (canvas[16:48] == 0).all() and (canvas[48:] == 114).all()
    np.testing.assert_allclose(detections.unletterbox(np.array([[0, 16, 64, 48]], np.float32), ratio, pad),
                               [[0, 0, 200, 100]], rtol=1e-5)


def test_top_left_letterbox():
    canvas, ratio, pad = detections.letterbox(np.zeros((100, 200, 3), np.uint8), (64, 64), center=False)
    assert pad == (0.0, 0.0) and (canvas[:32] == 0).all() and (canvas[32:] == 114).all()


def test_clip_and_items():
    np.testing.assert_array_equal(detections.clip_boxes(np.array([[-5, 3, 120, 90]]), 100, 80), [[0, 3, 100, 80]])
    item = detections.rectangle("car", [1.234, 2, 3, 4.5678], 0.98765, {"color": "red"})
    assert item == {"label": "car", "type": "rectangle", "points": [1.23, 2.0, 3.0, 4.57], "confidence": "0.9877",
                    "attributes": [{"name": "color", "value": "red"}]}
    object_mask = np.zeros((6, 8), bool)
    object_mask[1:3, 2:5] = True
    item = detections.mask("text", object_mask, 0.5, [2, 1, 4, 1, 4, 2])
    assert item["type"] == "mask" and item["points"] == [2, 1, 4, 1, 4, 2]
    assert item["mask"] == [255] * 6 + [2, 1, 4, 2]
    assert masks.function_mask_to_rle(item["mask"]) == [0, 6, 2, 1, 4, 2]


def test_mask_item_from_a_crop_placed_in_the_image():
    crop = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)  # object pixels at crop (1,0), (2,0), (1,1)
    item = detections.mask("text", crop, 0.9, origin=(100, 50))
    assert item["mask"] == [255, 255, 255, 0, 101, 50, 102, 51]


def test_rotated_box_corners_start_top_left_and_go_clockwise():
    upright = detections.rotated_box_corners(((50, 20), (40, 10), 0), 1000, 1000)
    np.testing.assert_allclose(upright, [[30, 15], [70, 15], [70, 25], [30, 25]], atol=1e-4)
    diamond = detections.rotated_box_corners(((50, 50), (20, 20), 45), 1000, 1000)
    assert len({tuple(c) for c in diamond.round(3)}) == 4  # no repeated corner at 45 degrees
    np.testing.assert_allclose(detections.rotated_box_corners(((5, 5), (20, 20), 0), 10, 10),
                               [[0, 0], [10, 0], [10, 10], [0, 10]])
