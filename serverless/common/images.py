"""Decode a frame the way CVAT sends it: standard base64 of the encoded file (JPEG, PNG, ...)."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from serverless.common import settings
from serverless.common.handler import BadRequest

# decode_image checks the pixel count itself, before any pixel is decoded, with one clear message;
# Pillow's own bomb check (a warning, then an error at twice its limit) would only get in the way.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: object, *, max_pixels: int | None = None, field: str = "image") -> Image.Image:
    """Return the frame as an RGB image, EXIF orientation applied; any problem is a ``BadRequest``
    whose message names ``field``."""
    limit = max_pixels or settings.current().max_image_pixels
    if not isinstance(data, str) or not data:
        raise BadRequest(f"'{field}' must be a non-empty base64 string")
    if data.startswith("data:"):
        raise BadRequest(f"'{field}' must be bare base64, not a data: URL")
    try:
        encoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"'{field}' is not valid base64: {error}") from None
    try:
        image, _ = open_image(encoded, limit)
    except BadRequest as problem:
        raise BadRequest(f"'{field}' is {problem}") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(encoded: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open and fully decode an image file, EXIF orientation applied; returns it with Pillow's name
    for its format. A problem is a ``BadRequest`` that says only what is wrong, for the caller to
    prefix with which file it is."""
    try:
        image = Image.open(io.BytesIO(encoded))
    except UnidentifiedImageError:
        raise BadRequest("not an image file Pillow can read") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadRequest(f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise BadRequest(f"truncated or corrupt: {error}") from None
    return ImageOps.exif_transpose(image), image.format
