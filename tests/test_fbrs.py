"""CVAT's "f-BRS" (DeepLabV3+ ResNet-101 dh256 with f-BRS-B, in plain PyTorch).

The official checkpoint (resnet101_dh256_sbd.pth) is not on this machine, so the tests write a
random one in its format (a plain state dict of tensors, converted from MXNet: no BN batch
counters), with names and shapes derived here from isegm's module structure, not from the code
under test. Click encodings, click disks, resizing and the BRS loss are checked against numbers
worked out by hand; the refinement is checked to pull a random network's prediction towards the
clicks; the function is served for real and called over HTTP.
"""

import base64
import io
import math
from collections import OrderedDict

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

FBRS_FUNCTION = REPO / "serverless/pytorch/saic-vul/fbrs/nuclio"
ASTRONAUT = TESTDATA / "skimage/astronaut.png"  # 512 x 512

mh = function_module(FBRS_FUNCTION)
net = function_module(FBRS_FUNCTION, "network")
brs = function_module(FBRS_FUNCTION, "brs")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two torch threads per process on a shared 2-core machine spin far more than they compute.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def isegm_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of isegm's get_deeplab_model('resnet101', deeplab_ch=256) state dict (BN batch
    counters aside), by isegm's module structure: DistMapsModel(rgb_conv, feature_extractor =
    DeepLabV3Plus(backbone = ResNetBackbone(resnet101_v1s), head, skip_project, aspp), head = SepConvHead)."""
    shapes = StateDictShapes(batches_tracked=False)
    conv, bn = shapes.conv, shapes.bn

    def separable(name, in_channels, out_channels):  # body: depthwise, pointwise, BN, ReLU
        shapes[f"{name}.body.0.weight"] = (in_channels, 1, 3, 3)
        conv(f"{name}.body.1", out_channels, in_channels, 1)
        bn(f"{name}.body.2", out_channels)

    conv("rgb_conv.0", 8, 5, 1, bias=True)  # Conv, LeakyReLU, BN, Conv
    bn("rgb_conv.2", 8)
    conv("rgb_conv.3", 3, 8, 1, bias=True)
    backbone = "feature_extractor.backbone"
    # Deep stem: conv, BN, ReLU, conv, BN, ReLU, conv (64, 64, 128 channels), then bn1.
    conv(f"{backbone}.conv1.0", 64, 3, 3)
    bn(f"{backbone}.conv1.1", 64)
    conv(f"{backbone}.conv1.3", 64, 64, 3)
    bn(f"{backbone}.conv1.4", 64)
    conv(f"{backbone}.conv1.6", 128, 64, 3)
    bn(f"{backbone}.bn1", 128)
    in_channels = 128
    for layer, (blocks, planes) in enumerate(zip((3, 4, 23, 3), (64, 128, 256, 512)), start=1):
        for index in range(blocks):
            block = f"{backbone}.layer{layer}.{index}"
            conv(f"{block}.conv1", planes, in_channels, 1)
            bn(f"{block}.bn1", planes)
            conv(f"{block}.conv2", planes, planes, 3)
            bn(f"{block}.bn2", planes)
            conv(f"{block}.conv3", 4 * planes, planes, 1)
            bn(f"{block}.bn3", 4 * planes)
            if index == 0:
                conv(f"{block}.downsample.0", 4 * planes, in_channels, 1)
                bn(f"{block}.downsample.1", 4 * planes)
            in_channels = 4 * planes
    separable("feature_extractor.head.block.0", 288, 256)
    separable("feature_extractor.head.block.1", 256, 256)
    conv("feature_extractor.head.block.2", 256, 256, 1, bias=True)
    conv("feature_extractor.skip_project.skip_project.0", 32, 256, 1)
    bn("feature_extractor.skip_project.skip_project.1", 32)
    aspp = "feature_extractor.aspp"
    conv(f"{aspp}.concurent.0.0", 256, 2048, 1)
    bn(f"{aspp}.concurent.0.1", 256)
    for branch in (1, 2, 3):
        conv(f"{aspp}.concurent.{branch}.0", 256, 2048, 3)
        bn(f"{aspp}.concurent.{branch}.1", 256)
    conv(f"{aspp}.concurent.4.gap.1", 256, 2048, 1)  # gap: pooling, conv, BN, ReLU
    bn(f"{aspp}.concurent.4.gap.2", 256)
    conv(f"{aspp}.project.0", 256, 1280, 1)
    bn(f"{aspp}.project.1", 256)
    separable("head.layers.0", 256, 128)
    separable("head.layers.1", 128, 128)
    conv("head.layers.2", 1, 128, 1, bias=True)
    return shapes


def random_state_dict(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """He-scaled convs, identity batch norms with the last norm of each residual block damped, and a
    damped final conv: logits spread around 0 on a small image, so probabilities are not saturated
    and the refinement has gradients to follow."""
    rng = np.random.default_rng(seed)
    state = OrderedDict()
    for name, shape in isegm_shapes().items():
        if name.endswith(("running_mean", ".bias")):
            value = np.zeros(shape, np.float32)
        elif name.endswith("running_var"):
            value = np.ones(shape, np.float32)
        elif len(shape) == 1:
            value = np.full(shape, 0.2 if ".bn3." in name else 1.0, np.float32)
        else:
            std = math.sqrt(2.0 / int(np.prod(shape[1:]))) * (0.1 if name == "head.layers.2.weight" else 1.0)
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        state[name] = torch.from_numpy(value)
    return state


weights, checkpoint_dir = checkpoint_fixtures("fbrs", mh.CHECKPOINT, random_state_dict)


@pytest.fixture(scope="module")
def fbrs(checkpoint_dir):
    return mh.FBRS(checkpoint_dir / mh.CHECKPOINT)


def interaction(image: np.ndarray, pos, neg=(), threshold=0.5) -> Interaction:
    return Interaction(image, np.asarray(pos, float).reshape(-1, 2), np.asarray(neg, float).reshape(-1, 2),
                       None, threshold)


def small_image(width: int, height: int, left: int = 200, top: int = 180) -> np.ndarray:
    return np.asarray(Image.open(ASTRONAUT).convert("RGB"))[top:top + height, left:left + width]


# --- function files -----------------------------------------------------------------------------

def test_function_yaml_is_cvats_interactor():
    config = yaml.safe_load((FBRS_FUNCTION / "function.yaml").read_text())
    meta = FunctionMeta.from_nuclio(config)
    assert (meta.id, meta.name, meta.kind, meta.version) == ("pth-saic-vul-fbrs", "f-BRS", "interactor", 2)
    assert (meta.min_pos_points, meta.min_neg_points) == (1, 0)
    assert not meta.startswith_box and "startswith_box" not in config["metadata"]["annotations"]
    assert meta.labels == ()
    assert meta.description == "f-BRS interactive segmentation"
    assert meta.help_message == ("The interactor allows to get a mask for an object using positive points, "
                                 "and negative points")
    assert meta.animated_gif == ("https://raw.githubusercontent.com/cvat-ai/cvat/"
                                 "0fbb19ae3846a017853d52e187f0ce149adced7d/site/content/en/images/fbrs_example.gif")
    assert config["spec"]["runtime"] == "python:3.11" and config["spec"]["handler"] == "main:handler"
    assert not (FBRS_FUNCTION / "function-gpu.yaml").exists()  # CVAT ships no GPU variant of f-BRS


# --- checkpoint format and names ------------------------------------------------------------------

def test_network_has_exactly_isegms_names_and_shapes():
    with torch.device("meta"):
        state = net.FbrsDeepLab().state_dict()
    tensors = {name: tuple(t.shape) for name, t in state.items() if not name.endswith("num_batches_tracked")}
    assert tensors == isegm_shapes()
    # isegm's load_deeplab_is_model calls a checkpoint ResNet-101 when it has 277..531 backbone tensors.
    assert len([name for name in tensors if "feature_extractor.backbone" in name]) == 530


def test_random_checkpoint_in_official_format_loads_without_missing_or_unexpected_keys(fbrs, checkpoint_dir):
    # load_network refuses any missing, unexpected or mis-shaped key; reaching here means none.
    state = torch.load(checkpoint_dir / mh.CHECKPOINT, weights_only=True)
    assert isinstance(state, OrderedDict) and not any("num_batches_tracked" in name for name in state)
    assert not fbrs.network.training
    assert not any(p.requires_grad for p in fbrs.network.parameters())
    torch.testing.assert_close(fbrs.network.head.layers[2].weight, state["head.layers.2.weight"])
    torch.testing.assert_close(fbrs.network.feature_extractor.backbone.layer3[22].bn3.running_var,
                               state["feature_extractor.backbone.layer3.22.bn3.running_var"])


def test_pytorch_saved_state_dicts_with_batch_counters_and_dropout_rate_load(tmp_path):
    state = random_state_dict(seed=1)
    state.update({name.replace("running_var", "num_batches_tracked"): torch.tensor(7)
                  for name in list(state) if name.endswith("running_var")})
    state["aspp_dropout"] = torch.tensor(0.5)
    torch.save(state, tmp_path / "saved.pth")
    network = net.load_network(tmp_path / "saved.pth")
    assert int(network.rgb_conv[2].num_batches_tracked) == 0


def test_wrong_checkpoints_are_refused_with_the_reason(tmp_path):
    state = random_state_dict(seed=2)
    renamed = OrderedDict(state)
    renamed["head.layers.3.bias"] = renamed.pop("head.layers.2.bias")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['head.layers.2.bias'\], 1 unexpected key\(s\) "
                                         r"\['head.layers.3.bias'\]"):
        net.load_network(tmp_path / "renamed.pth")
    # A dh128 checkpoint (deeplab_ch 128) has the same names with other shapes.
    torch.save(OrderedDict(state, **{"feature_extractor.aspp.project.0.weight": torch.zeros(128, 640, 1, 1)}),
               tmp_path / "dh128.pth")
    with pytest.raises(ValueError, match=r"feature_extractor.aspp.project.0.weight has shape \(128, 640, 1, 1\)"):
        net.load_network(tmp_path / "dh128.pth")
    torch.save({"feature_extractor.stage2.0.branches.0.0.conv1.weight": torch.zeros(1)}, tmp_path / "hrnet.pth")
    with pytest.raises(ValueError, match="HRNet checkpoint"):
        net.load_network(tmp_path / "hrnet.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict, got list"):
        net.load_network(tmp_path / "list.pth")


# --- clicks ---------------------------------------------------------------------------------------

def test_clicks_are_y_x_positive_first():
    clicks = mh.clicks_of(interaction(np.zeros((30, 40, 3), np.uint8), pos=[[35, 3], [1, 2]], neg=[[10, 20]]))
    assert clicks == [mh.Click(True, 3.0, 35.0), mh.Click(True, 2.0, 1.0), mh.Click(False, 20.0, 10.0)]


def test_click_points_pad_each_group_and_keep_the_first_eight_clicks():
    a = [mh.Click(True, 1, 2), mh.Click(True, 3, 4), mh.Click(False, 5, 6)]
    points = mh.click_points([a])
    assert points.tolist() == [[[1, 2], [3, 4], [5, 6], [-1, -1]]]  # 2 positive, then 2 negative slots
    assert mh.click_points([[mh.Click(True, 1, 2)]]).tolist() == [[[1, 2], [-1, -1]]]
    # 10 positive clicks then one negative: the network sees the first 8, so no negative at all.
    many = [mh.Click(True, i, i) for i in range(10)] + [mh.Click(False, 50, 50)]
    points = mh.click_points([many])
    assert points.shape == (1, 16, 2)
    assert points[0, :8].tolist() == [[i, i] for i in range(8)] and (points[0, 8:] == -1).all()


def test_dist_maps_match_hand_computation():
    # One positive click at row 1, column 2 of a 5 x 7 image; two negatives; padding slots ignored.
    points = torch.tensor([[[1.0, 2.0], [-1.0, -1.0], [0.0, 6.0], [4.0, 0.0]]])
    maps = net.dist_maps(points, 5, 7)
    assert maps.shape == (1, 2, 5, 7)
    assert maps[0, 0, 1, 2] == 0  # the click itself: row y, column x
    assert maps[0, 0, 4, 6].item() == pytest.approx(math.tanh(2 * 5 / 260), rel=1e-6)  # distance sqrt(3^2 + 4^2)
    assert maps[0, 0, 1, 0].item() == pytest.approx(math.tanh(2 * 2 / 260), rel=1e-6)
    # Negative channel: the nearer of (0, 6) and (4, 0).
    assert maps[0, 1, 0, 6] == 0 and maps[0, 1, 4, 0] == 0
    assert maps[0, 1, 2, 1].item() == pytest.approx(math.tanh(2 * math.sqrt(5) / 260), rel=1e-6)  # to (4, 0)
    # No click of a kind: everything infinitely far, tanh(2 * 1000) = 1.
    assert (net.dist_maps(torch.tensor([[[1.0, 2.0], [-1.0, -1.0]]]), 5, 7)[0, 1] == 1).all()


def test_click_disks_are_rounded_three_by_three_squares_clipped_at_the_edges():
    positive, negative = mh.click_disks([[mh.Click(True, 2.4, 3.6), mh.Click(False, 0, 0)]], (6, 8))
    expected_positive = np.zeros((6, 8))
    expected_positive[1:4, 3:6] = 1  # (2.4, 3.6) rounds to (2, 4)
    expected_negative = np.zeros((6, 8))
    expected_negative[0:2, 0:2] = 1
    np.testing.assert_array_equal(positive[0, 0].numpy(), expected_positive)
    np.testing.assert_array_equal(negative[0, 0].numpy(), expected_negative)


# --- geometry ---------------------------------------------------------------------------------------

def test_longest_side_is_limited_to_800_and_clicks_follow():
    assert mh.limited_size(1080, 810) == (800, 600)
    assert mh.limited_size(600, 800) == (600, 800)  # fits: unchanged
    assert mh.limited_size(24, 900) == (21, 800)  # 24 * 800 / 900 = 21.33
    scaled = mh.scale_clicks([mh.Click(True, 540.0, 405.0), mh.Click(False, 0.0, 809.0)], (1080, 810), (800, 600))
    assert scaled[0] == mh.Click(True, 400.0, 300.0)
    assert scaled[1].y == 0.0 and scaled[1].x == pytest.approx(809 * 600 / 810)
    assert mh.mirror_clicks([mh.Click(True, 3.0, 0.0), mh.Click(False, 1.0, 9.5)], 10) == [
        mh.Click(True, 3.0, 9.0), mh.Click(False, 1.0, -0.5)]


def test_large_images_are_predicted_at_800_and_resized_back(fbrs):
    image = np.concatenate([np.asarray(Image.open(ASTRONAUT).convert("RGB"))[250:266]] * 2, axis=1)[:, :850]
    probabilities = mh.predict_probabilities(fbrs.network, fbrs.normalise(image), [mh.Click(True, 8.0, 600.0)], 0.5)
    assert probabilities.shape == (16, 850)
    # The same click on the image resized to 800 x 15 (as LimitLongestSide does), resized back by hand.
    resized = torch.nn.functional.interpolate(fbrs.normalise(image), size=(15, 800), mode="bilinear",
                                              align_corners=True)
    small = mh.predict_probabilities(fbrs.network, resized, [mh.Click(True, 8.0 * 15 / 16, 600.0 * 800 / 850)], 0.5)
    back = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=(16, 850), mode="bilinear",
                                           align_corners=True)[0, 0].numpy()
    np.testing.assert_allclose(probabilities, back, atol=1e-5)


# --- f-BRS-B ------------------------------------------------------------------------------------------

def test_click_loss_and_stopping_match_hand_computation():
    positive = torch.zeros(1, 1, 2, 2)
    positive[0, 0, 0, 0] = 1
    negative = torch.zeros(1, 1, 2, 2)
    negative[0, 0, 1, 1] = 1
    base = torch.tensor([[[[0.0, 5.0], [5.0, math.log(3)]]]])  # p = 0.5 on the positive, 0.75 on the negative

    def logits_of(scale, bias):  # s and b shift every logit by their sums
        return base + (scale - 1).sum() + bias.sum()

    objective = brs.ScaleBiasObjective(logits_of, positive, negative, prob_thresh=0.5)
    params = torch.zeros(4)
    params[0] = 0.5  # scale 1.5 for the first channel: logits + 0.5
    loss, gradient = objective(params)
    p_pos, p_neg = torch.sigmoid(torch.tensor(0.5)).item(), torch.sigmoid(torch.tensor(math.log(3) + 0.5)).item()
    expected = (1 - p_pos) ** 2 / (1 + 1e-5) + p_neg ** 2 / (1 + 1e-5) + 1e-3 * 0.5 ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert gradient.abs().sum() > 0 and objective.best_loss == pytest.approx(expected, rel=1e-5)

    # Both disks on their side of the threshold (p > 0.5 on the positive, < 0.5 on the negative): no gradient.
    satisfied = brs.ScaleBiasObjective(lambda s, b: torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]]]) + 0 * s.sum(),
                                       positive, negative, prob_thresh=0.5)
    _, gradient = satisfied(torch.zeros(4))
    assert (gradient == 0).all()


def test_refinement_pulls_the_prediction_towards_the_clicks(fbrs):
    """On the random network: a positive click where it is least sure of the object and a negative one
    where it is surest; after f-BRS the first has a higher probability, the second a lower one."""
    image = fbrs.normalise(small_image(64, 48))
    plain = mh.predict_probabilities(fbrs.network, image, [mh.Click(True, 24.0, 32.0)], 0.5)
    low = mh.Click(True, *map(float, np.unravel_index(plain.argmin(), plain.shape)))
    high = mh.Click(False, *map(float, np.unravel_index(plain.argmax(), plain.shape)))
    clicks = [low, high]
    click_lists = [clicks, mh.mirror_clicks(clicks, 64)]
    images = torch.cat((image, image.flip(3)))
    with torch.no_grad():
        features = fbrs.network.head_input(images, mh.click_points(click_lists))

    def logits_of(scale, bias):
        return fbrs.network.logits(features * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), (48, 64))

    positive, negative = mh.click_disks(click_lists, (48, 64))
    with torch.no_grad():
        before = torch.sigmoid(logits_of(torch.ones(288), torch.zeros(288)))
    after = torch.sigmoid(brs.optimise_scale_bias(logits_of, positive, negative, 0.5))

    def at(p, click):
        return p[0, 0, int(click.y), int(click.x)].item()

    assert before[0, 0].min() < 0.5 < before[0, 0].max()
    assert at(after, low) > at(before, low) + 0.2
    assert at(after, high) < at(before, high) - 0.2
    assert at(after, high) < 0.5  # the negative click now lies outside the mask

    # Through the predictor: with two clicks it refines, so its mask agrees with the clicks.
    probabilities = mh.predict_probabilities(fbrs.network, image, clicks, 0.5)
    assert probabilities[int(high.y), int(high.x)] < 0.5 < probabilities[int(low.y), int(low.x)]


def test_mask_is_probability_above_the_request_threshold_in_image_orientation(fbrs):
    image = small_image(40, 24)  # wider than high
    probabilities = mh.predict_probabilities(fbrs.network, fbrs.normalise(image), [mh.Click(True, 5.0, 30.0)], 0.3)
    masks = {}
    for threshold in (0.3, 0.7):
        result = fbrs.segment(interaction(image, pos=[[30, 5]], threshold=threshold))
        masks[threshold] = result.mask
        assert masks[threshold].shape == (24, 40)
        # One click: no refinement, so the same map; the confidence is its mean over the mask.
        np.testing.assert_array_equal(masks[threshold], probabilities > threshold)
        assert result.confidence == pytest.approx(probabilities[probabilities > threshold].mean(dtype=np.float64))
    assert masks[0.3].sum() > masks[0.7].sum() > 0
    # Flip averaging makes the predictor mirror-symmetric: x is the column, not the row.
    mirrored = fbrs.segment(interaction(image[:, ::-1], pos=[[40 - 1 - 30, 5]], threshold=0.3))
    np.testing.assert_array_equal(mirrored.mask, masks[0.3][:, ::-1])


# --- the served function ------------------------------------------------------------------------------

def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def fbrs_function(checkpoint_dir, tmp_path_factory):
    folder = copy_function(FBRS_FUNCTION, tmp_path_factory.mktemp("function") / "nuclio",
                           **{"spec.triggers.myHttpTrigger.numWorkers": 1})  # one model in memory is enough here
    with serve_function(folder, env={"FBRS_MODEL_PATH": str(checkpoint_dir), "OMP_NUM_THREADS": "1"}) as running:
        yield running


def test_served_function_answers_a_full_image_mask(fbrs_function, fbrs):
    image = small_image(64, 40)
    body = {"image": png_b64(image), "pos_points": [[20, 30]], "neg_points": [[60, 2]], "threshold": 0.5}
    reply = fbrs_function.http.post("/", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    mask = np.asarray(reply.json()["mask"])
    assert mask.shape == (40, 64) and set(np.unique(mask)) <= {0, 255}
    expected = fbrs.segment(interaction(image, pos=[[20, 30]], neg=[[60, 2]])).mask
    assert (mask.astype(bool) == expected).mean() > 0.99  # same computation, other process

    # Longer than 800 px: predicted at 800 and answered at the image's own size; default threshold.
    strip = np.concatenate([np.asarray(Image.open(ASTRONAUT).convert("RGB"))[300:316]] * 2, axis=1)[:, :850]
    reply = fbrs_function.http.post("/", json={"image": png_b64(strip), "pos_points": [[700, 8]], "neg_points": []})
    assert reply.status_code == 200, reply.text
    assert np.asarray(reply.json()["mask"]).shape == (16, 850)


def test_shapes_reply_is_the_mask_with_the_mean_probability_over_it(fbrs_function, fbrs):
    image = small_image(64, 40)
    body = {"image": png_b64(image), "pos_points": [[20, 30]], "neg_points": [], "threshold": 0.3}  # one click: fast
    # With CVAT 2.60+'s text prompts, which f-BRS ignores.
    full, attributes = interactor_shapes_reply(fbrs_function, body, ["a shoulder"])
    (attribute,) = attributes
    expected = fbrs.segment(interaction(image, pos=[[20, 30]], threshold=0.3)).confidence
    assert attribute["spec_id"] == 0 and 0.3 < float(attribute["value"]) <= 1
    assert float(attribute["value"]) == pytest.approx(expected, abs=1e-3)  # same computation, other process


@pytest.mark.parametrize("change, message", [
    ({"pos_points": []}, "'pos_points' needs at least 1 point"),
    ({"pos_points": None}, "'pos_points' must be a list"),
    ({"pos_points": [[64.5, 3]]}, "outside the 64x40 image"),
    ({"neg_points": [[1]]}, "'neg_points[0]' must be [x, y]"),
    ({"threshold": 1.5}, "'threshold' must be between 0 and 1"),
    ({"image": "not base64"}, "image"),
])
def test_bad_requests_are_400_with_the_reason(fbrs_function, change, message):
    body = {"image": png_b64(small_image(64, 40)), "pos_points": [[20, 30]], "neg_points": [], **change}
    reply = fbrs_function.http.post("/", json=body)
    assert reply.status_code == 400 and message in reply.text, reply.text


def test_missing_pos_points_is_400(fbrs_function):
    reply = fbrs_function.http.post("/", json={"image": png_b64(small_image(64, 40)), "neg_points": []})
    assert reply.status_code == 400 and "'pos_points' is required" in reply.text, reply.text
