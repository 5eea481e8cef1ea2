"""CVAT's "RetinaNet R101" (detectron2's retinanet_R_101_FPN_3x in plain PyTorch).

The official checkpoint (model_final_971ab9.pkl) is not on this machine, so the tests write a
random one in its exact format ({"model": {name: numpy array}, "__author__": ...}), with the names
and shapes derived here from detectron2's naming rules, not from the code under test. Anchors, box
decoding, NMS and labels are checked against numbers worked out by hand; the function is served
for real and called over HTTP.
"""

import base64
import io
import math
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from serverless.common.metadata import FunctionMeta

from checkpoints import checkpoint_fixtures
from helpers import REPO, TESTDATA, b64_file, function_module, serve_function

RETINANET_FUNCTION = REPO / "serverless/pytorch/facebookresearch/detectron2/retinanet_r101/nuclio"
BUS = TESTDATA / "ultralytics/bus.jpg"  # 810 x 1080

# docs/wire-format.md §1.10, as CVAT's function.yaml lists them: COCO ids, underscores.
COCO_LABELS = """1 person, 2 bicycle, 3 car, 4 motorcycle, 5 airplane, 6 bus, 7 train, 8 truck, 9 boat,
10 traffic_light, 11 fire_hydrant, 13 stop_sign, 14 parking_meter, 15 bench, 16 bird, 17 cat, 18 dog,
19 horse, 20 sheep, 21 cow, 22 elephant, 23 bear, 24 zebra, 25 giraffe, 27 backpack, 28 umbrella,
31 handbag, 32 tie, 33 suitcase, 34 frisbee, 35 skis, 36 snowboard, 37 sports_ball, 38 kite,
39 baseball_bat, 40 baseball_glove, 41 skateboard, 42 surfboard, 43 tennis_racket, 44 bottle,
46 wine_glass, 47 cup, 48 fork, 49 knife, 50 spoon, 51 bowl, 52 banana, 53 apple, 54 sandwich,
55 orange, 56 broccoli, 57 carrot, 58 hot_dog, 59 pizza, 60 donut, 61 cake, 62 chair, 63 couch,
64 potted_plant, 65 bed, 67 dining_table, 70 toilet, 72 tv, 73 laptop, 74 mouse, 75 remote,
76 keyboard, 77 cell_phone, 78 microwave, 79 oven, 80 toaster, 81 sink, 83 refrigerator, 84 book,
85 clock, 86 vase, 87 scissors, 88 teddy_bear, 89 hair_drier, 90 toothbrush"""
SPEC = {int(coco_id): name for coco_id, name in (entry.split() for entry in COCO_LABELS.split(","))}


mh = function_module(RETINANET_FUNCTION)
net = function_module(RETINANET_FUNCTION, "network")


def detectron2_shapes() -> dict[str, tuple[int, ...]]:
    """Every state_dict entry of detectron2's RetinaNet R101-FPN with its shape, by detectron2's rules:
    ResNet convs have no bias and a FrozenBatchNorm2d ``norm``; FPN, top block and head convs have a bias."""
    shapes = {}

    def conv(name, out_channels, in_channels, kernel, norm):
        shapes[f"{name}.weight"] = (out_channels, in_channels, kernel, kernel)
        for part in ("weight", "bias", "running_mean", "running_var") if norm else ("bias",):
            shapes[f"{name}.norm.{part}" if norm else f"{name}.{part}"] = (out_channels,)

    conv("backbone.bottom_up.stem.conv1", 64, 3, 7, norm=True)
    in_channels = 64
    for stage, blocks, bottleneck in ((2, 3, 64), (3, 4, 128), (4, 23, 256), (5, 3, 512)):
        out_channels = 4 * bottleneck
        for index in range(blocks):
            block = f"backbone.bottom_up.res{stage}.{index}"
            if index == 0:
                conv(f"{block}.shortcut", out_channels, in_channels, 1, norm=True)
            conv(f"{block}.conv1", bottleneck, in_channels if index == 0 else out_channels, 1, norm=True)
            conv(f"{block}.conv2", bottleneck, bottleneck, 3, norm=True)
            conv(f"{block}.conv3", out_channels, bottleneck, 1, norm=True)
        in_channels = out_channels
    for stage, channels in ((3, 512), (4, 1024), (5, 2048)):
        conv(f"backbone.fpn_lateral{stage}", 256, channels, 1, norm=False)
        conv(f"backbone.fpn_output{stage}", 256, 256, 3, norm=False)
    conv("backbone.top_block.p6", 256, 2048, 3, norm=False)  # P6 from C5, as RetinaNet builds it
    conv("backbone.top_block.p7", 256, 256, 3, norm=False)
    for subnet in ("cls_subnet", "bbox_subnet"):
        for index in (0, 2, 4, 6):  # conv, ReLU, conv, ReLU, ... in an nn.Sequential
            conv(f"head.{subnet}.{index}", 256, 256, 3, norm=False)
    conv("head.cls_score", 9 * 80, 256, 3, norm=False)
    conv("head.bbox_pred", 9 * 4, 256, 3, norm=False)
    return shapes


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights that keep activations moderate and give scores spread around 0.5 on bus.jpg
    (about 85 boxes at threshold 0, 20 at 0.5): He-scaled backbone with the last norm of each
    residual block damped, damped FPN and P6/P7, detectron2's head init (std 0.01, cls_score bias
    at the 0.01 prior)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in detectron2_shapes().items():
        if name.endswith(("running_mean", ".bias")):
            value = np.zeros(shape, np.float32)
        elif name.endswith("running_var"):
            value = np.ones(shape, np.float32)
        elif name.endswith("norm.weight"):
            value = np.full(shape, 0.2 if ".conv3." in name else 1.0, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            std = (0.01 if name.startswith("head.") else math.sqrt(2.0 / fan_in) if "bottom_up" in name
                   else 0.45 / math.sqrt(fan_in))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        weights[name] = value
    weights["head.cls_score.bias"][:] = -math.log((1 - 0.01) / 0.01)
    return weights


def write_checkpoint(path, model: dict, protocol: int = pickle.HIGHEST_PROTOCOL, **extra):
    with open(path, "wb") as stream:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo", **extra}, stream, protocol=protocol)
    return path


weights, checkpoint_dir = checkpoint_fixtures("retinanet-r101", mh.CHECKPOINT, random_weights, write_checkpoint)


@pytest.fixture(scope="module")
def network(checkpoint_dir):
    return net.load_network(checkpoint_dir / mh.CHECKPOINT)


@pytest.fixture(scope="module")
def retinanet_function(checkpoint_dir):
    with serve_function(RETINANET_FUNCTION, env={"RETINANET_MODEL_PATH": str(checkpoint_dir)}) as running:
        yield running


def spec_labels(path):
    meta = FunctionMeta.from_nuclio(yaml.safe_load(path.read_text()))
    return {label.id: (label.name, label.type) for label in meta.labels}


# --- function files ---------------------------------------------------------------------------

def test_spec_is_cvats_coco_list_with_underscores():
    assert spec_labels(RETINANET_FUNCTION / "function.yaml") == {i: (n, "rectangle") for i, n in SPEC.items()}
    assert len(SPEC) == 80


def test_gpu_file_differs_only_where_cvats_does():
    cpu = yaml.safe_load((RETINANET_FUNCTION / "function.yaml").read_text())
    gpu = yaml.safe_load((RETINANET_FUNCTION / "function-gpu.yaml").read_text())
    assert gpu["metadata"] == cpu["metadata"]
    assert gpu["spec"]["description"] == "RetinaNet R101 from Detectron2 optimized for GPU"
    assert gpu["spec"]["triggers"]["myHttpTrigger"]["numWorkers"] == 1
    assert gpu["spec"]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert gpu["spec"]["build"] == {key: f"{value}:latest-gpu" for key, value in cpu["spec"]["build"].items()}
    for key in ("runtime", "handler", "eventTimeout", "platform"):
        assert gpu["spec"][key] == cpu["spec"][key]


# --- checkpoint format and names ------------------------------------------------------------------

def test_network_has_exactly_detectron2s_names_and_shapes():
    with torch.device("meta"):
        state = net.RetinaNet().state_dict()
    assert {name: tuple(t.shape) for name, t in state.items()} == detectron2_shapes()
    assert len(state) == 556
    for name in ("backbone.bottom_up.stem.conv1.weight", "backbone.bottom_up.stem.conv1.norm.running_mean",
                 "backbone.bottom_up.res2.0.shortcut.norm.bias", "backbone.bottom_up.res3.3.conv2.weight",
                 "backbone.bottom_up.res4.22.conv3.norm.running_var", "backbone.bottom_up.res5.2.conv1.norm.weight",
                 "backbone.fpn_lateral3.bias", "backbone.fpn_output5.weight", "backbone.top_block.p6.weight",
                 "backbone.top_block.p7.weight", "head.cls_subnet.6.bias", "head.bbox_subnet.0.weight",
                 "head.cls_score.bias", "head.bbox_pred.weight"):
        assert name in state, name
    assert tuple(state["backbone.top_block.p6.weight"].shape) == (256, 2048, 3, 3)


def test_random_checkpoint_in_official_format_loads_without_missing_or_unexpected_keys(network, weights):
    # load_network refuses any missing, unexpected or mis-shaped key; reaching here means none.
    assert not network.training
    np.testing.assert_array_equal(network.head.cls_score.bias.numpy(), weights["head.cls_score.bias"])
    np.testing.assert_array_equal(network.backbone.top_block.p6.weight.numpy(), weights["backbone.top_block.p6.weight"])


def test_folded_network_computes_what_the_checkpoint_defines(network, weights):
    # Reference: the same modules with the frozen norms applied as separate ops, contiguous layout.
    reference = net.RetinaNet().eval()
    reference.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 50
    with torch.inference_mode():
        expected_logits, expected_deltas = reference(images)
        logits, deltas = network(images.contiguous(memory_format=torch.channels_last))
    for got, expected in zip(logits + deltas, expected_logits + expected_deltas):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_old_checkpoint_buffers_are_checked_and_skipped(tmp_path, weights):
    # detectron2 checkpoints from 2019/2020 also hold the cell anchors (and pixel mean/std) as buffers.
    ratio_half = [-22.627417, -11.3137085, 22.627417, 11.3137085]  # size 32, h/w 0.5: w = sqrt(2048)
    square = [-16.0, -16.0, 16.0, 16.0]
    ratio_two = [-11.3137085, -22.627417, 11.3137085, 22.627417]
    extras = {"pixel_mean": np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1),
              "pixel_std": np.ones((3, 1, 1), np.float32)}
    for level in range(5):  # sizes 32 * 2^(level + k/3): the corners scale with the size
        extras[f"anchor_generator.cell_anchors.{level}"] = np.array(
            [[v * 2 ** (level + k / 3) for v in anchor]
             for k in range(3) for anchor in (ratio_half, square, ratio_two)], np.float32)
    net.load_network(write_checkpoint(tmp_path / "old.pkl", {**weights, **extras}, matching_heuristics=False))

    extras["anchor_generator.cell_anchors.0"] = extras["anchor_generator.cell_anchors.0"][[1, 0, 2, 3, 4, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="anchor_generator.cell_anchors.0 does not match"):
        net.load_network(write_checkpoint(tmp_path / "reordered.pkl", {**weights, **extras}))


def test_misnamed_or_misshaped_keys_are_refused(tmp_path, weights):
    renamed = dict(weights)
    renamed["head.cls_logits.bias"] = renamed.pop("head.cls_score.bias")
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['head.cls_score.bias'\], 1 unexpected key\(s\) "
                                         r"\['head.cls_logits.bias'\]"):
        net.load_network(write_checkpoint(tmp_path / "renamed.pkl", renamed))
    misshaped = {**weights, "head.cls_score.bias": np.zeros(81 * 9, np.float32)}
    with pytest.raises(ValueError, match="head.cls_score.bias has shape"):
        net.load_network(write_checkpoint(tmp_path / "misshaped.pkl", misshaped))
    with pytest.raises(ValueError, match="matching heuristics"):
        net.read_checkpoint(write_checkpoint(tmp_path / "caffe2.pkl", {}, matching_heuristics=True))


@pytest.mark.parametrize("protocol, numpy_1_names", [(2, True), (3, True), (3, False), (5, False)])
def test_checkpoint_reader_takes_pickle_protocols_and_numpy_1_names(tmp_path, protocol, numpy_1_names):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32([0.5, -1.0])}
    path = write_checkpoint(tmp_path / "small.pkl", arrays, protocol=protocol)
    if numpy_1_names:
        # numpy < 2 wrote numpy.core.multiarray where numpy 2 writes numpy._core.multiarray (protocols
        # up to 3 name globals in newline-terminated text, so the bytes can be swapped in place).
        path.write_bytes(path.read_bytes().replace(b"numpy._core.", b"numpy.core."))
        assert b"numpy.core.multiarray\n_reconstruct" in path.read_bytes()
    model = net.read_checkpoint(path)
    assert model.keys() == arrays.keys()
    for name, value in arrays.items():
        np.testing.assert_array_equal(model[name], value)


def test_checkpoint_reader_never_runs_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "__author__": print}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        net.read_checkpoint(path)


# --- anchors, boxes, NMS, labels ----------------------------------------------------------------

def test_cell_anchors_are_size_major_then_ratio():
    cell = net.cell_anchors((32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)), (0.5, 1.0, 2.0))
    # Ratio r = h/w at area s*s: half width s/(2*sqrt(r)), half height s*sqrt(r)/2.
    expected = torch.tensor([
        [-22.627417, -11.313708, 22.627417, 11.313708],  # s = 32, r = 0.5: 16*sqrt(2), 8*sqrt(2)
        [-16.0, -16.0, 16.0, 16.0],  # s = 32, r = 1
        [-11.313708, -22.627417, 11.313708, 22.627417],  # s = 32, r = 2
        [-28.508759, -14.254379, 28.508759, 14.254379],  # s = 32*2^(1/3) = 40.317474
        [-20.158737, -20.158737, 20.158737, 20.158737],
        [-14.254379, -28.508759, 14.254379, 28.508759],
        [-35.918786, -17.959393, 35.918786, 17.959393],  # s = 32*2^(2/3) = 50.796834
        [-25.398417, -25.398417, 25.398417, 25.398417],
        [-17.959393, -35.918786, 17.959393, 35.918786],
    ])
    torch.testing.assert_close(cell, expected, rtol=0, atol=1e-4)


def test_grid_anchors_are_location_major_with_offset_zero():
    cell = torch.tensor([[-2.0, -1.0, 2.0, 1.0], [-3.0, -3.0, 3.0, 3.0]])
    anchors = mh.grid_anchors(cell, height=2, width=3, stride=8)
    expected = torch.tensor([
        [-2, -1, 2, 1], [-3, -3, 3, 3],  # row 0, column 0: centre (0, 0)
        [6, -1, 10, 1], [5, -3, 11, 3],  # row 0, column 1: centre (8, 0)
        [14, -1, 18, 1], [13, -3, 19, 3],  # row 0, column 2: centre (16, 0)
        [-2, 7, 2, 9], [-3, 5, 3, 11],  # row 1, column 0: centre (0, 8)
        [6, 7, 10, 9], [5, 5, 11, 11],
        [14, 7, 18, 9], [13, 5, 19, 11],
    ], dtype=torch.float32)
    torch.testing.assert_close(anchors, expected)


def test_head_outputs_flatten_in_anchor_order():
    # Channel a*K + k at (y, x) belongs to anchor a of location (y, x), class k.
    output = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(1, 2 * 3, 2, 2)  # A=2, K=3, H=W=2
    flat = mh.flatten_level(output, 3)
    assert flat.shape == (2 * 2 * 2, 3)
    # Row (y=0, x=1, a=1): channels 3, 4, 5 at position 1 -> values 3*4+1, 4*4+1, 5*4+1.
    assert flat[(0 * 2 + 1) * 2 + 1].tolist() == [13.0, 17.0, 21.0]


def test_box_decoding_matches_hand_computation():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), 10 x 20
    deltas = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0],  # centre (6, 6), 20 x 20
                           [0.0, 0.0, 10.0, 0.0]])  # dw clamped to log(1000/16): width 625
    torch.testing.assert_close(mh.decode_boxes(deltas, anchors),
                               torch.tensor([[-4.0, -4.0, 16.0, 16.0], [-307.5, 0.0, 317.5, 20.0]]))


def one_level(logit_rows: dict[int, dict[int, float]], anchors: list[list[float]]):
    """Per-level inputs for ``select_detections``: zero deltas, logits -20 except the given ones."""
    logits = torch.full((len(anchors), 80), -20.0)
    for anchor, classes in logit_rows.items():
        for class_index, value in classes.items():
            logits[anchor, class_index] = value
    return [logits], [torch.zeros(len(anchors), 4)], [torch.tensor(anchors)]


def test_nms_is_per_class():
    # A and B overlap (IoU 90/110); C is apart. Class 0 on A, B, C; class 5 on B.
    level = one_level({0: {0: 2.0}, 1: {0: 1.0, 5: 1.5}, 2: {0: 0.5}},
                      [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
    boxes, scores, classes = mh.select_detections(*level, score_threshold=0.05)
    assert classes.tolist() == [0, 5, 0]  # B's class 0 is suppressed by A; its class 5 is not
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(scores, [1 / (1 + math.exp(-x)) for x in (2.0, 1.5, 0.5)], rtol=1e-6)


def test_candidates_and_detections_are_capped():
    # 200 apart anchors x 80 classes all at score 0.5: 1000 candidates per level, 100 detections.
    anchors = [[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(200)]
    logits, deltas, anchor_list = one_level({}, anchors)
    logits[0].fill_(0.0)
    boxes, scores, classes = mh.select_detections(logits, deltas, anchor_list, score_threshold=0.0)
    assert len(boxes) == 100 and len(scores) == 100 and (scores == 0.5).all()


def test_every_class_index_comes_out_as_its_spec_name():
    # Defect 3: CVAT emits detectron2's "traffic light"; we emit the spec's names, all 80 of them.
    anchors = [[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(80)]
    boxes, scores, classes = mh.select_detections(*one_level({i: {i: 3.0} for i in range(80)}, anchors),
                                                  score_threshold=0.05)
    names = mh.class_names()
    items = mh.to_items(boxes, scores, classes, names, 0.5, (10, 1600), (1600, 10))
    labels = {(item["label"], tuple(item["points"])) for item in items}
    assert {label for label, _ in labels} == set(SPEC.values())
    # Class index i is the i-th COCO id in order (detectron2's contiguous ids).
    for index, coco_id in enumerate(sorted(SPEC)):
        assert (SPEC[coco_id], (20.0 * index, 0.0, 20.0 * index + 10, 10.0)) in labels
    assert names[9] == "traffic_light" and names[79] == "toothbrush"


def test_items_are_scaled_clipped_and_kept_at_the_threshold():
    boxes = np.array([[100, 100, 300, 200], [700, 500, 900, 700], [1100, 0, 1200, 50], [0, 0, 50, 50]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, np.nextafter(np.float32(0.5), np.float32(0))], np.float32)
    classes = np.array([0, 2, 2, 0])
    # Network input 800 x 1000 (height x width) for a 500 x 400 (width x height) image: half scale.
    items = mh.to_items(boxes, scores, classes, mh.class_names(), 0.5, (800, 1000), (500, 400))
    assert [(i["label"], i["points"], i["confidence"]) for i in items] == [
        ("person", [50.0, 50.0, 150.0, 100.0], "0.5000"),  # score == threshold is kept (§D18)
        ("car", [350.0, 250.0, 450.0, 350.0], "0.9000"),
    ]  # the third box is outside the image after scaling (empty once clipped); the fourth scores below 0.5


def test_resize_follows_resize_shortest_edge():
    assert mh.resized_size(1080, 810) == (1067, 800)  # bus.jpg: 800 * 1080 / 810 = 1066.67
    assert mh.resized_size(480, 640) == (800, 1067)
    assert mh.resized_size(100, 1000) == (133, 1333)  # long side capped: 1333 / 10 = 133.3
    assert mh.resized_size(800, 800) == (800, 800)


# --- the served function ------------------------------------------------------------------------

def assert_valid_items(items, size):
    width, height = size
    for item in items:
        assert item["label"] in SPEC.values() and item["type"] == "rectangle"
        x0, y0, x1, y1 = item["points"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, item["points"]
        assert isinstance(item["confidence"], str) and 0 <= float(item["confidence"]) <= 1


def crop_b64(box) -> str:
    buffer = io.BytesIO()
    Image.open(BUS).crop(box).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_served_function_on_a_real_image(retinanet_function):
    http = retinanet_function.http
    everything = http.post("/", json={"image": b64_file(BUS), "threshold": 0.0})
    assert everything.status_code == 200, everything.text
    everything = everything.json()
    assert_valid_items(everything, (810, 1080))
    # Threshold 0 reaches below the model's usual 0.05 (CVAT's 0.5 floor is §D4), up to 100 boxes.
    assert 50 < len(everything) <= 100
    assert any(0.05 <= float(item["confidence"]) < 0.5 for item in everything)

    # A batch of two sizes; the first is bus.jpg again, now at 0.5. Wide and tall crops keep the
    # second one cheap: its short side is scaled to 800 but its long side is capped at 1333.
    wide = (0, 600, 540, 735)
    batch = http.post("/", json={"images": [b64_file(BUS), crop_b64(wide)], "threshold": 0.5})
    assert batch.status_code == 200, batch.text
    at_half, on_crop = batch.json()
    assert_valid_items(at_half, (810, 1080))
    assert_valid_items(on_crop, (540, 135))
    assert all(float(item["confidence"]) >= 0.5 for item in at_half + on_crop)
    assert len(everything) > len(at_half) > 0
    # The same image gives the same boxes; 0.5 keeps exactly those scoring >= 0.5.
    assert at_half == [item for item in everything if float(item["confidence"]) >= 0.5]


def test_served_function_refuses_bad_input(retinanet_function):
    reply = retinanet_function.http.post("/", json={"image": "not base64!"})
    assert reply.status_code == 400 and "'image' is not valid base64" in reply.text
    reply = retinanet_function.http.post("/", json={"images": [b64_file(BUS), "%%%"]})
    assert reply.status_code == 400 and "'images[1]'" in reply.text
