import json

import pytest
import yaml

from serverless.common.metadata import FunctionMeta, MetadataError, annotation_strings, parse_bool, parse_label_spec

from helpers import FACE_FUNCTION


def config(spec_text="[]", **annotations):
    return {"metadata": {"name": "f", "annotations": {"type": "detector", "spec": spec_text, **annotations}},
            "spec": {"description": "d"}}


def test_face_function_metadata():
    meta = FunctionMeta.from_nuclio(yaml.safe_load((FACE_FUNCTION / "function.yaml").read_text()))
    assert (meta.id, meta.kind, meta.name) == ("openvino-omz-intel-face-detection-0205", "detector",
                                               "Attributed face detection")
    (face,) = meta.labels
    assert (face.name, face.type, face.id) == ("face", "rectangle", 0)
    attributes = {a.name: a for a in face.attributes}
    assert attributes["age"].input_type == "number" and attributes["age"].values == ("0", "150", "1")
    assert attributes["gender"].values == ("female", "male")
    assert attributes["emotion"].values == ("neutral", "happy", "sad", "surprise", "anger")


def test_annotations_become_strings_like_the_dashboard():
    assert annotation_strings({"version": 2, "startswith_box": True, "x": False, "spec": None}) == {
        "version": "2", "startswith_box": "true", "x": "false", "spec": ""}


def test_interactor_fields_and_strict_booleans():
    meta = FunctionMeta.from_nuclio(config(type="interactor", version=2, min_pos_points=4, startswith_box="false"))
    assert (meta.kind, meta.version, meta.min_pos_points, meta.min_neg_points) == ("interactor", 2, 4, -1)
    assert meta.startswith_box is False  # CVAT reads "false" as true (its defect, §D2)
    assert parse_bool("YES", "x") is True and parse_bool("0", "x") is False
    with pytest.raises(MetadataError, match=r"metadata.annotations.startswith_box: must be true or false"):
        FunctionMeta.from_nuclio(config(startswith_box="maybe"))


@pytest.mark.parametrize("cfg, field", [
    ({"metadata": {"annotations": {"type": "detector"}}, "spec": {"description": "d"}}, "metadata.name"),
    ({"metadata": {"name": "bad name!", "annotations": {"type": "detector"}}, "spec": {"description": "d"}},
     "metadata.name"),
    ({"metadata": {"name": "f", "annotations": {"type": "detector"}}, "spec": {}}, "spec.description"),
    (config(type="car-bicycle-person-detector"), "metadata.annotations.type"),
    ({"metadata": {"name": "f"}, "spec": {"description": "d"}}, "metadata.annotations.type"),
    (config(spec_text="[{"), "metadata.annotations.spec: not valid JSON"),
    (config(version="two"), "metadata.annotations.version"),
    (config(supported_shape_types="rectangle,blob"), "metadata.annotations.supported_shape_types"),
])
def test_invalid_function_metadata_names_the_field(cfg, field):
    with pytest.raises(MetadataError) as error:
        FunctionMeta.from_nuclio(cfg)
    assert str(error.value).startswith(field)


@pytest.mark.parametrize("labels, message", [
    ([{"name": "car"}, {"name": "car"}], "label 'car' appears twice"),
    ([{"name": "car", "type": "blob"}], "type: must be one of"),
    ([{"id": 0}], "name: required"),
    ([{"name": "car", "attributes": [{"name": "a", "input_type": "text"}, {"name": "a", "input_type": "text"}]}],
     "attribute 'a' appears twice"),
    ([{"name": "car", "attributes": [{"name": "a", "input_type": "slider"}]}], "input_type: must be one of"),
    ([{"name": "car", "attributes": [{"name": "a", "input_type": "number", "values": ["0", "10"]}]}],
     "needs [min, max, step]"),
    ([{"name": "car", "attributes": [{"name": "a", "input_type": "number", "values": ["5", "1", "1"]}]}],
     "min <= max"),
    ([{"name": "car", "attributes": [{"name": "a", "input_type": "select", "values": []}]}], "at least one value"),
    ([{"name": "pose", "type": "skeleton", "sublabels": [{"name": "nose", "type": "points"}]}], "svg: required"),
    ([{"name": "pose", "type": "skeleton", "svg": "<line/>", "sublabels": [{"name": "nose", "type": "mask"}]}],
     "sublabels must be points"),
    ([{"name": "car", "sublabels": [{"name": "wheel", "type": "points"}]}], "only skeleton labels"),
])
def test_invalid_label_specs(labels, message):
    with pytest.raises(MetadataError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        parse_label_spec(json.dumps(labels))
    assert str(error.value).startswith("metadata.annotations.spec")


def test_label_spec_defaults_and_skeletons():
    assert parse_label_spec("") == ()
    (any_label, old, pose) = parse_label_spec(json.dumps([
        {"name": "car"},
        {"name": "thing", "type": "unknown"},
        {"name": "pose", "type": "skeleton", "svg": "<line/>",
         "sublabels": [{"name": "nose", "type": "points"}, {"name": "tail", "type": "points"}]},
    ]))
    assert any_label.type == "any" and old.type == "any"
    assert [s.name for s in pose.sublabels] == ["nose", "tail"] and pose.svg == "<line/>"


def test_max_batch_is_ours_for_detectors_only():
    assert FunctionMeta.from_nuclio(config()).max_batch == 1  # CVAT's one frame per call
    assert FunctionMeta.from_nuclio(config(max_batch="16")).max_batch == 16
    face = FunctionMeta.from_nuclio(yaml.safe_load((FACE_FUNCTION / "function.yaml").read_text()))
    assert face.max_batch == 16
    with pytest.raises(MetadataError, match=r"metadata.annotations.max_batch: must be 1 or more, got 0"):
        FunctionMeta.from_nuclio(config(max_batch="0"))
    with pytest.raises(MetadataError, match=r"max_batch: only detectors take batches, not interactors"):
        FunctionMeta.from_nuclio(config(type="interactor", max_batch="4"))
