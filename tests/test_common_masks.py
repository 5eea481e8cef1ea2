import numpy as np
import pytest

from serverless.common import masks


def test_cvat_worked_example():
    # docs/wire-format.md §4.7: a 3x4 box at the origin, two object pixels then two background per row.
    function_mask = [255, 255, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 0, 0, 2, 3]
    assert masks.function_mask_to_rle(function_mask) == [0, 2, 2, 2, 2, 2, 2, 0, 0, 2, 3]


def test_rle_starts_with_background_run():
    crop = np.array([[0, 0, 1], [1, 1, 0]], dtype=bool)
    assert masks.rle_encode(crop) == [2, 3, 1]
    assert masks.rle_encode(np.zeros((2, 2), bool)) == [4]
    assert masks.rle_encode(np.ones((2, 2), bool)) == [0, 4]


def test_rle_binarises_mixed_values():
    # CVAT splits runs at every value change; 1 and 255 are both object here.
    assert masks.function_mask_to_rle([1, 255, 0, 7, 0, 0, 1, 1]) == [0, 2, 1, 1, 0, 0, 1, 1]


def test_function_mask_round_trip_over_mask_bounds():
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[2:5, 3:7] = 1
    mask[4, 3] = 0
    encoded = masks.to_function_mask(mask)
    assert encoded[-4:] == [3, 2, 6, 4]  # inclusive xtl, ytl, xbr, ybr
    assert len(encoded) == 4 * 3 + 4
    assert set(encoded[:-4]) == {0, 255}
    crop, box = masks.from_function_mask(encoded)
    assert box == (3, 2, 6, 4)
    np.testing.assert_array_equal(crop, mask[2:5, 3:7] != 0)


def test_function_mask_errors():
    with pytest.raises(ValueError, match="needs 4 values, got 3"):
        masks.from_function_mask([255, 0, 255, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        masks.from_function_mask([255, 5, 5, 4, 4])
    with pytest.raises(ValueError, match="empty mask"):
        masks.to_function_mask(np.zeros((3, 3), bool))


def test_mask_to_polygons_square_and_offset():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 4:10] = True  # x 4..9, y 5..14
    (polygon,) = masks.mask_to_polygons(mask, offset=(100, 200))
    points = np.array(polygon).reshape(-1, 2)
    assert len(points) == 4
    assert sorted(map(tuple, points.tolist())) == [(104, 205), (104, 214), (109, 205), (109, 214)]


def test_mask_to_polygons_separate_objects_and_specks():
    mask = np.zeros((30, 30), dtype=bool)
    mask[2:8, 2:8] = True
    mask[15:25, 12:28] = True
    mask[28, 28] = True  # a single pixel cannot make a polygon
    polygons = masks.mask_to_polygons(mask)
    assert len(polygons) == 2
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)


def test_mask_to_polygons_keeps_objects_two_pixels_thick():
    mask = np.zeros((10, 20), dtype=bool)
    mask[4:6, 2:18] = True  # a bar 16 x 2: any simplification would flatten it into a line
    (polygon,) = masks.mask_to_polygons(mask)
    points = np.array(polygon).reshape(-1, 2)
    assert sorted(map(tuple, points.tolist())) == [(2, 4), (2, 5), (17, 4), (17, 5)]
