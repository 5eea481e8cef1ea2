"""CVAT's "HRNET" interactor (RITM's HRNet18, coco_lvis_h18_itermask.pth, in plain PyTorch).

The official checkpoint is not on this machine, so the tests write a random one in its exact format
({"state_dict": ..., "config": {"class", "params"}} as RITM's trainer saves it), with the key names
and shapes derived here from RITM's module layout, not from the code under test. Disk click maps,
the click tensor, zoom-in geometry and the threshold are checked against values worked out by hand;
the function is served for real and called over HTTP. Images stay small: the machine is shared.
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
from helpers import REPO, TESTDATA, StateDictShapes, function_module, interactor_shapes_reply, serve_function

HRNET_FUNCTION = REPO / "serverless/pytorch/saic-vul/hrnet/nuclio"
ASTRONAUT = TESTDATA / "skimage/astronaut.png"  # 512 x 512

mh = function_module(HRNET_FUNCTION)
net = function_module(HRNET_FUNCTION, "network")
zi = function_module(HRNET_FUNCTION, "zoom_in")

# coco_lvis_h18_itermask's model (RITM models/iter_mask/hrnet18_cocolvis_itermask_3p.py):
# HRNetModel(width=18, ocr_width=64, with_aux_output=True, use_leaky_relu=True, use_rgb_conv=False,
#            use_disks=True, norm_radius=5, with_prev_mask=True); the rest are RITM's defaults.
SPECIFIED = {"width": 18, "ocr_width": 64, "with_aux_output": True, "use_leaky_relu": True, "use_rgb_conv": False,
             "use_disks": True, "norm_radius": 5, "with_prev_mask": True}
DEFAULTS = {"small": False, "backbone_lr_mult": 0.1, "norm_layer": "torch.nn.modules.batchnorm.BatchNorm2d",
            "cpu_dist_maps": False, "clicks_groups": None, "binary_prev_mask": False, "conv_extend": False,
            "norm_mean_std": ([.485, .456, .406], [.229, .224, .225])}


def ritm_config(**changes) -> dict:
    """What RITM's @serialize stores: every parameter with its type, value and whether it was given."""
    values = {**DEFAULTS, **SPECIFIED, **changes}
    return {"class": "isegm.model.is_hrnet_model.HRNetModel",
            "params": {name: {"type": "class" if name == "norm_layer" else "builtin", "value": value,
                              "specified": name in SPECIFIED or name in changes}
                       for name, value in values.items()}}


def ritm_shapes(width=18, ocr_width=64, small=False) -> dict[str, tuple[int, ...]]:
    """Every state_dict entry of RITM's HRNetModel (use_rgb_conv=False, with_prev_mask=True), by
    RITM's module layout: BatchNorm2d everywhere (with num_batches_tracked), bias-free convs except
    maps_transform, conv3x3_ocr, cls_head and aux_head."""
    shapes = StateDictShapes(batches_tracked=True)
    conv, bn = shapes.conv, shapes.bn

    conv("maps_transform.0", 16, 3, 1, bias=True)  # prev mask + positive + negative disks
    conv("maps_transform.2", 64, 16, 3, bias=True)
    shapes["maps_transform.3.scale"] = (1,)
    fe = "feature_extractor"
    conv(f"{fe}.conv1", 64, 3, 3)
    bn(f"{fe}.bn1", 64)
    conv(f"{fe}.conv2", 64, 64, 3)
    bn(f"{fe}.bn2", 64)
    blocks = 2 if small else 4
    for index in range(blocks):  # BottleneckV1b, planes 64, expansion 4
        block = f"{fe}.layer1.{index}"
        conv(f"{block}.conv1", 64, 64 if index == 0 else 256, 1)
        bn(f"{block}.bn1", 64)
        conv(f"{block}.conv2", 64, 64, 3)
        bn(f"{block}.bn2", 64)
        conv(f"{block}.conv3", 256, 64, 1)
        bn(f"{block}.bn3", 256)
        if index == 0:
            conv(f"{block}.downsample.0", 256, 64, 1)
            bn(f"{block}.downsample.1", 256)
    w = width
    conv(f"{fe}.transition1.0.0", w, 256, 3)
    bn(f"{fe}.transition1.0.1", w)
    conv(f"{fe}.transition1.1.0.0", 2 * w, 256, 3)
    bn(f"{fe}.transition1.1.0.1", 2 * w)
    conv(f"{fe}.transition2.2.0.0", 4 * w, 2 * w, 3)
    bn(f"{fe}.transition2.2.0.1", 4 * w)
    conv(f"{fe}.transition3.3.0.0", 8 * w, 4 * w, 3)
    bn(f"{fe}.transition3.3.0.1", 8 * w)
    for stage, modules in ((2, 1), (3, 3 if small else 4), (4, 2 if small else 3)):
        channels = [w * 2 ** b for b in range(stage)]
        for module in range(modules):
            prefix = f"{fe}.stage{stage}.{module}"
            for branch, c in enumerate(channels):
                for index in range(blocks):  # BasicBlockV1b
                    conv(f"{prefix}.branches.{branch}.{index}.conv1", c, c, 3)
                    bn(f"{prefix}.branches.{branch}.{index}.bn1", c)
                    conv(f"{prefix}.branches.{branch}.{index}.conv2", c, c, 3)
                    bn(f"{prefix}.branches.{branch}.{index}.bn2", c)
            for i, target in enumerate(channels):
                for j, source in enumerate(channels):
                    if j > i:
                        conv(f"{prefix}.fuse_layers.{i}.{j}.0", target, source, 1)
                        bn(f"{prefix}.fuse_layers.{i}.{j}.1", target)
                    for k in range(i - j):
                        out_channels = target if k == i - j - 1 else source
                        conv(f"{prefix}.fuse_layers.{i}.{j}.{k}.0", out_channels, source, 3)
                        bn(f"{prefix}.fuse_layers.{i}.{j}.{k}.1", out_channels)
    features, mid, key = 15 * w, 2 * ocr_width, ocr_width
    conv(f"{fe}.conv3x3_ocr.0", mid, features, 3, bias=True)
    bn(f"{fe}.conv3x3_ocr.1", mid)
    block = f"{fe}.ocr_distri_head.object_context_block"
    for name in ("f_pixel", "f_object"):
        conv(f"{block}.{name}.0", key, mid, 1)
        bn(f"{block}.{name}.1.0", key)
        conv(f"{block}.{name}.2", key, key, 1)
        bn(f"{block}.{name}.3.0", key)
    conv(f"{block}.f_down.0", key, mid, 1)
    bn(f"{block}.f_down.1.0", key)
    conv(f"{block}.f_up.0", mid, key, 1)
    bn(f"{block}.f_up.1.0", mid)
    conv(f"{fe}.ocr_distri_head.conv_bn_dropout.0", mid, 2 * mid, 1)
    bn(f"{fe}.ocr_distri_head.conv_bn_dropout.1.0", mid)
    conv(f"{fe}.cls_head", 1, mid, 1, bias=True)
    conv(f"{fe}.aux_head.0", features, features, 1, bias=True)
    bn(f"{fe}.aux_head.1", features)
    conv(f"{fe}.aux_head.3", 1, features, 1, bias=True)
    return shapes


def random_state_dict(seed=0, **shape_args) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in ritm_shapes(**shape_args).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        elif name.endswith((".bias", "running_mean")):
            state[name] = torch.randn(shape, generator=generator) * 0.1
        elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", ".1.weight", ".1.0.weight", ".3.0.weight")):
            state[name] = 1 + torch.randn(shape, generator=generator) * 0.1
        else:
            fan_in = max(1, math.prod(shape[1:]))
            state[name] = torch.randn(shape, generator=generator) * math.sqrt(1 / fan_in)
    return state


def write_checkpoint(path, state_dict, config=None):
    torch.save({"state_dict": state_dict, "config": config or ritm_config()}, path)
    return path


weights, checkpoint_dir = checkpoint_fixtures("hrnet-ritm", mh.CHECKPOINT, random_state_dict, write_checkpoint)


@pytest.fixture(scope="module")
def network(checkpoint_dir):
    return net.load_network(checkpoint_dir / mh.CHECKPOINT)


@pytest.fixture(scope="module")
def hrnet_function(checkpoint_dir):
    with serve_function(HRNET_FUNCTION, env={"HRNET_MODEL_PATH": str(checkpoint_dir)}) as running:
        yield running


# --- function files -----------------------------------------------------------------------------

def test_metadata_is_cvats():
    meta = FunctionMeta.from_nuclio(yaml.safe_load((HRNET_FUNCTION / "function.yaml").read_text()))
    assert (meta.id, meta.name, meta.kind, meta.version) == ("pth-saic-vul-hrnet", "HRNET", "interactor", 2)
    assert meta.description == "HRNet18 for click based interactive segmentation"
    assert (meta.min_pos_points, meta.min_neg_points, meta.startswith_box) == (1, 0, False)
    assert meta.labels == ()
    assert meta.help_message == ("The interactor allows to get a mask for an object using positive points, "
                                 "and negative points")
    assert meta.animated_gif.endswith("/site/content/en/images/hrnet_example.gif")
    annotations = yaml.safe_load((HRNET_FUNCTION / "function.yaml").read_text())["metadata"]["annotations"]
    assert "startswith_box" not in annotations  # written only when true (§D2)


def test_gpu_file_differs_only_where_cvats_does():
    cpu = yaml.safe_load((HRNET_FUNCTION / "function.yaml").read_text())
    gpu = yaml.safe_load((HRNET_FUNCTION / "function-gpu.yaml").read_text())
    assert gpu["metadata"] == cpu["metadata"]
    assert cpu["spec"]["triggers"]["myHttpTrigger"]["numWorkers"] == 1  # CVAT: one worker, 2 CPUs
    assert cpu["spec"]["resources"] == {"limits": {"cpu": 2}}
    assert gpu["spec"]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert gpu["spec"]["build"] == {key: f"{value}:latest-gpu" for key, value in cpu["spec"]["build"].items()}
    for key in ("description", "runtime", "handler", "eventTimeout", "triggers", "platform"):
        assert gpu["spec"][key] == cpu["spec"][key]


# --- checkpoint format and names --------------------------------------------------------------------

def test_network_has_exactly_ritms_names_and_shapes():
    with torch.device("meta"):
        state = net.HRNetModel(net.ModelConfig.from_checkpoint(ritm_config(), "ckpt")).state_dict()
    assert {name: tuple(t.shape) for name, t in state.items()} == ritm_shapes()
    # The small variant (hrnet18s) and other widths follow the stored config, as RITM's loader does.
    with torch.device("meta"):
        small = net.HRNetModel(net.ModelConfig.from_checkpoint(ritm_config(small=True, ocr_width=48), "ckpt"))
    assert {n: tuple(t.shape) for n, t in small.state_dict().items()} == ritm_shapes(ocr_width=48, small=True)


def test_random_checkpoint_in_official_format_loads_without_missing_or_unexpected_keys(network, weights):
    # load_network refuses any missing, unexpected or mis-shaped key; reaching here means none.
    assert not network.training
    assert network.config == net.ModelConfig(width=18, ocr_width=64, with_prev_mask=True, norm_radius=5,
                                             use_leaky_relu=True)
    for name in ("maps_transform.3.scale", "feature_extractor.cls_head.weight",
                 "feature_extractor.stage4.2.fuse_layers.3.0.2.0.weight"):
        torch.testing.assert_close(network.state_dict()[name], weights[name], rtol=0, atol=0)


def test_wrong_checkpoints_are_refused_with_the_reason(tmp_path, weights):
    renamed = dict(weights)
    renamed["feature_extractor.cls.weight"] = renamed.pop("feature_extractor.cls_head.weight")
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['feature_extractor.cls_head.weight'\], "
                                         r"1 unexpected key\(s\) \['feature_extractor.cls.weight'\]"):
        net.load_network(write_checkpoint(tmp_path / "renamed.pth", renamed))
    with pytest.raises(ValueError, match="use_rgb_conv=True is not supported"):
        net.load_network(write_checkpoint(tmp_path / "rgb.pth", weights, ritm_config(use_rgb_conv=True)))
    with pytest.raises(ValueError, match="has shape"):  # the config says width 32, the weights are W18's
        net.load_network(write_checkpoint(tmp_path / "w32.pth", weights, ritm_config(width=32)))
    torch.save({"model": weights}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a RITM checkpoint"):
        net.load_network(tmp_path / "other.pth")


# --- click maps ------------------------------------------------------------------------------------

def test_disk_maps_match_hand_computed_disks():
    # One positive click at row 6, column 9 of a 14 x 20 map; one negative at (1.5, 2.5); radius 5.
    points = mh.points_tensor([[mh.Click(6, 9, True), mh.Click(1.5, 2.5, False)]])
    maps = net.DiskMaps(5)(points, 14, 20)
    assert maps.shape == (1, 2, 14, 20)
    positive = maps[0, 0].numpy()
    # Lattice points within 5 of a lattice point: 81. (3, 4) offsets lie on the circle: inside.
    assert positive.sum() == 81
    for dy, dx, inside in ((0, 5, True), (5, 0, True), (-3, -4, True), (4, -3, True), (4, 4, False),
                           (0, 6, False), (-5, 1, False)):
        assert positive[6 + dy, 9 + dx] == inside, (dy, dx)
    negative = maps[0, 1].numpy()
    expected = [[(r - 1.5) ** 2 + (c - 2.5) ** 2 <= 25 for c in range(20)] for r in range(14)]
    np.testing.assert_array_equal(negative, np.array(expected, dtype=np.float32))
    # Row 0 by hand: column 7 is at 1.5^2 + 4.5^2 = 22.5 (inside), column 8 at 1.5^2 + 5.5^2 = 32.5.
    assert negative[0].tolist() == [1.0] * 8 + [0.0] * 12


def test_click_tensor_puts_positives_first_and_pads_each_group():
    clicks = [mh.Click(1, 2, True), mh.Click(3, 4, True), mh.Click(5, 6, False)]
    points = mh.points_tensor([clicks, [mh.Click(7, 8, True)]])
    assert points.tolist() == [
        [[1, 2, 0], [3, 4, 1], [5, 6, 2], [-1, -1, -1]],
        [[7, 8, 0], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]],
    ]
    # Padding rows draw nothing.
    assert net.DiskMaps(5)(points, 10, 10)[1, 1].sum() == 0


def test_points_are_read_as_y_x_on_a_non_square_map():
    interaction = Interaction(np.zeros((30, 50, 3), np.uint8), np.array([[44.0, 3.0]]), np.array([[2.0, 25.0]]),
                              None, 0.5)
    clicks = mh.interaction_clicks(interaction)
    assert clicks == [mh.Click(3.0, 44.0, True), mh.Click(25.0, 2.0, False)]
    maps = net.DiskMaps(5)(mh.points_tensor([clicks]), 30, 50)
    assert maps[0, 0, 3, 44] == 1 and maps[0, 0, 3, 49] == 1 and maps[0, 0, 9, 44] == 0
    assert maps[0, 1, 25, 2] == 1 and maps[0, 1, 29, 0] == 1 and maps[0, 1, 25, 8] == 0


# --- zoom-in ---------------------------------------------------------------------------------------

def test_object_roi_grows_to_the_minimum_crop_and_is_clipped():
    mask = np.zeros((600, 800), bool)
    mask[100:140, 50:100] = True  # rows 100..139, columns 50..99
    # Height 40 * 1.4 = 56 -> 200 about row 119.5: round(19.5) = 20, round(219.5) = 220 (half to even).
    # Width 50 * 1.4 = 70 -> 200 about column 74.5: round(-25.5) = -26 -> 0, round(174.5) = 174.
    assert zi.object_roi(mask, []) == (20, 220, 0, 174)
    # A positive click outside the mask stretches the box; a negative one does not.
    big = np.zeros((600, 800), bool)
    big[100:400, 300:600] = True  # 300 x 300 -> 420 x 420 about (249.5, 449.5)
    assert zi.object_roi(big, [mh.Click(10, 10, False)]) == (40, 460, 240, 660)
    # With a click at (49, 300): rows 49..399 (351 -> 491.4, centre 224): round(-21.7) -> 0, round(469.7) = 470.
    assert zi.object_roi(big, [mh.Click(49.6, 300, True)]) == (0, 470, 240, 660)
    # A click on the right edge (x == W) is taken as the last column.
    assert zi.object_roi(np.zeros((300, 300), bool), [mh.Click(150, 300, True)])[3] == 299


def test_crop_size_and_click_mapping():
    roi = (20, 220, 0, 174)  # 201 x 175
    assert zi.crop_size(roi) == (400, 348)  # 175 * 400 / 201 = 348.26
    zoom = zi.ZoomIn()
    zoom.prev_probs = torch.zeros(1, 1, 600, 800)
    zoom.prev_probs[0, 0, 100:140, 50:100] = 0.9
    net_input = torch.rand(1, 4, 600, 800)
    clicks = [mh.Click(120, 60, True), mh.Click(130, 90, True)]
    crop, crop_clicks = zoom.transform(net_input, clicks)
    assert zoom.zoomed and zoom.roi == roi
    assert crop.shape == (1, 4, 400, 348)
    assert crop_clicks[0] == mh.Click(400 * (120 - 20) / 201, 348 * 60 / 175, True)
    # Corners of the crop are the RoI's corner pixels (bilinear, align corners).
    torch.testing.assert_close(crop[0, :, 0, 0], net_input[0, :, 20, 0])
    torch.testing.assert_close(crop[0, :, -1, -1], net_input[0, :, 220, 174])
    # Back: resized to the RoI, pasted into zeros.
    full = zoom.inv_transform(torch.full((1, 1, 400, 348), 0.7))
    assert full.shape == (1, 1, 600, 800)
    assert full[0, 0, 20:221, 0:175].eq(0.7).all() and full.sum() == pytest.approx(0.7 * 201 * 175)


def test_roi_is_kept_while_clicks_stay_inside_and_it_overlaps():
    zoom = zi.ZoomIn()
    zoom.roi = (30, 270, 30, 270)
    zoom.prev_probs = torch.zeros(1, 1, 600, 800)
    zoom.prev_probs[0, 0, 100:200, 100:200] = 1
    # Candidate: 100 rows -> 200 about 149.5 -> (50, 250, 50, 250); IoU (201/241)^2 = 0.70: kept.
    zoom.transform(torch.zeros(1, 4, 600, 800), [mh.Click(150, 150, True), mh.Click(5, 5, False)])
    assert zoom.roi == (30, 270, 30, 270)
    # A positive click on the RoI's last row counts as outside (RITM's check_object_roi): the RoI is
    # recomputed with the click in it: rows 100..270 -> 171 * 1.4 = 239.4 about 185 -> (65, 305).
    zoom.transform(torch.zeros(1, 4, 600, 800), [mh.Click(150, 150, True), mh.Click(270, 150, True)])
    assert zoom.roi == (65, 305, 50, 250)
    # Otherwise an IoU under 0.5 replaces it: (50, 250)^2 against (0, 300)^2 is (201/301)^2 = 0.45.
    zoom.roi = (0, 300, 0, 300)
    zoom.transform(torch.zeros(1, 4, 600, 800), [mh.Click(150, 150, True), mh.Click(5, 5, False)])
    assert zoom.roi == (50, 250, 50, 250)
    assert zi.roi_iou((0, 9, 0, 9), (5, 14, 0, 9)) == pytest.approx(5 / 15)


def test_first_click_runs_on_the_whole_image_and_later_ones_zoom(network):
    image = np.asarray(Image.open(ASTRONAUT).convert("RGB"))[100:172, 200:248]  # 72 x 48, non-square
    inputs = []
    hook = network.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    head = network.feature_extractor.cls_head
    original = head.weight.clone(), head.bias.clone()
    try:
        with torch.no_grad():  # logits = the bias everywhere: probability sigmoid(5) = 0.993
            head.weight.zero_()
            head.bias.fill_(5.0)
        probs = mh.predict(network, image, [mh.Click(30, 20, True), mh.Click(40, 25, True)])
        assert probs.shape == (72, 48)
        np.testing.assert_allclose(probs, 1 / (1 + math.exp(-5)), rtol=1e-5)
        # Pass 1: the image and its flip, previous mask zero. Pass 2: the RoI (whole image; the min crop
        # is larger) at 400 px on its longer side, previous mask = pass 1's prediction.
        assert [tuple(x.shape) for x in inputs] == [(2, 4, 72, 48), (2, 4, 400, 267)]
        assert inputs[0][:, 3].eq(0).all() and inputs[1][:, 3].gt(0.99).all()
        torch.testing.assert_close(inputs[0][1], torch.flip(inputs[0][0], dims=[2]))
        inputs.clear()
        with torch.no_grad():
            head.bias.fill_(-5.0)  # nothing above 0.5: no object to zoom on
        mh.predict(network, image, [mh.Click(30, 20, True), mh.Click(40, 25, False)])
        assert [tuple(x.shape) for x in inputs] == [(2, 4, 72, 48), (2, 4, 72, 48)]
    finally:
        hook.remove()
        with torch.no_grad():
            head.weight.copy_(original[0])
            head.bias.copy_(original[1])


# --- threshold ----------------------------------------------------------------------------------

def test_mask_is_probability_strictly_above_the_threshold(network, monkeypatch):
    model = mh.HRNetRITM.__new__(mh.HRNetRITM)
    model.network = network
    probs = np.array([[0.2, 0.5], [0.50001, 0.9]], np.float32)
    monkeypatch.setattr(mh, "predict", lambda network, image, clicks: probs)

    def interaction(threshold):
        return Interaction(np.zeros((2, 2, 3), np.uint8), np.array([[0.0, 0.0]]), np.zeros((0, 2)), None, threshold)

    assert model.segment(interaction(0.5)).mask.tolist() == [[False, False], [True, True]]
    assert model.segment(interaction(0.0)).mask.tolist() == [[True, True], [True, True]]
    assert model.segment(interaction(0.9)).mask.tolist() == [[False, False], [False, False]]
    assert model.segment(interaction(0.5)).confidence == pytest.approx((0.50001 + 0.9) / 2)


# --- the served function ------------------------------------------------------------------------

def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_served_function_answers_a_full_image_mask(hrnet_function):
    image = np.asarray(Image.open(ASTRONAUT).convert("RGB"))[60:124, 150:246]  # 64 high, 96 wide
    # One click: one pass on the small image (more clicks zoom to 400 px: too slow for a shared CI box).
    body = {"image": png_b64(image), "pos_points": [[60, 20]], "neg_points": [], "obj_bbox": None}
    reply = hrnet_function.http.post("/", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    mask = np.array(reply.json()["mask"])
    assert mask.shape == (64, 96)
    assert set(np.unique(mask)) <= {0, 255}
    # Threshold 0 keeps every pixel with a non-zero probability; 1 keeps none.
    everything = np.array(hrnet_function.http.post("/", json={**body, "threshold": 0.0}).json()["mask"])
    nothing = np.array(hrnet_function.http.post("/", json={**body, "threshold": 1.0}).json()["mask"])
    assert (everything >= mask).all() and (everything == 255).any() and not nothing.any()


def test_shapes_reply_is_the_mask_with_the_mean_probability_over_it(hrnet_function, network):
    image = np.asarray(Image.open(ASTRONAUT).convert("RGB"))[60:124, 150:246]  # 64 high, 96 wide
    body = {"image": png_b64(image), "pos_points": [[60, 20]], "neg_points": [], "obj_bbox": None, "threshold": 0.3}
    # With CVAT 2.60+'s text prompts, which HRNET ignores.
    full, attributes = interactor_shapes_reply(hrnet_function, body, ["astronaut"])
    (attribute,) = attributes
    # The probabilities above the threshold, from the same checkpoint in this process.
    probabilities = mh.predict(network, image, [mh.Click(20.0, 60.0, True)])
    assert attribute["spec_id"] == 0 and 0.3 < float(attribute["value"]) <= 1
    assert float(attribute["value"]) == pytest.approx(probabilities[full == 255].mean(dtype=np.float64), abs=1e-3)


@pytest.mark.parametrize("change, message", [
    ({"pos_points": []}, "'pos_points' needs at least 1 point"),
    ({"pos_points": None}, "'pos_points' must be a list"),
    ({"pos_points": [[97, 10]]}, "outside the 96x64 image"),
    ({"neg_points": [[1]]}, "'neg_points[0]' must be [x, y]"),
    ({"threshold": 1.5}, "'threshold' must be between 0 and 1"),
    ({"image": "not base64!"}, "image"),
])
def test_bad_input_is_a_400_naming_the_problem(hrnet_function, change, message):
    image = np.zeros((64, 96, 3), np.uint8)
    body = {"image": png_b64(image), "pos_points": [[10, 10]], "neg_points": [], **change}
    reply = hrnet_function.http.post("/", json=body)
    assert reply.status_code == 400, reply.text
    assert message in reply.text


def test_missing_pos_points_key_is_a_400(hrnet_function):
    reply = hrnet_function.http.post("/", json={"image": png_b64(np.zeros((8, 8, 3), np.uint8))})
    assert reply.status_code == 400 and "'pos_points' is required" in reply.text
