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
    return finish_image(open_frame(data, max_pixels=max_pixels, field=field), field=field)


def open_frame(data: object, *, max_pixels: int | None = None, field: str = "image") -> Image.Image:
    """The frame's header only (size known, no pixel decoded yet), within the pixel limit; any
    problem is a ``BadRequest`` whose message names ``field``. ``finish_image`` decodes it."""
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
        return _open_header(encoded, limit)
    except BadRequest as problem:
        raise BadRequest(f"'{field}' is {problem}") from None


def finish_image(image: Image.Image, *, field: str = "image") -> Image.Image:
    """Decode a frame ``open_frame`` opened: RGB, EXIF orientation applied."""
    try:
        decoded = _decode(image)
        return decoded if decoded.mode == "RGB" else decoded.convert("RGB")
    except BadRequest as problem:
        raise BadRequest(f"'{field}' is {problem}") from None
    except ValueError as error:  # a pixel mode Pillow cannot turn into RGB
        raise BadRequest(f"'{field}' cannot be converted to RGB: {error}") from None


def open_image(encoded: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open and fully decode an image file, EXIF orientation applied; returns it with Pillow's name
    for its format. A problem is a ``BadRequest`` that says only what is wrong, for the caller to
    prefix with which file it is."""
    image = _open_header(encoded, max_pixels)
    return _decode(image), image.format


def _open_header(encoded: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(encoded))
    except UnidentifiedImageError:
        raise BadRequest("not an image file Pillow can read") from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - see _decode: any failure on these bytes is the file's
        raise BadRequest(f"an image whose header is corrupt: {type(error).__name__}: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadRequest(f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    return image


def _decode(image: Image.Image) -> Image.Image:
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    # Pillow's decoders and EXIF reader raise whatever the malformed bytes lead them to (OSError,
    # SyntaxError, ValueError, struct.error, IndexError, EOFError, ...): all of it is a bad file.
    except Exception as error:  # noqa: BLE001
        raise BadRequest(f"truncated or corrupt: {type(error).__name__}: {error}") from None
