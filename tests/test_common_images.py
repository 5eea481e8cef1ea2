import base64
import io

import pytest
from PIL import Image

from serverless.common.handler import BadRequest, read_json_object, read_probability
from serverless.common.images import decode_image

from helpers import TESTDATA, b64_file


def encode(image: Image.Image, format: str, **save_args) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save_args)
    return base64.b64encode(buffer.getvalue()).decode()


def test_decodes_real_jpeg_and_png_to_rgb():
    jpeg = decode_image(b64_file(TESTDATA / "ultralytics/bus.jpg"))
    assert (jpeg.mode, jpeg.size) == ("RGB", (810, 1080))
    png = decode_image(b64_file(TESTDATA / "skimage/astronaut.png"))
    assert (png.mode, png.size) == ("RGB", (512, 512))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_pixel_mode_becomes_rgb(mode):
    image = Image.new(mode, (7, 5))
    assert decode_image(encode(image, "TIFF" if mode == "CMYK" else "PNG")).mode == "RGB"


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("data, message", [
    (None, "non-empty base64 string"),
    ("", "non-empty base64 string"),
    (12, "non-empty base64 string"),
    ("not base64 at all!", "not valid base64"),
    ("data:image/png;base64,iVBORw0KGgo=", "not a data: URL"),
    (base64.b64encode(b"just some text, not an image").decode(), "not an image file"),
])
def test_bad_input_is_a_bad_request(data, message):
    with pytest.raises(BadRequest, match=message):
        decode_image(data)


def test_truncated_file_is_a_bad_request():
    whole = (TESTDATA / "ultralytics/bus.jpg").read_bytes()
    with pytest.raises(BadRequest, match="truncated or corrupt"):
        decode_image(base64.b64encode(whole[: len(whole) // 2]).decode())


def test_pixel_limit_stops_decompression_bombs_before_decoding():
    # 20000 x 20000 one-bit pixels compress to a few kB but would decode to 400 megapixels.
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(BadRequest, match=r"20000x20000 = 400000000 pixels, over the limit of 100000000"):
        decode_image(bomb)
    with pytest.raises(BadRequest, match="over the limit of 1000"):
        decode_image(b64_file(TESTDATA / "skimage/astronaut.png"), max_pixels=1000)


def test_request_body_helpers():
    assert read_json_object({"a": 1}) == {"a": 1}
    assert read_json_object(b'{"a": 1}') == {"a": 1}
    with pytest.raises(BadRequest, match="not JSON"):
        read_json_object(b"\x89PNG")
    with pytest.raises(BadRequest, match="must be a JSON object, got list"):
        read_json_object(b"[1]")
    assert read_probability({}, "threshold", 0.5) == 0.5
    assert read_probability({"threshold": 0}, "threshold", 0.5) == 0.0  # 0 is a value, not "absent"
    for bad in (1.5, -0.1, "0.3", True, float("nan")):
        with pytest.raises(BadRequest, match="'threshold' must be"):
            read_probability({"threshold": bad}, "threshold", 0.5)
