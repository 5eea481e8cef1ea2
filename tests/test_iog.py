"""CVAT's "IOG" interactor (Inside-Outside Guidance, ResNet-101, in plain PyTorch).

The official checkpoint (IOG_PASCAL_SBD.pth, on Google Drive) is not on this machine, so the tests
write a random one in its format (a plain state dict of tensors, as ``torch.save(net.state_dict())``
writes it), with names and shapes derived here from the official modules' naming rules, not from
the code under test. Crop, click maps, threshold and paste-back are checked against values worked
out by hand; the function is served for real and called over HTTP.
"""

import base64
import io
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from serverless.common.interactors import Interaction
from serverless.common.metadata import FunctionMeta

from checkpoints import checkpoint_fixtures
from helpers import (
    REPO,
    TESTDATA,
    StateDictShapes,
    copy_function,
    function_module,
    interactor_shapes_reply,
    serve_function,
)

IOG_FUNCTION = REPO / "serverless/pytorch/shiyinzhang/iog/nuclio"
CHELSEA = TESTDATA / "skimage/chelsea.png"  # 451 x 300 (W x H)

mh = function_module(IOG_FUNCTION)
net = function_module(IOG_FUNCTION, "network")


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Every state_dict entry of the official Network(nInputChannels=5, num_classes=1, resnet101,
    output_stride=16): convs without bias, BatchNorm2d with weight, bias, running stats and
    num_batches_tracked; nn.Sequential children named by index."""
    shapes = StateDictShapes(batches_tracked=True)
    conv, bn = shapes.conv, shapes.bn

    def bottleneck(name, in_channels, width, expansion, downsample):
        conv(f"{name}.conv1", width, in_channels, 1), bn(f"{name}.bn1", width)
        conv(f"{name}.conv2", width, width, 3), bn(f"{name}.bn2", width)
        conv(f"{name}.conv3", width * expansion, width, 1), bn(f"{name}.bn3", width * expansion)
        if downsample:
            conv(f"{name}.downsample.0", width * expansion, in_channels, 1)
            bn(f"{name}.downsample.1", width * expansion)

    conv("backbone.conv1", 64, 5, 7), bn("backbone.bn1", 64)
    in_channels = 64
    for layer, (blocks, width) in enumerate(((3, 64), (4, 128), (23, 256), (3, 512)), start=1):
        for index in range(blocks):
            bottleneck(f"backbone.layer{layer}.{index}", in_channels, width, 4, downsample=index == 0)
            in_channels = width * 4
    for stage in range(4):  # Sequential(AdaptiveAvgPool2d, conv, bn, relu)
        conv(f"psp4.stages.{stage}.1", 512, 2048, 1), bn(f"psp4.stages.{stage}.2", 512)
    conv("psp4.bottleneck.0", 512, 2048 + 4 * 512, 1), bn("psp4.bottleneck.1", 512)
    for level, channels in enumerate((512, 1024, 512, 256)):
        conv(f"Coarse_net.laterals.{level}.0", 256, channels, 1), bn(f"Coarse_net.laterals.{level}.1", 256)
        # predict: conv1x1, bn, relu, conv3x3 -> 1, Upsample, bn
        conv(f"Coarse_net.predict.{level}.0", 256, 256, 1), bn(f"Coarse_net.predict.{level}.1", 256)
        conv(f"Coarse_net.predict.{level}.3", 1, 256, 3), bn(f"Coarse_net.predict.{level}.5", 1)
        if level < 3:  # upsample: Upsample, conv1x1, bn
            conv(f"Coarse_net.upsamples.{level}.1", 256, 256, 1), bn(f"Coarse_net.upsamples.{level}.2", 256)
    for level in range(4):
        for index in range(3 - level):
            bottleneck(f"Fine_net.cascade.{level}.{index}", 256, 128, 2, downsample=True)
    bottleneck("Fine_net.final_predict.0", 1024, 128, 2, downsample=True)
    conv("Fine_net.final_predict.1", 1, 256, 3), bn("Fine_net.final_predict.2", 1)
    return shapes


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-scaled convs, identity batch norms except a damped last norm in each residual branch (so
    101 layers keep activations finite), and a final norm whose statistics (those this seed gives on
    chelsea.png, about 700 +- 100) bring the output around the threshold, so masks are partial."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes().items():
        if name.endswith("num_batches_tracked"):
            value = torch.tensor(0)
        elif name.endswith(("running_mean", ".bias")):
            value = torch.zeros(shape)
        elif name.endswith("running_var"):
            value = torch.ones(shape)
        elif name.endswith(".weight") and len(shape) == 1:
            value = torch.full(shape, 0.2 if ".bn3." in name else 1.0)
        else:
            value = torch.randn(shape, generator=generator) * math.sqrt(2.0 / math.prod(shape[1:]))
        state[name] = value
    state["Fine_net.final_predict.2.running_mean"][:] = 700.0
    state["Fine_net.final_predict.2.running_var"][:] = 100.0 ** 2
    state["Fine_net.final_predict.2.bias"][:] = 0.8
    return state


weights, checkpoint_dir = checkpoint_fixtures("iog", mh.CHECKPOINT, random_state_dict)


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return mh.IOG(checkpoint_dir / mh.CHECKPOINT)


@pytest.fixture(scope="module")
def iog_function(tmp_path_factory, checkpoint_dir):
    # One worker instead of the file's two: half the start-up on a busy 2-core machine.
    folder = copy_function(IOG_FUNCTION, tmp_path_factory.mktemp("function") / "nuclio",
                           **{"spec.triggers.myHttpTrigger.numWorkers": 1})
    with serve_function(folder, env={"IOG_MODEL_PATH": str(checkpoint_dir)}) as running:
        yield running


# --- function files -----------------------------------------------------------------------------

def test_annotations_are_cvats():
    meta = FunctionMeta.from_nuclio(yaml.safe_load((IOG_FUNCTION / "function.yaml").read_text()))
    assert (meta.id, meta.kind, meta.name, meta.version) == ("pth-shiyinzhang-iog", "interactor", "IOG", 2)
    assert meta.description == "Interactive Object Segmentation with Inside-Outside Guidance"
    assert (meta.min_pos_points, meta.min_neg_points, meta.startswith_box) == (1, 0, True)
    assert not meta.startswith_box_optional and meta.labels == ()
    assert meta.help_message == ("The interactor allows to get a mask of an object using its wrapping bounding box, "
                                 "positive, and negative points inside it")
    assert meta.animated_gif.endswith("/site/content/en/images/iog_example.gif")


# --- checkpoint format and names ------------------------------------------------------------------

def test_network_has_exactly_the_official_names_and_shapes():
    with torch.device("meta"):
        state = net.IOGNetwork().state_dict()
    assert {name: tuple(t.shape) for name, t in state.items()} == official_shapes()
    assert len(state) == 918


def test_random_checkpoint_in_official_format_loads_without_missing_or_unexpected_keys(model, weights):
    # load_network refuses any missing, unexpected or mis-shaped key; reaching here means none.
    network = model.network
    assert not network.training
    loaded = network.state_dict()
    for name in ("backbone.conv1.weight", "backbone.layer4.2.bn3.weight", "psp4.bottleneck.0.weight",
                 "Coarse_net.upsamples.0.1.weight", "Fine_net.final_predict.1.weight"):
        torch.testing.assert_close(loaded[name], weights[name], rtol=0, atol=0)


def test_checkpoints_from_before_num_batches_tracked_load_and_wrong_ones_are_refused(tmp_path, weights):
    old = {name: value for name, value in weights.items() if not name.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")  # PyTorch 0.4.0 saved no num_batches_tracked
    assert not net.load_network(tmp_path / "old.pth").training

    renamed = dict(old)
    renamed["Fine_net.final_predict.1.bias"] = renamed.pop("Fine_net.final_predict.1.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['Fine_net.final_predict.1.weight'\], "
                                         r"1 unexpected key\(s\) \['Fine_net.final_predict.1.bias'\]"):
        net.load_network(tmp_path / "renamed.pth")

    torch.save({**old, "backbone.conv1.weight": torch.zeros(64, 4, 7, 7)}, tmp_path / "four_channels.pth")
    with pytest.raises(ValueError, match=r"backbone.conv1.weight has shape \(64, 4, 7, 7\), expected \(64, 5, 7, 7\)"):
        net.load_network(tmp_path / "four_channels.pth")

    torch.save({"state_dict": old}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match="not an IOG checkpoint"):
        net.load_network(tmp_path / "wrapped.pth")


# --- crop, click maps, threshold, paste-back -------------------------------------------------------

def test_crop_grows_the_box_by_30_clips_and_truncates():
    assert mh.crop_box((100, 50, 300, 150), (480, 640)) == (70, 20, 330, 180)
    assert mh.crop_box((10.9, 5.7, 630.2, 470.99), (480, 640)) == (0, 0, 639, 479)  # clipped to the last pixel
    assert mh.crop_box((40.9, 35.7, 60.2, 50.99), (480, 640)) == (10, 5, 90, 80)  # corners truncated


def test_crop_includes_its_last_row_and_column_and_resizes_by_nearest_neighbour():
    # Red = column, green = row: the resized crop shows which source pixel each input pixel took.
    height, width = 200, 300
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None, :] % 256
    image[..., 1] = np.arange(height)[:, None]
    image[..., 2] = 7
    crop = (30, 10, 190, 130)  # inclusive: 161 x 121 pixels
    resized = mh.crop_and_resize(image, crop)
    assert resized.shape == (512, 512, 3) and resized.dtype == np.float32
    columns = 30 + np.floor(np.arange(512) * 161 / 512)  # OpenCV nearest: floor(i * size / 512)
    rows = 10 + np.floor(np.arange(512) * 121 / 512)
    np.testing.assert_array_equal(resized[0, :, 0], columns)
    np.testing.assert_array_equal(resized[:, 0, 1], rows)
    assert resized[511, 511, 0] == 190 and resized[511, 511, 1] == 130  # the last column and row are in
    assert (resized[..., 2] == 7).all()


def test_click_maps_against_hand_computed_values():
    # A 256 x 128 crop at (100, 50): clicks scale by 2 in x and 4 in y.
    crop = (100, 50, 355, 177)
    maps = mh.guidance_maps(np.array([[110.0, 60.0]]), np.array([[300.0, 150.0]]), crop)
    assert maps.shape == (512, 512, 2) and maps.dtype == np.float32
    inside, outside = maps[..., 0], maps[..., 1]
    # The positive click lands at x = 20, y = 40; the negative at x = 400, y = 400. Sigma 10 is the
    # full width at half maximum: 5 px away is 1/2 of the peak, 10 px away 1/16.
    assert inside[40, 20] == 255 and outside[400, 400] == 255
    assert inside[40, 25] == pytest.approx(127.5) and inside[45, 20] == pytest.approx(127.5)
    assert inside[40, 30] == pytest.approx(255 / 16) and outside[400, 390] == pytest.approx(255 / 16)
    assert inside[400, 400] == pytest.approx(0, abs=1e-6) and outside[40, 20] == pytest.approx(0, abs=1e-6)
    assert int(np.argmax(inside)) == 40 * 512 + 20  # row-major: y is the row

    no_negatives = mh.guidance_maps(np.array([[110.0, 60.0], [200.0, 100.0]]), np.zeros((0, 2)), crop)
    assert (no_negatives[..., 1] == 0).all()
    assert no_negatives[40, 20, 0] == 255 and no_negatives[200, 200, 0] == 255  # max over the clicks


def test_click_maps_are_normalised_together():
    # Off-grid clicks never reach 1; both maps share one min-max scale, so the lower peak stays lower.
    crop = (0, 0, 511, 511)  # scale 1
    maps = mh.guidance_maps(np.array([[100.5, 100.0]]), np.array([[300.0, 300.0]]), crop)
    peak = 2 ** (-4 * 0.25 / 100)  # 0.5 px from the click
    assert maps[300, 300, 1] == 255
    assert maps[100, 100, 0] == pytest.approx(255 * peak, rel=1e-5)
    assert maps[100, 101, 0] == pytest.approx(255 * peak, rel=1e-5)


def test_network_input_is_rgb_then_inside_then_outside():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    inputs = mh.network_input(image, np.array([[10.0, 20.0]]), np.array([[40.0, 50.0]]), (0, 0, 63, 63))
    assert inputs.shape == (1, 5, 512, 512) and inputs.dtype == torch.float32
    assert [float(inputs[0, c, 0, 0]) for c in range(3)] == [10, 20, 30]
    assert inputs[0, 3, 20 * 8, 10 * 8] == 255 and inputs[0, 4, 50 * 8, 40 * 8] == 255


def test_threshold_is_a_strict_cut_on_the_raw_output():
    output = np.full((512, 512), -1.0, np.float32)
    output[:, :128], output[:, 128:256], output[:, 256:384] = 0.81, 0.8, 0.79
    crop = (0, 0, 511, 511)
    mask = mh.output_to_mask(output, 0.8, crop, (512, 512))
    assert mask[:, :128].all() and not mask[:, 128:].any()
    assert mh.output_to_mask(output, 0.0, crop, (512, 512))[:, :384].all()
    assert not mh.output_to_mask(output, 1.0, crop, (512, 512)).any()


def test_mask_comes_back_at_the_crop_the_right_way_round():
    # A non-square image and crop: W 300 x H 200, crop 161 x 121 at (30, 10). Foreground in the
    # output's top-left quarter must land at the crop's top-left quarter, rows being y.
    output = np.full((512, 512), -5.0, np.float32)
    output[:256, :256] = 5.0
    mask = mh.output_to_mask(output, 0.8, (30, 10, 190, 130), (200, 300))
    assert mask.shape == (200, 300) and set(np.unique(mask)) == {0, 1}
    ys, xs = np.nonzero(mask)
    # Half of 121 rows and of 161 columns, give or take the bicubic edge.
    assert ys.min() == 10 and 69 <= ys.max() <= 71
    assert xs.min() == 30 and 109 <= xs.max() <= 111
    assert mask[10:69, 30:109].all()

    full = mh.output_to_mask(np.full((512, 512), 5.0, np.float32), 0.8, (30, 10, 190, 130), (200, 300))
    ys, xs = np.nonzero(full)  # all of the inclusive crop, nothing else
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 130, 30, 190) and full.sum() == 121 * 161


# --- the served function ------------------------------------------------------------------------

def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_served_function_round_trip(iog_function, model):
    http = iog_function.http
    image = Image.open(CHELSEA).convert("RGB")  # 451 x 300
    body = {"image": png_b64(image), "obj_bbox": [[140, 20], [330, 180]], "pos_points": [[240, 100]],
            "neg_points": [[150, 30]]}
    reply = http.post("/", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    mask = np.array(reply.json()["mask"])
    assert mask.shape == (300, 451) and set(np.unique(mask)) <= {0, 255}
    ys, xs = np.nonzero(mask)
    assert len(ys) and ys.min() >= 0 and ys.max() <= 210 and xs.min() >= 110 and xs.max() <= 360  # the crop

    # The served mask is what the same checkpoint gives in process (default threshold 0.8).
    interaction = Interaction(np.asarray(image), np.array([[240.0, 100.0]]), np.array([[150.0, 30.0]]),
                              (140.0, 20.0, 330.0, 180.0), mh.DEFAULT_THRESHOLD)
    expected = model.segment(interaction).mask * 255
    assert np.mean(mask != expected) < 1e-3  # threads may round a pixel on the threshold differently


def test_shapes_reply_is_the_mask_with_the_mean_sigmoid_of_the_output(iog_function, model):
    image = Image.open(CHELSEA).convert("RGB")  # 451 x 300
    body = {"image": png_b64(image), "obj_bbox": [[140, 20], [330, 180]], "pos_points": [[240, 100]],
            "neg_points": [[150, 30]]}
    # With CVAT 2.60+'s text prompts, which IOG ignores.
    full, attributes = interactor_shapes_reply(iog_function, body, ["a cat"])
    (attribute,) = attributes
    # The output is a logit: its sigmoid, averaged where the output is above the default 0.8,
    # from the same checkpoint in this process. Each of those is above sigmoid(0.8).
    crop = mh.crop_box((140.0, 20.0, 330.0, 180.0), (300, 451))
    inputs = mh.network_input(np.asarray(image), np.array([[240.0, 100.0]]), np.array([[150.0, 30.0]]), crop)
    with torch.inference_mode():
        logits = model.network(inputs.contiguous(memory_format=torch.channels_last))[0, 0].numpy()
    expected = np.mean(1 / (1 + np.exp(-logits[logits > mh.DEFAULT_THRESHOLD].astype(np.float64))))
    assert attribute["spec_id"] == 0 and 1 / (1 + math.exp(-0.8)) < float(attribute["value"]) <= 1
    assert float(attribute["value"]) == pytest.approx(expected, abs=1e-3)  # threads may round differently


@pytest.mark.parametrize("change, message", [
    ({"obj_bbox": None}, "'obj_bbox' is required"),
    ({"obj_bbox": []}, "'obj_bbox' is required"),
    ({"obj_bbox": [10, 10]}, "'obj_bbox' must be"),
    ({"pos_points": []}, "'pos_points' needs at least 1 point"),
    ({"threshold": 2}, "'threshold' must be between 0 and 1"),
])
def test_bad_requests_are_400_with_the_reason(iog_function, change, message):
    image = Image.new("RGB", (40, 30))
    body = {"image": png_b64(image), "obj_bbox": [[5, 5], [20, 20]], "pos_points": [[10, 10]], "neg_points": []}
    reply = iog_function.http.post("/", json={**body, **change})
    assert reply.status_code == 400
    assert message in reply.text
