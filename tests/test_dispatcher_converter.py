"""Label mapping and result conversion (docs/wire-format.md §4); every expected value is worked out by hand."""

import pytest
import yaml

from dispatcher.converter import (
    BadFunctionOutput,
    LabelMapping,
    MappingError,
    TaskAttribute,
    TaskLabel,
    build_mapping,
    convert,
)
from serverless.common.metadata import AttributeSpec, FunctionMeta, LabelSpec

from helpers import FACE_FUNCTION

FRAME = 5

COLOR = TaskAttribute(40, "color", "select", ("red", "blue"))
PAINT = TaskAttribute(41, "paint", "select", ("red", "blue"))
CAR = TaskLabel(11, "car", "rectangle", attributes=(COLOR,))
VEHICLE = TaskLabel(12, "vehicle", "rectangle", attributes=(PAINT, TaskAttribute(42, "color", "text", ())))
NOSE, LEFT_EYE, RIGHT_EYE = (TaskLabel(31, "nose", "points"), TaskLabel(32, "left_eye", "points"),
                             TaskLabel(33, "right_eye", "points"))
PERSON = TaskLabel(30, "person", "skeleton", sublabels=(NOSE, LEFT_EYE, RIGHT_EYE))

MODEL_CAR = LabelSpec("car", "rectangle", attributes=(AttributeSpec("color", "select", ("red", "blue")),
                                                      AttributeSpec("speed", "number", ("0", "300", "1"))))
MODEL_PERSON = LabelSpec("person", "skeleton", sublabels=(
    LabelSpec("nose", "points", attributes=(AttributeSpec("visible", "checkbox", ("true",)),)),
    LabelSpec("left_eye", "points"), LabelSpec("tail", "points")))


def shape(label_id, shape_type, points, **fields):
    """A converted shape as §3.6 shows it, with CVAT's defaults (§4.6)."""
    result = {"frame": FRAME, "label_id": label_id, "source": "auto", "type": shape_type, "points": points}
    if shape_type in ("rectangle", "ellipse"):
        result["rotation"] = fields.pop("rotation", 0)
    result.update({"occluded": False, "outside": fields.pop("outside", False), "z_order": 0,
                   "group": fields.pop("group", None), "attributes": fields.pop("attributes", [])})
    result.update(fields)
    return result


def one_label_mapping(task_label: TaskLabel, attributes=None, sublabels=None) -> dict[str, LabelMapping]:
    return {"thing": LabelMapping(task_label, attributes or {}, sublabels or {})}


# --- default mapping (§4.2, §4.3) ---

@pytest.mark.parametrize("model_type, task_type, compatible", [
    ("rectangle", "rectangle", True),
    ("rectangle", "polygon", False),
    ("polygon", "rectangle", False),
    ("rectangle", "any", True),      # task any takes every model type but skeleton
    ("mask", "any", True),
    ("skeleton", "any", False),
    ("any", "rectangle", True),      # model any goes to every task type but skeleton
    ("any", "any", True),
    ("any", "skeleton", False),
    ("mask", "polygon", True),       # mask and polygon are interchangeable
    ("polygon", "mask", True),
    ("mask", "rectangle", False),
    ("tag", "tag", True),
    ("tag", "rectangle", False),
    ("ellipse", "points", False),
])
def test_default_mapping_follows_type_compatibility(model_type, task_type, compatible):
    task_label = TaskLabel(1, "thing", task_type)
    mapping = build_mapping((LabelSpec("thing", model_type),), (task_label,), None)
    assert mapping == ({"thing": LabelMapping(task_label, {}, {})} if compatible else {})


def test_default_mapping_by_exact_name_and_attributes_by_name():
    function_labels = (MODEL_CAR, LabelSpec("Vehicle", "rectangle"), LabelSpec("dog", "rectangle"))
    for requested in (None, {}):
        mapping = build_mapping(function_labels, (CAR, VEHICLE), requested)
        # "Vehicle" is not "vehicle" and there is no dog; the car's "speed" has no task attribute.
        assert mapping == {"car": LabelMapping(CAR, {"color": COLOR}, {})}


def test_default_mapping_of_a_skeleton_maps_sublabels_and_their_attributes_by_name():
    visible = TaskAttribute(50, "visible", "checkbox", ("false",))
    nose = TaskLabel(31, "nose", "points", attributes=(visible,))
    person = TaskLabel(30, "person", "skeleton", sublabels=(nose, LEFT_EYE, RIGHT_EYE))
    mapping = build_mapping((MODEL_PERSON,), (person,), None)
    assert mapping == {"person": LabelMapping(person, {}, {
        "nose": LabelMapping(nose, {"visible": visible}, {}),
        "left_eye": LabelMapping(LEFT_EYE, {}, {}),
    })}


# --- explicit mapping (§4.1, §4.4) ---

def test_explicit_mapping_with_attributes():
    requested = {"car": {"name": "vehicle", "attributes": {"color": "paint"}}}
    assert build_mapping((MODEL_CAR,), (CAR, VEHICLE), requested) == {
        "car": LabelMapping(VEHICLE, {"color": PAINT}, {})}


def test_explicit_mapping_without_attributes_maps_none():
    assert build_mapping((MODEL_CAR,), (CAR, VEHICLE), {"car": {"name": "vehicle"}}) == {
        "car": LabelMapping(VEHICLE, {}, {})}


def test_old_string_form_maps_attributes_by_name():
    # Old CVAT kept attributes by identical name: vehicle has a "color" (text), not the select one.
    assert build_mapping((MODEL_CAR,), (CAR, VEHICLE), {"car": "vehicle"}) == {
        "car": LabelMapping(VEHICLE, {"color": VEHICLE.attributes[1]}, {})}


def test_explicit_mapping_of_a_skeleton():
    requested = {"person": {"name": "person", "sublabels": {"nose": {"name": "right_eye"}, "left_eye": "left_eye"}}}
    assert build_mapping((MODEL_PERSON,), (PERSON,), requested) == {"person": LabelMapping(PERSON, {}, {
        "nose": LabelMapping(RIGHT_EYE, {}, {}), "left_eye": LabelMapping(LEFT_EYE, {}, {})})}


@pytest.mark.parametrize("requested, message", [
    ({"truck": {"name": "car"}}, "Invalid mapping. Unknown model label 'truck'"),
    ({"car": {"name": "lorry"}}, "Invalid mapping. Unknown task label 'lorry' (mapped from model label 'car')"),
    ({"car": "lorry"}, "Invalid mapping. Unknown task label 'lorry' (mapped from model label 'car')"),
    ({"car": {"name": "car", "attributes": {"weight": "color"}}},
     "Invalid mapping. Unknown model attribute 'weight' of 'car'"),
    ({"car": {"name": "car", "attributes": {"color": "hue"}}},
     "Invalid mapping. Unknown task attribute 'hue' of 'car'"),
    ({"car": {"name": "vehicle", "attributes": {"color": "paint", "speed": "paint"}}},
     "Invalid mapping. The task attribute 'paint' of 'vehicle' is mapped from both 'color' and 'speed'"),
    ({"car": {"name": "car", "attributes": ["color"]}}, "Invalid mapping. The attributes of 'car' must be an object"),
    ({"car": {"name": "area"}},
     "Invalid mapping. The model label 'car' (rectangle) and the task label 'area' (polygon) are not compatible"),
    ({"person": {"name": "anything"}},
     "Invalid mapping. The model label 'person' (skeleton) and the task label 'anything' (any) are not compatible"),
    ({"person": {"name": "person"}}, "Invalid mapping. The skeleton 'person' is mapped without sublabels"),
    ({"person": "person"}, "Invalid mapping. The skeleton 'person' is mapped without sublabels"),
    ({"person": {"name": "person", "sublabels": {"ear": {"name": "nose"}}}},
     "Invalid mapping. Unknown model sublabel 'ear' of skeleton 'person'"),
    ({"person": {"name": "person", "sublabels": {"nose": {"name": "ear"}}}},
     "Invalid mapping. Unknown task sublabel 'ear' (mapped from model sublabel 'nose' of skeleton 'person')"),
    ({"person": {"name": "person", "sublabels": {"nose": "nose", "left_eye": "nose"}}},
     "Invalid mapping. The task sublabel 'nose' of skeleton 'person' is mapped from both 'nose' and 'left_eye'"),
    ({"car": {"label": "car"}}, "Invalid mapping. The model label 'car' must map to a task label name or an object"),
    ({"car": 3}, "Invalid mapping. The model label 'car' must map to a task label name or an object"),
    (["car"], "Invalid mapping. The mapping must be an object of model label -> task label"),
    ({"person": {"name": "person", "sublabels": ["nose"]}},
     "Invalid mapping. The sublabels of skeleton 'person' must be an object of model sublabel -> task sublabel"),
])
def test_invalid_explicit_mapping_names_the_offender(requested, message):
    task_labels = (CAR, VEHICLE, PERSON, TaskLabel(13, "area", "polygon"), TaskLabel(14, "anything", "any"))
    with pytest.raises(MappingError) as error:
        build_mapping((MODEL_CAR, MODEL_PERSON), task_labels, requested)
    assert str(error.value).startswith(message)


# --- conversion of shapes and tags (4.5, 4.6) ---

@pytest.mark.parametrize("confidence, score", [
    ("0.87", 0.87), (0.5, 0.5), (1, 1.0), ("1e-3", 0.001),
    (None, None), ("high", None), ("nan", None), ("inf", None), (True, None), ([0.5], None),
])
def test_confidence_becomes_a_numeric_score_or_nothing(confidence, score):
    item = {"label": "thing", "type": "rectangle", "points": [1, 2, 3, 4]}
    if confidence is not None:
        item["confidence"] = confidence
    [converted] = convert([item], one_label_mapping(TaskLabel(1, "thing")), FRAME, conv_mask_to_poly=False).shapes
    assert converted.get("score") == score and ("score" in converted) == (score is not None)


def test_shape_types_convert_with_rotation_only_for_rectangles_and_ellipses():
    mapping = one_label_mapping(TaskLabel(1, "thing"))
    cuboid = [float(v) for v in range(16)]
    items = [
        {"label": "thing", "type": "rectangle", "points": [1, 2, 3, 4], "confidence": "0.9"},
        {"label": "thing", "type": "rectangle", "points": [1, 2, 3, 4], "rotation": 30.5},
        {"label": "thing", "type": "ellipse", "points": [10, 10, 14, 7], "rotation": 45},
        {"label": "thing", "type": "polygon", "points": [0, 0, 4, 0, 4, 3], "rotation": 45},
        {"label": "thing", "type": "polyline", "points": [0, 0, 4, 3]},
        {"label": "thing", "type": "points", "points": [7.5, 8.5]},
        {"label": "thing", "type": "cuboid", "points": cuboid},
    ]
    result = convert(items, mapping, FRAME, conv_mask_to_poly=False)
    assert result.tags == [] and result.dropped == []
    assert result.shapes == [
        {**shape(1, "rectangle", [1, 2, 3, 4]), "score": 0.9},
        shape(1, "rectangle", [1, 2, 3, 4], rotation=30.5),
        shape(1, "ellipse", [10, 10, 14, 7], rotation=45),
        shape(1, "polygon", [0, 0, 4, 0, 4, 3]),
        shape(1, "polyline", [0, 0, 4, 3]),
        shape(1, "points", [7.5, 8.5]),
        shape(1, "cuboid", cuboid),
    ]
    assert "rotation" not in result.shapes[3]


def test_group_id_and_outside():
    mapping = one_label_mapping(TaskLabel(1, "thing"))
    items = [{"label": "thing", "type": "points", "points": [1, 1], "group_id": 3, "outside": True},
             {"label": "thing", "type": "points", "points": [2, 2], "group_id": 0}]
    assert convert(items, mapping, FRAME, False).shapes == [
        shape(1, "points", [1, 1], group=3, outside=True), shape(1, "points", [2, 2], group=0)]


def test_tags_in_any_case_become_tags_without_group():
    checked = TaskAttribute(60, "checked", "checkbox", ("false",))
    mapping = one_label_mapping(TaskLabel(2, "thing", "tag", attributes=(checked,)), {"checked": checked})
    items = [{"label": "thing", "type": "tag", "attributes": [{"name": "checked", "value": "true"}]},
             {"label": "thing", "type": "TAG", "group_id": 4},
             {"label": "thing", "type": "Tag"}]
    result = convert(items, mapping, FRAME, False)
    assert result.shapes == []
    assert result.tags == [
        {"frame": FRAME, "label_id": 2, "source": "auto", "group": None,
         "attributes": [{"spec_id": 60, "value": "true"}]},
        {"frame": FRAME, "label_id": 2, "source": "auto", "group": None, "attributes": []},
        {"frame": FRAME, "label_id": 2, "source": "auto", "group": None, "attributes": []},
    ]


def test_unmapped_labels_are_dropped_even_when_malformed():
    # 3.6: a mapping of only person with only car detections yields nothing.
    mapping = build_mapping((LabelSpec("person", "rectangle"), LabelSpec("car", "rectangle")),
                            (TaskLabel(1, "person", "rectangle"), CAR), {"person": "person"})
    items = [{"label": "car", "type": "rectangle", "points": [0, 0, 1, 1]},
             {"label": "dog", "type": "rectangle", "points": "nonsense"}]
    assert convert(items, mapping, FRAME, False) == ([], [], [])


# --- attributes (§4.5.2) ---

@pytest.mark.parametrize("input_type, values, value, kept", [
    ("number", ("0", "150", "1"), "22", True),
    ("number", ("0", "150", "1"), "0", True),
    ("number", ("0", "150", "1"), "150", True),
    ("number", ("0", "150", "1"), "151", False),
    ("number", ("0", "150", "1"), "-1", False),
    ("number", ("0", "150", "1"), "2.5", False),
    ("number", ("0", "150", "1"), "22 years", False),
    ("number", ("0", "150", "1"), "", False),
    ("number", ("1", "21", "5"), "6", True),     # (6 - 1) % 5 == 0
    ("number", ("1", "21", "5"), "5", False),    # (5 - 1) % 5 == 4
    ("number", ("-10", "10", "2"), "-4", True),
    ("checkbox", ("false",), "true", True),
    ("checkbox", ("false",), "false", True),
    ("checkbox", ("false",), "True", False),
    ("checkbox", ("false",), "1", False),
    ("text", ("",), "anything at all", True),
    ("text", ("",), "", True),
    ("select", ("female", "male"), "female", True),
    ("select", ("female", "male"), "male", True),
    ("select", ("female", "male"), "mal", False),     # CVAT's substring check lets this through (§D15)
    ("select", ("female", "male"), "female\nmale", False),
    ("select", ("female", "male"), "Male", False),
    ("radio", ("left", "right"), "right", True),
    ("radio", ("left", "right"), "igh", False),
])
def test_attribute_values_are_checked_against_the_task_attribute(input_type, values, value, kept):
    task_attribute = TaskAttribute(70, "attr", input_type, values)
    mapping = one_label_mapping(TaskLabel(1, "thing", attributes=(task_attribute,)), {"model_attr": task_attribute})
    item = {"label": "thing", "type": "points", "points": [1, 1],
            "attributes": [{"name": "model_attr", "value": value}]}
    result = convert([item], mapping, FRAME, False)
    (converted,) = result.shapes
    if kept:
        assert converted["attributes"] == [{"spec_id": 70, "value": value}] and result.dropped == []
    else:
        assert converted["attributes"] == []
        (line,) = result.dropped
        assert line.startswith(f"item 0 ('thing'): attribute 'model_attr' value {value!r} dropped: ")


def test_dropped_value_says_why():
    gender = TaskAttribute(71, "gender", "select", ("female", "male"))
    mapping = one_label_mapping(TaskLabel(1, "thing", attributes=(gender,)), {"gender": gender})
    item = {"label": "thing", "type": "points", "points": [1, 1], "attributes": [{"name": "gender", "value": "mal"}]}
    assert convert([item], mapping, FRAME, False).dropped == [
        "item 0 ('thing'): attribute 'gender' value 'mal' dropped: not one of female, male"]


def test_unmapped_attributes_are_dropped_silently():
    mapping = one_label_mapping(TaskLabel(1, "thing", attributes=(COLOR,)), {"color": COLOR})
    item = {"label": "thing", "type": "points", "points": [1, 1],
            "attributes": [{"name": "speed", "value": "3"}, {"name": "color", "value": "blue"}]}
    result = convert([item], mapping, FRAME, False)
    assert result.shapes[0]["attributes"] == [{"spec_id": 40, "value": "blue"}] and result.dropped == []


# --- masks (§4.6, §4.7) ---

MASK_MAPPING = one_label_mapping(TaskLabel(3, "thing", "mask"))


def test_mask_becomes_cvat_rle_worked_example():
    # Without conv_mask_to_poly the item's polygon plays no part.
    item = {"label": "thing", "type": "mask", "points": [0, 0, 2, 0, 2, 3],
            "mask": [255, 255, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 0, 0, 2, 3]}
    assert convert([item], MASK_MAPPING, FRAME, False).shapes == [shape(3, "mask", [0, 2, 2, 2, 2, 2, 2, 0, 0, 2, 3])]


def test_mixed_mask_values_are_binarised():
    # 2x2 box at (5, 6)-(6, 7): pixels 0, 1, 255, 0 -> background 1, object 2, background 1 (§D19).
    item = {"label": "thing", "type": "mask", "mask": [0, 1, 255, 0, 5, 6, 6, 7]}
    assert convert([item], MASK_MAPPING, FRAME, False).shapes[0]["points"] == [1, 2, 1, 5, 6, 6, 7]


def test_mask_with_conv_mask_to_poly_and_a_polygon_gives_that_polygon():
    item = {"label": "thing", "type": "mask", "points": [0, 0, 2, 0, 2, 3], "group_id": 2,
            "mask": [255, 255, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 0, 0, 2, 3]}
    assert convert([item], MASK_MAPPING, FRAME, True).shapes == [shape(3, "polygon", [0, 0, 2, 0, 2, 3], group=2)]


def corners(points):
    return sorted(zip(points[0::2], points[1::2]))


def test_mask_with_conv_mask_to_poly_without_polygon_is_traced():
    # A 6x5 box at (10, 20); the object is columns 1-4 of rows 1-3, i.e. x 11..14, y 21..23 (§D16).
    rows = [[0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0]]
    item = {"label": "thing", "type": "mask", "points": [], "mask": sum(rows, []) + [10, 20, 15, 24]}
    (polygon,) = convert([item], MASK_MAPPING, FRAME, True).shapes
    assert polygon == shape(3, "polygon", polygon["points"])
    assert corners(polygon["points"]) == [(11, 21), (11, 23), (14, 21), (14, 23)]


def test_mask_of_two_blobs_gives_two_polygons():
    # 7x3 box at the origin: a 2x3 blob at x 0..1 and a 3x3 blob at x 4..6.
    rows = [[255, 255, 0, 0, 255, 255, 255]] * 3
    kind = TaskAttribute(71, "kind", "text", ())
    mapping = one_label_mapping(TaskLabel(3, "thing", "mask", attributes=(kind,)), {"kind": kind})
    item = {"label": "thing", "type": "mask", "mask": sum(rows, []) + [0, 0, 6, 2],
            "attributes": [{"name": "kind", "value": "x"}]}
    shapes = convert([item], mapping, FRAME, True).shapes
    assert sorted(corners(s["points"]) for s in shapes) == [[(0, 0), (0, 2), (1, 0), (1, 2)],
                                                            [(4, 0), (4, 2), (6, 0), (6, 2)]]
    assert all(s["type"] == "polygon" and s["attributes"] == [{"spec_id": 71, "value": "x"}] for s in shapes)


def test_mask_too_small_for_a_polygon_is_reported():
    item = {"label": "thing", "type": "mask", "mask": [255, 4, 4, 4, 4]}
    result = convert([item], MASK_MAPPING, FRAME, True)
    assert result.shapes == []
    assert result.dropped == ["item 0 ('thing'): the mask has no outline of 3 or more points to make a polygon"]


# --- skeletons (§4.5.3, §4.5.4) ---

SKELETON_MAPPING = build_mapping((MODEL_PERSON,), (PERSON,), None)


def element(label, x, y, **fields):
    return {"label": label, "type": "points", "points": [x, y], **fields}


def test_skeleton_elements_are_mapped_and_a_missing_sublabel_is_outside_at_the_centroid():
    item = {"label": "person", "type": "skeleton",
            "elements": [element("left_eye", 20, 40), element("tail", 99, 99), element("nose", 10, 20)]}
    (skeleton,) = convert([item], SKELETON_MAPPING, FRAME, False).shapes
    # tail has no task sublabel; right_eye has no element: outside at ((10 + 20) / 2, (20 + 40) / 2).
    assert skeleton == shape(30, "skeleton", [], elements=[
        shape(31, "points", [10, 20]),
        shape(32, "points", [20, 40]),
        shape(33, "points", [15.0, 30.0], outside=True),
    ])


def test_skeleton_centroid_counts_outside_elements():
    item = {"label": "person", "type": "skeleton",
            "elements": [element("nose", 0, 0, outside=True), element("left_eye", 30, 60)]}
    (skeleton,) = convert([item], SKELETON_MAPPING, FRAME, False).shapes
    assert skeleton["elements"][2] == shape(33, "points", [15.0, 30.0], outside=True)


@pytest.mark.parametrize("elements", [
    [element("nose", 1, 1, outside=True), element("left_eye", 2, 2, outside=True)],
    [element("tail", 1, 1)],
    [],
])
def test_skeleton_with_every_element_outside_is_dropped(elements):
    item = {"label": "person", "type": "skeleton", "elements": elements}
    assert convert([item], SKELETON_MAPPING, FRAME, False) == ([], [], [])


# --- malformed function output ---

RECT_MAPPING = {"thing": LabelMapping(TaskLabel(1, "thing"), {"a": TaskAttribute(70, "a", "text", ())}, {})}


@pytest.mark.parametrize("items, message", [
    ({"label": "thing"}, "a detector must return a list of items, got dict"),
    (["thing"], "item 0: expected an object with a string 'label'"),
    ([{"type": "rectangle", "points": [0, 0, 1, 1]}], "item 0: expected an object with a string 'label'"),
    ([{"label": "thing", "type": "points", "points": [0, 0]}, {"label": "thing", "type": "rectangle", "points": [1]}],
     "item 1 ('thing'): rectangle points need exactly 4 coordinates, got 1"),
])
def test_malformed_replies_are_refused(items, message):
    with pytest.raises(BadFunctionOutput) as error:
        convert(items, RECT_MAPPING, FRAME, False)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("fields, message", [
    ({"points": [0, 0, 1, 1]}, "'type' must be a string"),
    ({"type": "blob"}, "unknown type 'blob'"),
    ({"type": "rectangle", "points": [0, 0, 1]}, "rectangle points need exactly 4 coordinates, got 3"),
    ({"type": "rectangle"}, "rectangle points need exactly 4 coordinates, got 0"),
    ({"type": "ellipse", "points": [0, 0, 1, 1, 2, 2]}, "ellipse points need exactly 4 coordinates, got 6"),
    ({"type": "polygon", "points": [0, 0, 1, 1]}, "polygon points need at least 6 coordinates, got 4"),
    ({"type": "points", "points": [0, 0, 1]}, "'points' must hold x, y pairs, got 3 numbers"),
    ({"type": "points", "points": [0, "1"]}, "'points' must be a flat list of finite numbers"),
    ({"type": "points", "points": [0, float("nan")]}, "'points' must be a flat list of finite numbers"),
    ({"type": "points", "points": "0,0"}, "'points' must be a flat list of finite numbers"),
    ({"type": "rectangle", "points": [0, 0, 1, 1], "rotation": "30"}, "'rotation' must be a number of degrees"),
    ({"type": "points", "points": [0, 0], "group_id": -1}, "'group_id' must be a non-negative integer, got -1"),
    ({"type": "points", "points": [0, 0], "group_id": True}, "'group_id' must be a non-negative integer, got True"),
    ({"type": "points", "points": [0, 0], "outside": "yes"}, "'outside' must be true or false, got 'yes'"),
    ({"type": "points", "points": [0, 0], "attributes": {"a": "x"}}, "'attributes' must be a list"),
    ({"type": "points", "points": [0, 0], "attributes": [{"name": "a", "value": 3}]}, "each attribute must be"),
    ({"type": "points", "points": [0, 0], "attributes": [{"name": "a", "value": "x"}, {"name": "a", "value": "y"}]},
     "attribute 'a' appears twice"),
    ({"type": "mask", "mask": [255, 0, 255, 0, 0, 1, 1]}, "mask box 2x2 needs 4 values, got 3"),
    ({"type": "mask"}, "'mask' must be a flat list of numbers"),
    ({"type": "mask", "mask": [255, "0", 0, 0, 1, 0]}, "'mask' must be a flat list of numbers"),
    ({"type": "mask", "mask": [255, -1, 0, -1, 0]}, "the mask box must be 4 non-negative integers"),
    ({"type": "mask", "mask": [255, 0.5, 0, 0.5, 0]}, "the mask box must be 4 non-negative integers"),
    ({"type": "mask", "mask": [255, 3, 3, 2, 3]}, "mask box (3, 3, 2, 3) is empty"),
    ({"type": "mask", "points": [0, 0, 1, 1], "mask": [255, 0, 0, 0, 0]}, "polygon points need at least 6 coordinates"),
])
def test_malformed_items_are_refused_with_the_reason(fields, message):
    with pytest.raises(BadFunctionOutput) as error:
        convert([{"label": "thing", **fields}], RECT_MAPPING, FRAME, False)
    assert str(error.value).startswith(f"item 0 ('thing'): {message}")


@pytest.mark.parametrize("elements, message", [
    ("nose", "item 0 ('person'): 'elements' must be a list"),
    ([["nose"]], "item 0 ('person') element 0: expected an object with a string 'label'"),
    ([{"label": "nose", "type": "rectangle", "points": [0, 0, 1, 1]}],
     "item 0 ('person') element 0 ('nose'): skeleton elements must be of type points, got 'rectangle'"),
    ([element("nose", 1, 1), {"label": "left_eye", "type": "points", "points": [1, 1, 2, 2]}],
     "item 0 ('person') element 1 ('left_eye'): a skeleton element is one point, got 4 numbers"),
    ([element("nose", 1, 1), element("nose", 2, 2)],
     "item 0 ('person') element 1 ('nose'): the skeleton has this element twice"),
])
def test_malformed_skeletons_are_refused(elements, message):
    with pytest.raises(BadFunctionOutput) as error:
        convert([{"label": "person", "type": "skeleton", "elements": elements}], SKELETON_MAPPING, FRAME, False)
    assert str(error.value).startswith(message)


# --- the face function's real output ---

def test_face_function_output_against_task_labels_built_from_its_spec():
    meta = FunctionMeta.from_nuclio(yaml.safe_load((FACE_FUNCTION / "function.yaml").read_text()))
    (face_spec,) = meta.labels
    face = TaskLabel(7, face_spec.name, face_spec.type, attributes=tuple(
        TaskAttribute(70 + index, attribute.name, attribute.input_type, attribute.values)
        for index, attribute in enumerate(face_spec.attributes)))
    mapping = build_mapping(meta.labels, (face,), None)
    assert set(mapping) == {"face"}
    items = [
        {"label": "face", "type": "rectangle", "points": [180.1, 57.5, 269.2, 180.4], "confidence": "0.6065",
         "attributes": [{"name": "age", "value": "22"}, {"name": "gender", "value": "female"},
                        {"name": "emotion", "value": "happy"}]},
        {"label": "face", "type": "rectangle", "points": [1, 2, 30, 40], "confidence": "0.51",
         "attributes": [{"name": "age", "value": "151"}, {"name": "gender", "value": "mal"},
                        {"name": "emotion", "value": "sad"}]},
    ]
    result = convert(items, mapping, 3, conv_mask_to_poly=False)
    base = {"frame": 3, "label_id": 7, "source": "auto", "type": "rectangle", "rotation": 0,
            "occluded": False, "outside": False, "z_order": 0, "group": None}
    assert result.tags == []
    assert result.shapes == [
        {**base, "points": [180.1, 57.5, 269.2, 180.4], "score": 0.6065,
         "attributes": [{"spec_id": 70, "value": "22"}, {"spec_id": 71, "value": "female"},
                        {"spec_id": 72, "value": "happy"}]},
        {**base, "points": [1, 2, 30, 40], "score": 0.51, "attributes": [{"spec_id": 72, "value": "sad"}]},
    ]
    assert result.dropped == [
        "item 1 ('face'): attribute 'age' value '151' dropped: not an integer in [0, 150] in steps of 1",
        "item 1 ('face'): attribute 'gender' value 'mal' dropped: not one of female, male",
    ]
