"""A cvat-sdk tracking function: follows a rectangle by template matching (OpenCV), a real if
simple tracker; the state is the template and the box size."""

import cv2
import cvat_sdk.auto_annotation as cvataa
import numpy as np

spec = cvataa.TrackingFunctionSpec(supported_shape_types={"rectangle"})


def preprocess_image(context, image):
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)


def init_tracking_state(context, pp_image, shape):
    x1, y1, x2, y2 = (int(round(v)) for v in shape.points)
    return {"template": pp_image[y1:y2, x1:x2].copy(), "size": (x2 - x1, y2 - y1)}


def track(context, pp_image, state):
    scores = cv2.matchTemplate(pp_image, state["template"], cv2.TM_CCOEFF_NORMED)
    _, best, _, (x, y) = cv2.minMaxLoc(scores)
    if best < 0.5:
        return None
    width, height = state["size"]
    return cvataa.TrackableShape(type="rectangle", points=[x, y, x + width, y + height])
