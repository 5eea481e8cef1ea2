"""CVAT 2.70+'s ``roi``: run a function on a region of the frame (docs/wire-format.md §9.2).

The region is ``[xtl, ytl, xbr, ybr]`` in frame pixels, right and bottom exclusive. The function
sees only the crop, re-encoded in the frame's own format; detector shapes come back shifted into
frame coordinates, interactor clicks go in shifted into the crop, and interactor replies come back
pasted or shifted into the frame.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from dispatcher.converter import is_number
from serverless.common.handler import BadRequest

Region = tuple[int, int, int, int]


class RoiError(ValueError):
    """The ``roi`` CVAT refuses with 400; the message is CVAT's own."""


def parse(value) -> Region:
    """The region a request's ``roi`` names; its size against the image is ``check_inside``'s job."""
    if not (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise RoiError("ROI must contain four integer coordinates: [xtl, ytl, xbr, ybr]")
    xtl, ytl, xbr, ybr = value
    if min(value) < 0:
        raise RoiError("ROI coordinates must be non-negative")
    if xbr <= xtl or ybr <= ytl:
        raise RoiError("ROI size must be positive")
    return xtl, ytl, xbr, ybr


def check_inside(region: Region, width: int, height: int, frame: int | None = None) -> None:
    _, _, xbr, ybr = region
    if xbr > width or ybr > height:
        where = f": frame {frame} is {width}x{height}" if frame is not None else ""
        raise RoiError(f"ROI is outside the image{where}")


# JPEG's block grid (MCU, in pixels) per Pillow subsampling value: 4:4:4, 4:2:2, 4:2:0.
_MCU = {0: (8, 8), 1: (16, 8), 2: (16, 16)}
_ORIENTATION = 0x0112  # the EXIF tag exif_transpose acts on


def crop(data: bytes, region: Region) -> bytes:
    """The region of an encoded frame, encoded in the frame's own format: losslessly where the
    format allows, and a JPEG as close to the frame as JPEG allows (below)."""
    try:
        source = Image.open(io.BytesIO(data))
        source.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadRequest(f"the stored frame cannot be decoded: {error}") from None
    image_format = source.format
    options: dict = {}
    if image_format in ("JPEG", "MPO"):
        image_format = "JPEG"
        # On the frame's own block grid its own tables re-encode the same blocks almost exactly
        # (mean error 0.1 on bus.jpg, at the frame's size); off the grid every block is new, and
        # the frame's tables (often quality 50) would add a second full loss (4.4): quality 95,
        # no chroma subsampling instead (0.9).
        sampling = JpegImagePlugin.get_sampling(source)
        mcu_width, mcu_height = _MCU.get(sampling, (0, 0))
        on_grid = (mcu_width and region[0] % mcu_width == 0 and region[1] % mcu_height == 0
                   and source.getexif().get(_ORIENTATION, 1) == 1)
        options = ({"qtables": source.quantization, "subsampling": sampling} if on_grid
                   else {"quality": 95, "subsampling": 0})
    elif image_format == "WEBP":
        options = {"lossless": True}
    elif image_format not in ("PNG", "BMP", "TIFF", "GIF"):
        image_format = "PNG"  # a format Pillow reads but does not write: lossless instead
    # Coordinates are the frame's as shown, EXIF orientation applied (the stored sizes are too).
    region_image = ImageOps.exif_transpose(source).crop(region)
    if region_image.mode not in ("1", "L", "RGB", "RGBA", "P", "CMYK") or (
            image_format == "JPEG" and region_image.mode not in ("L", "RGB", "CMYK")):
        region_image = region_image.convert("RGB")
    output = io.BytesIO()
    region_image.save(output, image_format, **options)
    return output.getvalue()


def shift_points(points: list, dx: float, dy: float) -> list:
    """A flat ``[x0, y0, x1, y1, ...]`` list moved by (dx, dy)."""
    return [value + (dx if index % 2 == 0 else dy) for index, value in enumerate(points)]


def shift_shape(shape: dict, dx: int, dy: int) -> dict:
    """A CVAT shape moved by (dx, dy): its points, a mask's box (the RLE's last four numbers), and
    a skeleton's elements."""
    moved = dict(shape)
    points = shape.get("points") or []
    if shape.get("type") == "mask" and len(points) >= 4:
        moved["points"] = [*points[:-4], *shift_points(points[-4:], dx, dy)]
    else:
        moved["points"] = shift_points(points, dx, dy)
    if shape.get("elements"):
        moved["elements"] = [shift_shape(element, dx, dy) for element in shape["elements"]]
    return moved


def into_region(points: list, region: Region, key: str) -> list:
    """Interactor clicks ``[[x, y], ...]`` from frame to crop coordinates; a click outside the region is 400."""
    xtl, ytl, xbr, ybr = region
    moved = []
    for index, (x, y) in enumerate(points):
        if not (xtl <= x <= xbr and ytl <= y <= ybr):
            raise RoiError(f"{key}[{index}]: [{x}, {y}] is outside the ROI {list(region)}")
        moved.append([x - xtl, y - ytl])
    return moved


def box_into_region(box, region: Region) -> list | None:
    """``obj_bbox`` (``[[x1, y1], [x2, y2]]`` or flat) from frame to crop coordinates, same form."""
    if box is None or box == []:
        return box
    nested = isinstance(box, list) and len(box) == 2 and all(isinstance(corner, list) for corner in box)
    corners = box if nested else [box[:2], box[2:]] if isinstance(box, list) and len(box) == 4 else None
    if corners is None or not all(isinstance(corner, list) and len(corner) == 2 for corner in corners):
        return box  # malformed: the function says what is wrong with it
    for index, corner in enumerate(corners):
        if not all(is_number(value) for value in corner):  # cannot be moved into the region
            raise RoiError(f"obj_bbox[{index}]: must be [x, y], got {corner!r}")
    moved = into_region(corners, region, "obj_bbox")
    return moved if nested else [*moved[0], *moved[1]]


class BadFunctionReply(ValueError):
    """A function's reply that cannot be put back into the frame."""


def reply_into_frame(reply, region: Region, frame_size: tuple[int, int], function_id: str):
    """An interactor's reply on the crop, in frame coordinates: ``{"mask"}`` pasted into a zero
    frame-sized mask, our ``{"rle", "size"}``, CVAT's ``{"shapes"}`` and an older interactor's
    polygon ``[[x, y], ...]`` shifted; anything else is passed on unchanged. Raises BadFunctionReply
    when a mask is not the crop's size, or when what is to be moved holds something other than numbers."""
    try:
        return _reply_into_frame(reply, region, frame_size, function_id)
    except BadFunctionReply:
        raise
    except (TypeError, ValueError) as error:  # a ragged mask, a point that is no number, ...
        raise BadFunctionReply(f"function {function_id} answered a reply that cannot be put back into the frame: "
                               f"{type(error).__name__}: {error}") from None


def _reply_into_frame(reply, region: Region, frame_size: tuple[int, int], function_id: str):
    xtl, ytl, xbr, ybr = region
    if isinstance(reply, list) and all(isinstance(point, list) and len(point) == 2 for point in reply):
        return [shift_points(point, xtl, ytl) for point in reply]
    if not isinstance(reply, dict):
        return reply
    width, height = frame_size
    reply = dict(reply)
    if isinstance(reply.get("mask"), list):
        crop_mask = np.asarray(reply["mask"])
        if crop_mask.shape != (ybr - ytl, xbr - xtl):
            raise BadFunctionReply(f"function {function_id} answered a mask of shape {list(crop_mask.shape)} "
                                   f"for a region of {xbr - xtl}x{ybr - ytl} pixels")
        full = np.zeros((height, width), dtype=crop_mask.dtype)
        full[ytl:ybr, xtl:xbr] = crop_mask
        reply["mask"] = full.tolist()
    if isinstance(reply.get("rle"), list) and isinstance(reply.get("size"), list):
        if len(reply["rle"]) >= 4:
            reply["rle"] = [*reply["rle"][:-4], *shift_points(reply["rle"][-4:], xtl, ytl)]
        reply["size"] = [height, width]
    if isinstance(reply.get("shapes"), list):
        reply["shapes"] = [shift_shape(shape, xtl, ytl) if isinstance(shape, dict) else shape
                           for shape in reply["shapes"]]
    return reply

