"""The task's annotations as files: COCO detection JSON and CVAT for images 1.1 XML, tracks
included on every frame they cover (``dispatcher.tracks``)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import PurePath

import numpy as np

from dispatcher import tracks
from dispatcher.store.coco_categories import CATEGORY_IDS, coco_name
from dispatcher.store.errors import InvalidInput
from dispatcher.store.rows import iso
from serverless.common import masks


def coco(task: dict, meta: list[dict], data: dict, coco_ids: bool = False) -> dict:
    """COCO detection JSON: rectangles, polygons and masks (an uncompressed COCO RLE, column-major
    over the whole image, as pycocotools' frPyObjects reads it), the shapes of tracks on every
    frame they are visible with ``track_id`` (0, 1, ... in track order) and ``keyframe`` among
    the attributes, and each shape's ``score`` when it has one (a detector's confidence). Other
    shapes and tags have no place in it and are left out.

    Categories are numbered 1, 2, ... in the task's label order; with ``coco_ids``, when every
    label is one of COCO's categories (COCO's, darknet's or underscored spellings), COCO's own
    ids and names, and images numbered by their file names where all are COCO's (``000000000139.jpg``
    is 139), so that pycocotools scores the export against COCO's ground truth as it is."""
    attribute_names = _attribute_names(task["labels"])
    if coco_ids:
        category_of, categories = _coco_categories(task["labels"])
    else:
        category_of = {label["id"]: index for index, label in enumerate(task["labels"], 1)}
        categories = [{"id": category_of[label["id"]], "name": label["name"], "supercategory": ""}
                      for label in task["labels"]]
    image_ids = _coco_image_ids(meta) if coco_ids else list(range(1, len(meta) + 1))
    coco_annotations = []

    def add(shape: dict, label_id: int, extra: dict) -> None:
        frame = meta[shape["frame"]]
        geometry = _coco_geometry(shape, frame["width"], frame["height"])
        if geometry is None:
            return
        segmentation, bbox, area = geometry
        annotation = {
            "id": len(coco_annotations) + 1, "image_id": image_ids[shape["frame"]],
            "category_id": category_of[label_id], "segmentation": segmentation, "area": area,
            "bbox": bbox, "iscrowd": 0,
            "attributes": {"occluded": shape["occluded"], "rotation": shape["rotation"], **extra,
                           **{attribute_names[a["spec_id"]]: a["value"] for a in shape["attributes"]}},
        }
        if shape.get("score") is not None:
            annotation["score"] = shape["score"]
        coco_annotations.append(annotation)

    for shape in data["shapes"]:
        add(shape, shape["label_id"], {})
    for track_id, track in enumerate(data["tracks"]):
        track_attributes = {attribute_names[a["spec_id"]]: a["value"] for a in track["attributes"]}
        for shape in tracks.frames_of(track, len(meta) - 1):
            if not shape["outside"]:
                add(shape, track["label_id"], {"track_id": track_id, "keyframe": shape["keyframe"],
                                               **track_attributes})
    return {
        "info": {"description": task["name"], "date_created": task["created_date"]},
        "licenses": [],
        "images": [{"id": image_ids[frame], "file_name": image["name"], "width": image["width"],
                    "height": image["height"]} for frame, image in enumerate(meta)],
        "categories": categories,
        "annotations": coco_annotations,
    }


def _coco_categories(labels: list[dict]) -> tuple[dict[int, int], list[dict]]:
    """Label id -> COCO category id, and COCO's categories the labels name; InvalidInput naming the
    labels that are not COCO's."""
    names = {label["id"]: coco_name(label["name"]) for label in labels}
    strangers = [label["name"] for label in labels if names[label["id"]] is None]
    if strangers:
        raise InvalidInput(f"category_ids: coco needs every label to be a COCO category; these are not: "
                           f"{', '.join(strangers)}")
    used = sorted({(CATEGORY_IDS[name], name) for name in names.values()})
    return ({label_id: CATEGORY_IDS[name] for label_id, name in names.items()},
            [{"id": category, "name": name, "supercategory": ""} for category, name in used])


def _coco_image_ids(meta: list[dict]) -> list[int]:
    """Each frame's COCO image id from its file name when every frame has one (and no two the same),
    else the frame number + 1."""
    stems = [PurePath(image["name"]).stem for image in meta]
    if stems and all(stem.isdigit() for stem in stems) and len({int(stem) for stem in stems}) == len(stems):
        return [int(stem) for stem in stems]
    return list(range(1, len(meta) + 1))


def cvat_xml(task: dict, meta: list[dict], data: dict) -> str:
    """CVAT for images 1.1, and tracks as CVAT's video layout writes them (``<track>`` elements
    after the images, a shape per frame with ``keyframe`` and ``outside``), which CVAT's and
    datumaro's readers of this format both take."""
    names = {label["id"]: label["name"] for top in task["labels"] for label in (top, *top["sublabels"])}
    attribute_names = _attribute_names(task["labels"])

    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    xml_meta = ET.SubElement(root, "meta")
    xml_task = ET.SubElement(xml_meta, "task")
    for key, value in (("id", task["id"]), ("name", task["name"]), ("size", task["size"]), ("mode", "annotation"),
                       ("overlap", 0), ("bugtracker", ""), ("created", task["created_date"]),
                       ("updated", task["created_date"]), ("subset", "default"), ("start_frame", 0),
                       ("stop_frame", max(task["size"] - 1, 0)), ("frame_filter", "")):
        ET.SubElement(xml_task, key).text = str(value)
    segments = ET.SubElement(xml_task, "segments")
    for job in task["jobs"]:
        segment = ET.SubElement(segments, "segment")
        for key, value in (("id", job["id"]), ("start", job["start_frame"]), ("stop", job["stop_frame"])):
            ET.SubElement(segment, key).text = str(value)
    xml_labels = ET.SubElement(xml_task, "labels")
    for top in task["labels"]:
        # Sublabels follow their skeleton as labels of their own, naming it as <parent>.
        for label in (top, *top["sublabels"]):
            xml_label = ET.SubElement(xml_labels, "label")
            ET.SubElement(xml_label, "name").text = label["name"]
            ET.SubElement(xml_label, "type").text = label["type"]
            xml_attributes = ET.SubElement(xml_label, "attributes")
            for attribute in label["attributes"]:
                xml_attribute = ET.SubElement(xml_attributes, "attribute")
                for key in ("name", "mutable", "input_type", "default_value", "values"):
                    value = attribute[key]
                    ET.SubElement(xml_attribute, key).text = (
                        "\n".join(value) if key == "values" else str(value))  # mutable: True/False, as CVAT
            if label is not top:
                ET.SubElement(xml_label, "parent").text = top["name"]
            if label["type"] == "skeleton":
                ET.SubElement(xml_label, "svg").text = label["svg"]
    if data["tracks"]:  # readers size track shapes by it, as in CVAT's video layout: the first frame's
        original_size = ET.SubElement(xml_task, "original_size")
        ET.SubElement(original_size, "width").text = str(meta[0]["width"])
        ET.SubElement(original_size, "height").text = str(meta[0]["height"])
    ET.SubElement(xml_meta, "dumped").text = iso(datetime.now(UTC))

    # Per image as CVAT writes it: shapes from the lowest z_order up, then tags.
    by_frame: dict[int, list[tuple[str, dict]]] = {}
    for kind, item in [*(("shapes", shape) for shape in sorted(data["shapes"], key=lambda s: s["z_order"])),
                       *(("tags", tag) for tag in data["tags"])]:
        by_frame.setdefault(item["frame"], []).append((kind, item))
    for frame, image in enumerate(meta):
        xml_image = ET.SubElement(root, "image", id=str(frame), name=image["name"], width=str(image["width"]),
                                  height=str(image["height"]))
        for kind, item in by_frame.get(frame, []):
            if kind == "tags":
                element = ET.SubElement(xml_image, "tag", label=names[item["label_id"]], source=item["source"])
                if item["group"]:
                    element.set("group_id", str(item["group"]))
            else:
                element = _xml_shape(xml_image, item, names, attribute_names)
            _xml_attributes(element, item, attribute_names)
    for track_id, track in enumerate(data["tracks"]):
        xml_track = ET.SubElement(root, "track", id=str(track_id), label=names[track["label_id"]],
                                  source=track["source"])
        if track["group"]:
            xml_track.set("group_id", str(track["group"]))
        for shape in tracks.frames_of(track, len(meta) - 1):
            element = _xml_shape(xml_track, {**shape, "label_id": track["label_id"], "source": track["source"],
                                             "group": None}, names, attribute_names)
            for key in ("label", "source"):  # the track's, not each shape's
                del element.attrib[key]
            element.attrib.update(frame=str(shape["frame"]), keyframe=str(int(shape["keyframe"])),
                                  outside=str(int(shape["outside"])))
            _xml_attributes(element, {"attributes": [*track["attributes"], *shape["attributes"]]},
                            attribute_names)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _mask_crop(points: list[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """CVAT's mask RLE -> (boolean crop, inclusive box)."""
    *runs, xtl, ytl, xbr, ybr = points
    pixels = np.repeat(np.arange(len(runs)) % 2 == 1, runs)  # runs alternate background, object
    return pixels.reshape(ybr - ytl + 1, xbr - xtl + 1), (xtl, ytl, xbr, ybr)


def _rectangle_corners(points: list[float], rotation: float) -> list[float]:
    """A rectangle's corners clockwise from the top left, turned ``rotation`` degrees clockwise
    about its centre (y points down)."""
    xtl, ytl, xbr, ybr = points
    cx, cy = (xtl + xbr) / 2, (ytl + ybr) / 2
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    corners = []
    for x, y in ((xtl, ytl), (xbr, ytl), (xbr, ybr), (xtl, ybr)):
        corners += [cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos]
    return corners


def _polygon_area(points: list[float]) -> float:
    xs, ys = np.asarray(points[0::2], float), np.asarray(points[1::2], float)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _bbox(points: list[float]) -> list[float]:
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _coco_geometry(shape: dict, width: int, height: int) -> tuple[list | dict, list[float], float] | None:
    """(segmentation, bbox xywh, area) of a shape COCO detection can hold, else None."""
    if shape["type"] == "rectangle":
        xtl, ytl, xbr, ybr = shape["points"]
        if not shape["rotation"]:
            return [], [xtl, ytl, xbr - xtl, ybr - ytl], float((xbr - xtl) * (ybr - ytl))
        corners = _rectangle_corners(shape["points"], shape["rotation"])
        return [corners], _bbox(corners), float((xbr - xtl) * (ybr - ytl))
    if shape["type"] == "polygon":
        return [shape["points"]], _bbox(shape["points"]), _polygon_area(shape["points"])
    if shape["type"] == "mask":
        crop, (xtl, ytl, xbr, ybr) = _mask_crop(shape["points"])
        image = np.zeros((height, width), bool)
        visible = crop[:max(height - ytl, 0), :max(width - xtl, 0)]  # a box past the image edge is cut
        image[ytl:ytl + visible.shape[0], xtl:xtl + visible.shape[1]] = visible
        box = masks.mask_box(image)
        if box is None:
            return None
        x0, y0, x1, y1 = box
        # COCO RLE runs go down the columns (Fortran order) and, as CVAT's, start with background.
        segmentation = {"counts": masks.rle_encode(image.ravel(order="F")), "size": [height, width]}
        return segmentation, [x0, y0, x1 - x0 + 1, y1 - y0 + 1], float(image.sum())
    return None


def _number(value) -> str:
    return f"{value:.2f}"


def _xml_shape(xml_image: ET.Element, shape: dict, names: dict[int, str], attribute_names: dict[int, str]):
    """One shape as CVAT for images 1.1 writes it."""
    shape_type, points = shape["type"], shape["points"]
    fields = {"label": names[shape["label_id"]], "source": shape["source"],
              "occluded": str(int(shape["occluded"]))}
    if shape_type == "rectangle":
        tag = "box"
        fields.update(zip(("xtl", "ytl", "xbr", "ybr"), map(_number, points)))
    elif shape_type == "ellipse":  # CVAT keeps the centre and one corner of the bounding box
        tag = "ellipse"
        cx, cy, right, top = points
        fields.update(cx=_number(cx), cy=_number(cy), rx=_number(right - cx), ry=_number(cy - top))
    elif shape_type == "mask":  # the run lengths alone; the box as left, top, width, height
        tag = "mask"
        *runs, xtl, ytl, xbr, ybr = points
        fields.update(rle=", ".join(map(str, runs)), left=str(xtl), top=str(ytl), width=str(xbr - xtl + 1),
                      height=str(ybr - ytl + 1))
    elif shape_type == "cuboid":
        tag = "cuboid"
        keys = ("xtl1", "ytl1", "xbl1", "ybl1", "xtr1", "ytr1", "xbr1", "ybr1",
                "xtl2", "ytl2", "xbl2", "ybl2", "xtr2", "ytr2", "xbr2", "ybr2")
        fields.update(zip(keys, map(_number, points)))
    elif shape_type == "skeleton":
        tag = "skeleton"
        del fields["occluded"]
    else:  # polygon, polyline, points
        tag = shape_type
        fields["points"] = ";".join(f"{_number(x)},{_number(y)}" for x, y in zip(points[0::2], points[1::2]))
    fields["z_order"] = str(shape["z_order"])
    if shape["rotation"] and shape_type in ("rectangle", "ellipse"):
        fields["rotation"] = _number(shape["rotation"])
    if shape["group"]:
        fields["group_id"] = str(shape["group"])
    element = ET.SubElement(xml_image, tag, fields)
    for part in shape.get("elements", []):
        point = ET.SubElement(element, "points", label=names[part["label_id"]], source=part["source"],
                              outside=str(int(part["outside"])), occluded=str(int(part["occluded"])),
                              points=f"{_number(part['points'][0])},{_number(part['points'][1])}")
        _xml_attributes(point, part, attribute_names)
    return element


def _xml_attributes(element: ET.Element, item: dict, attribute_names: dict[int, str]) -> None:
    for attribute in item["attributes"]:
        ET.SubElement(element, "attribute", name=attribute_names[attribute["spec_id"]]).text = attribute["value"]


def _attribute_names(task_labels: list[dict]) -> dict[int, str]:
    return {attribute["id"]: attribute["name"] for top in task_labels for label in (top, *top["sublabels"])
            for attribute in label["attributes"]}
