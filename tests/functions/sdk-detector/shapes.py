"""A cvat-sdk detection function written only with cvat_sdk's helpers, as a user would write one.

Its answer depends only on the image size, so tests know it exactly: in a W x H image,
- ``car`` rectangles: (10, 10, 50, 40) score 0.9 with colour "red", count 3 and parked; and
  (W/2, H/2, W/2 + 20, H/2 + 10) score 0.4 with colour "blue";
- ``blob``: a 12 x 6 mask at (60, 20) (x2 and y2 exclusive), score 0.8; with conv_mask_to_poly a
  polygon around the same pixels;
- ``person``: a skeleton with ``head`` at (30, 50) and ``foot`` at (30, 80), foot occluded;
- ``scene``: a tag with ``weather`` "sunny".
Objects scoring below ``conf_threshold`` are left out (the tag and skeleton have no score).
``create(shift=N)`` moves every shape N pixels right.
"""

import cvat_sdk.auto_annotation as cvataa
import numpy as np
from cvat_sdk.attributes import number_attribute_values
from cvat_sdk.masks import encode_mask
from cvat_sdk.models import AttributeValRequest


class ShapesFunction:
    def __init__(self, shift: int):
        self.shift = shift
        self.spec = cvataa.DetectionFunctionSpec(labels=[
            cvataa.label_spec("car", 0, type="rectangle", attributes=[
                cvataa.select_attribute_spec("colour", 0, ["red", "blue"]),
                cvataa.number_attribute_spec("count", 1, number_attribute_values(0, 10)),
                cvataa.checkbox_attribute_spec("parked", 2),
            ]),
            cvataa.label_spec("blob", 1, type="mask"),
            cvataa.skeleton_label_spec("person", 2, [
                cvataa.keypoint_spec("head", 0),
                cvataa.keypoint_spec("foot", 1),
            ]),
            cvataa.label_spec("scene", 3, type="tag", attributes=[
                cvataa.radio_attribute_spec("weather", 0, ["sunny", "rainy"]),
            ]),
        ])

    def detect(self, context, image):
        width, height = image.size
        s = self.shift
        threshold = context.conf_threshold or 0.0
        results = []
        if threshold <= 0.9:
            results.append(cvataa.rectangle(0, [10 + s, 10, 50 + s, 40], score=0.9, attributes=[
                AttributeValRequest(spec_id=0, value="red"), AttributeValRequest(spec_id=1, value="3"),
                AttributeValRequest(spec_id=2, value="true")]))
        if threshold <= 0.4:
            results.append(cvataa.rectangle(0, [width / 2 + s, height / 2, width / 2 + 20 + s, height / 2 + 10],
                                            score=0.4, attributes=[AttributeValRequest(spec_id=0, value="blue")]))
        if threshold <= 0.8:
            bitmap = np.zeros((height, width), dtype=bool)
            bitmap[20:26, 60 + s:72 + s] = True
            if context.conv_mask_to_poly:
                results.append(cvataa.polygon(1, [60 + s, 20, 71 + s, 20, 71 + s, 25, 60 + s, 25], score=0.8))
            else:
                results.append(cvataa.mask(1, encode_mask(bitmap), score=0.8))
        results.append(cvataa.skeleton(2, [
            cvataa.keypoint(0, [30 + s, 50]),
            cvataa.keypoint(1, [30 + s, 80], occluded=True),
        ]))
        results.append(cvataa.tag(3, attributes=[AttributeValRequest(spec_id=0, value="sunny")]))
        return results


def create(shift: int = 0) -> ShapesFunction:
    return ShapesFunction(shift)
