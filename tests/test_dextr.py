"""CVAT's "DEXTR" (openvino-dextr): DEXTR-PyTorch's ResNet-101/PSP exported to an OpenVINO IR.

The official checkpoint (dextr_pascal-sbd.pth) is not on this machine, so the tests write a random
one in its format (a bare state dict of tensors), with the names and shapes derived here from
DEXTR-PyTorch's networks/deeplab_resnet.py, not from the code under test, and export it once through
export_dextr.py to an IR in a temporary directory. Crop box, heatmap, threshold and paste-back are
checked against values worked out by hand; the function is served for real and called over HTTP,
its shapes reply's confidence checked against the IR's probabilities in this process.
"""

import base64
import io
import math

import numpy as np
import openvino as ov
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from serverless.common import settings as function_settings
from serverless.common.handler import BadRequest
from serverless.common.interactors import Interaction
from serverless.common.metadata import FunctionMeta

from helpers import REPO, TESTDATA, StateDictShapes, function_module, interactor_shapes_reply, serve_function

DEXTR_FUNCTION = REPO / "serverless/openvino/dextr/nuclio"
BUS = TESTDATA / "ultralytics/bus.jpg"
CHECKPOINT = "dextr_pascal-sbd.pth"
# A 300 x 200 (width x height) image; points truncate to (60, 80), (150, 40), (240, 90), (150, 160).
SHAPE = (200, 300)
POINTS = np.array([[60.7, 80.2], [150.0, 40.9], [240.9, 90.0], [150.5, 160.5]])
# x1 = 60 - 50, y1 = max(40 - 50, 0), x2 = 240 + 50, y2 = min(160 + 50, 199): a 280 x 199 crop.
BOX = (10, 0, 290, 199)

mh = function_module(DEXTR_FUNCTION)
export_dextr = function_module(DEXTR_FUNCTION, "export_dextr")


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Every entry of ``resnet101(1, nInputChannels=4, classifier="psp").state_dict()`` but BatchNorm's
    ``num_batches_tracked`` (newer than the checkpoint), by deeplab_resnet.py's construction: convs
    without bias except PSP's ``final``; each nn.BatchNorm2d a weight, bias, mean and variance;
    a ``downsample`` (conv, BN) on the first block of every layer; PSP stages (pool, conv, BN, ReLU)."""
    shapes = StateDictShapes(batches_tracked=False)
    conv, batch_norm = shapes.conv, shapes.bn

    conv("conv1", 64, 4, 7)
    batch_norm("bn1", 64)
    in_channels = 64
    for layer, (blocks, planes) in enumerate(zip((3, 4, 23, 3), (64, 128, 256, 512)), start=1):
        for index in range(blocks):
            block = f"layer{layer}.{index}"
            conv(f"{block}.conv1", planes, in_channels, 1)
            batch_norm(f"{block}.bn1", planes)
            conv(f"{block}.conv2", planes, planes, 3)
            batch_norm(f"{block}.bn2", planes)
            conv(f"{block}.conv3", 4 * planes, planes, 1)
            batch_norm(f"{block}.bn3", 4 * planes)
            if index == 0:
                conv(f"{block}.downsample.0", 4 * planes, in_channels, 1)
                batch_norm(f"{block}.downsample.1", 4 * planes)
            in_channels = 4 * planes
    for stage in range(4):  # index 0 of each stage is the (parameterless) pooling
        conv(f"layer5.stages.{stage}.1", 512, 2048, 1)
        batch_norm(f"layer5.stages.{stage}.2", 512)
    conv("layer5.bottleneck.0", 512, 4096, 1)
    batch_norm("layer5.bottleneck.1", 512)
    conv("layer5.final", 1, 512, 1, bias=True)
    return shapes


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-scaled convs, identity batch norms but a damped last one per residual branch and one that
    scales the 0..255 input down, a boosted final conv and a bias picked for this seed: on the bus
    crop below, probabilities spread around the 0.8 threshold instead of saturating."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes().items():
        if name.endswith(("running_mean", "bias")):
            value = torch.zeros(shape)
        elif name.endswith("running_var"):
            value = torch.ones(shape)
        elif len(shape) == 1:  # batch-norm scale
            value = torch.full(shape, 0.2 if ".bn3." in name else 1.0)
        else:
            std = math.sqrt(2.0 / math.prod(shape[1:])) * (4.0 if name == "layer5.final.weight" else 1.0)
            value = torch.randn(shape, generator=generator) * std
        state[name] = value
    state["bn1.running_var"].fill_(128.0 ** 2)  # the input is 0..255 with no normalisation
    state["layer5.final.bias"] = torch.tensor([5.2])  # centres the bus crop's logits near logit(0.8)
    return state


@pytest.fixture(scope="module")
def state():
    return random_state_dict()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, state):
    """The random checkpoint and its IR, exported once through the function's own script."""
    directory = tmp_path_factory.mktemp("dextr")
    torch.save(state, directory / CHECKPOINT)
    assert export_dextr.main([str(directory / CHECKPOINT)]) == 0
    return directory


@pytest.fixture(scope="module")
def dextr(model_dir):
    """The function's model class in this process, as a worker loads it."""
    return mh.Dextr(function_settings.load({"DEXTR_MODEL_PATH": str(model_dir)}))


@pytest.fixture(scope="module")
def dextr_function(model_dir):
    with serve_function(DEXTR_FUNCTION, env={"DEXTR_MODEL_PATH": str(model_dir)}) as running:
        yield running


def bus_crop() -> np.ndarray:
    """300 x 200 (width x height) of bus.jpg: a real photo, not square."""
    return np.asarray(Image.open(BUS).convert("RGB"))[400:600, 100:400]


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- function files -------------------------------------------------------------------------------

def test_function_yaml_has_cvats_metadata():
    config = yaml.safe_load((DEXTR_FUNCTION / "function.yaml").read_text())
    meta = FunctionMeta.from_nuclio(config)
    assert (meta.id, meta.kind, meta.name, meta.description) == ("openvino-dextr", "interactor", "DEXTR",
                                                                 "Deep Extreme Cut")
    assert (meta.version, meta.labels, meta.min_pos_points, meta.min_neg_points) == (2, (), 4, -1)
    assert not meta.startswith_box and not meta.startswith_box_optional
    assert "startswith_box" not in config["metadata"]["annotations"]  # CVAT reads any value as true
    assert meta.help_message.startswith("The interactor allows to get a mask of an object using its extreme points")
    assert meta.animated_gif.endswith("/dextr_example.gif")
    assert meta.min_pos_points == mh.MIN_POS_POINTS


# --- checkpoint format and export -------------------------------------------------------------------

def test_network_has_exactly_the_official_names_and_shapes():
    with torch.device("meta"):
        network = export_dextr.DextrResNet101()
    shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()
              if not name.endswith("num_batches_tracked")}
    assert shapes == official_shapes()
    assert len(shapes) == 547
    assert sum(p.numel() for p in network.parameters()) == sum(math.prod(s) for n, s in shapes.items()
                                                               if not n.endswith(("running_mean", "running_var")))


def test_checkpoint_loads_with_and_without_batch_norm_counters(tmp_path, state):
    without = tmp_path / "without.pth"
    torch.save(state, without, _use_new_zipfile_serialization=False)  # the 2018 file's format
    network = export_dextr.load_network(without)
    assert torch.equal(network.layer3[22].conv2.weight, state["layer3.22.conv2.weight"])
    assert network.layer3[22].conv2.dilation == (2, 2) and network.layer4[0].conv2.dilation == (4, 4)

    counters = {**state, **{name.rsplit(".", 1)[0] + ".num_batches_tracked": torch.tensor(0)
                            for name in state if name.endswith("running_mean")}}
    torch.save(counters, tmp_path / "with.pth")
    export_dextr.load_network(tmp_path / "with.pth")

    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match="missing .*conv1.weight"):
        export_dextr.load_network(tmp_path / "wrapped.pth")
    torch.save({**state, "layer5.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected .*layer5.extra.weight"):
        export_dextr.load_network(tmp_path / "extra.pth")


def test_fixed_pooling_is_adaptive_pooling():
    # PyTorch's bins for 6 over 64: [0, 11), [10, 22), [21, 32), [32, 43), [42, 54), [53, 64).
    matrix = export_dextr.adaptive_pooling_matrix(64, 6)
    assert [(int(row.nonzero()[0]), int(row.nonzero()[-1]) + 1) for row in matrix] == [
        (0, 11), (10, 22), (21, 32), (32, 43), (42, 54), (53, 64)]
    features = torch.randn(1, 3, 64, 64)
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(export_dextr.FixedAdaptiveAvgPool2d(bins, 64)(features),
                                   F.adaptive_avg_pool2d(features, bins))


def test_ir_computes_what_the_network_does(model_dir, dextr):
    assert dextr.model.input_shape == (1, 4, 512, 512) and dextr.model.output_shape == (1, 1, 512, 512)
    inputs = torch.from_numpy(mh.network_input(bus_crop(), POINTS, BOX))
    with torch.no_grad():
        network = export_dextr.load_network(model_dir / CHECKPOINT)
        logits = network(inputs)
    # The network's own output is at 1/8 resolution; the IR upsamples (aligned corners) and applies a sigmoid.
    assert logits.shape == (1, 1, 64, 64)
    expected = torch.sigmoid(F.interpolate(logits, size=(512, 512), mode="bilinear", align_corners=True)).numpy()
    # In FP32: OpenVINO's CPU default is bf16 where the CPU has it (here: up to 0.07 apart on these weights).
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_dir / "dextr.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    probabilities = compiled.create_infer_request().infer(inputs.numpy())[compiled.outputs[0]]
    np.testing.assert_allclose(probabilities, expected, atol=2e-4)
    # Corners align: the IR's corner pixels are the network's corner logits through the sigmoid.
    np.testing.assert_allclose(probabilities[0, 0, [0, -1], [0, -1]],
                               torch.sigmoid(logits[0, 0, [0, -1], [0, -1]]).numpy(), atol=2e-4)
    # Random weights tuned to straddle the default threshold, so the round trip below means something.
    assert 0.05 < (probabilities > mh.THRESHOLD).mean() < 0.95


def test_without_the_ir_the_function_is_in_error_saying_what_to_run(tmp_path):
    models_dir = tmp_path / "models"
    with serve_function(DEXTR_FUNCTION, until="error",
                        env={"MODELS_DIR": str(models_dir), "DEXTR_MODEL_PATH": ""}) as running:
        message = running.readiness()["message"]
    assert f"{models_dir}/dextr/dextr.xml is missing" in message
    assert "python -m serverless.common.model_files download dextr" in message

    torch.save({}, tmp_path / CHECKPOINT)  # downloaded but not exported yet
    with serve_function(DEXTR_FUNCTION, until="error",
                        env={"MODELS_DIR": str(models_dir), "DEXTR_MODEL_PATH": str(tmp_path)}) as running:
        message = running.readiness()["message"]
    assert f"only the checkpoint {tmp_path / CHECKPOINT} is there" in message
    assert f"python {DEXTR_FUNCTION / 'export_dextr.py'} {tmp_path / CHECKPOINT}" in message


# --- pre- and post-processing, by hand --------------------------------------------------------------

def test_crop_box_pads_by_50_and_clips_to_the_last_row_and_column():
    assert mh.crop_box(POINTS, SHAPE) == BOX
    assert mh.crop_box(np.array([[0, 0], [10, 5], [0, 5], [5, 10]]), SHAPE) == (0, 0, 60, 60)
    assert mh.crop_box(np.array([[300, 200], [299.9, 199.9], [280, 190], [290, 195]]), SHAPE) == (230, 140, 299, 199)
    with pytest.raises(BadRequest, match="too small"):
        mh.crop_box(np.array([[0, 0], [0, 1], [0, 2], [0, 3]]), (10, 1))


def test_network_input_crops_right_and_bottom_edges_exclusive_in_rgb():
    image = np.zeros((*SHAPE, 3), np.uint8)
    image[:, :, 2] = 200  # blue inside the crop
    image[:, 9] = image[:, 290] = (255, 0, 0)  # red just outside it, left and right
    image[199] = (0, 255, 0)  # green on the last row, which the crop leaves out
    inputs = mh.network_input(image, POINTS, BOX)
    assert inputs.shape == (1, 4, 512, 512) and inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs[0, 0], 0)
    np.testing.assert_array_equal(inputs[0, 1], 0)
    np.testing.assert_array_equal(inputs[0, 2], 200)  # bicubic of a constant, 0..255, no mean or scale


def test_heatmap_has_sigma_10_gaussians_at_the_scaled_points():
    heatmap = mh.network_input(np.zeros((*SHAPE, 3), np.uint8), POINTS, BOX)[0, 3]
    # (x - 10) * 512 / 280 and y * 512 / 199, truncated: (91, 205), (256, 102), (420, 231), (256, 411).
    peaks = [(91, 205), (256, 102), (420, 231), (256, 411)]
    for x, y in peaks:
        assert heatmap[y, x] == pytest.approx(255)
        # 5 pixels off a peak: exp(-4 ln2 * 25 / 100) = 1/2; 10 pixels: 1/16.
        assert heatmap[y, x + 5] == pytest.approx(127.5, abs=1e-3)
        assert heatmap[y + 10, x] == pytest.approx(255 / 16, abs=1e-3)
    assert heatmap.min() == 0 and heatmap[0, 511] == pytest.approx(0)
    assert sorted(zip(*np.nonzero(heatmap == heatmap.max()))) == sorted((y, x) for x, y in peaks)


def test_mask_thresholds_resizes_nearest_and_pastes_at_the_box():
    probabilities = np.full((512, 512), 0.5, np.float32)
    probabilities[:, :256] = 0.9  # the left half of the crop
    mask = mh.image_mask(probabilities, BOX, SHAPE, 0.8)
    assert mask.shape == SHAPE  # H x W
    expected = np.zeros(SHAPE, np.uint8)
    # Nearest from 512 to 280 columns: crop column c reads column floor(c * 512 / 280), < 256 up to c = 139.
    expected[0:199, 10:150] = 1
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mh.image_mask(probabilities, BOX, SHAPE, 0.9), 0)  # strictly above
    full = np.zeros(SHAPE, np.uint8)
    full[0:199, 10:290] = 1
    np.testing.assert_array_equal(mh.image_mask(probabilities, BOX, SHAPE, 0.0), full)


# --- the served function --------------------------------------------------------------------------

def test_served_function_round_trip(dextr_function, dextr):
    body = {"image": png_b64(bus_crop()), "pos_points": POINTS.tolist()}
    http = dextr_function.http

    # Threshold 0: the whole crop box, exactly; negative points and a box change nothing.
    reply = http.post("/", json={**body, "threshold": 0, "neg_points": [[5, 5]], "obj_bbox": [[0, 0], [20, 20]]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"mask"}
    mask = np.array(reply.json()["mask"])
    assert mask.shape == SHAPE
    expected = np.zeros(SHAPE, np.uint8)
    expected[0:199, 10:290] = 255
    np.testing.assert_array_equal(mask, expected)

    # The default 0.8: part of the box, nothing outside it.
    reply = http.post("/", json=body)
    assert reply.status_code == 200, reply.text
    mask = np.array(reply.json()["mask"])
    assert mask.shape == SHAPE and set(np.unique(mask)) == {0, 255}
    assert not mask[expected == 0].any()
    assert 0.05 < (mask[expected == 255] == 255).mean() < 0.95
    # What the model class gives in this process, pixel for pixel: nothing lost or transposed on the way.
    in_process = dextr.segment(Interaction(bus_crop(), POINTS, np.zeros((0, 2)), None, mh.THRESHOLD))
    np.testing.assert_array_equal(mask, in_process.mask.astype(int) * 255)


def test_shapes_reply_is_the_mask_with_the_mean_probability_above_the_threshold(dextr_function, dextr):
    body = {"image": png_b64(bus_crop()), "pos_points": POINTS.tolist()}
    # With CVAT 2.60+'s text prompts, which DEXTR ignores.
    full, attributes = interactor_shapes_reply(dextr_function, body, "bus")
    (attribute,) = attributes
    assert attribute["spec_id"] == 0
    # The 512 x 512 probabilities above 0.8, from the same IR in this process.
    (probabilities,) = dextr.model.infer(mh.network_input(bus_crop(), POINTS, BOX)).values()
    foreground = probabilities[probabilities > mh.THRESHOLD]
    assert foreground.size and mh.THRESHOLD < float(attribute["value"]) <= 1
    assert float(attribute["value"]) == pytest.approx(foreground.mean(dtype=np.float64), abs=1e-4)


@pytest.mark.parametrize("change, message", [
    ({"pos_points": [[1, 1], [2, 2], [3, 3]]}, "'pos_points' needs at least 4 points, got 3"),
    ({"pos_points": None}, "'pos_points' is required: at least 4 points"),
    ({"pos_points": [[1, 1], [2, 2], [3, 3], [301, 3]]}, "'pos_points[3]' = [301, 3] is outside the 300x200 image"),
    ({"threshold": 1.5}, "'threshold' must be between 0 and 1"),
    ({"image": "not base64!"}, "image"),
])
def test_bad_requests_are_400_with_the_reason(dextr_function, change, message):
    body = {"image": png_b64(np.zeros((200, 300, 3), np.uint8)), "pos_points": [[1, 1], [2, 2], [3, 3], [4, 4]]}
    body.update(change)
    body = {key: value for key, value in body.items() if value is not None}
    reply = dextr_function.http.post("/", json=body)
    assert reply.status_code == 400
    assert message in reply.text
