"""GrabCut (OpenCV's ``cv2.grabCut``) as a box-and-click interactor: no learned weights.

GrabCut fits two colour models (Gaussian mixtures), one for the object and one for the background,
and cuts the image along strong colour edges with a graph cut. Each call starts afresh from all
the clicks so far, as CVAT sends them every time.

- The object's box: the request's box, grown to take in positive clicks outside it. Without a
  box, the positive clicks' bounding box padded by a share of the image's longer side: one click
  says nothing about the object's size, so the padding starts small (0.15, best on the composites)
  and grows (0.3, 0.5) while the cut collapses onto the clicks, which happens when the object
  runs past the box and the background model learns its colours.
- GrabCut's rectangle init on it (outside definite background, inside probable object), on the
  box plus ``CONTEXT`` of background around it.
- Clicks are hard constraints: positive ones definite-object disks, negative ones
  definite-background disks (``SEED_RADIUS``); a negative click also turns the similar colours
  connected to it probable background, or a uniform region would not move.
- Speed: GrabCut works on the crop shrunk so its longer side is at most ``WORK_SIDE``, its colour
  models start from k-means on a smaller copy (what ``GC_INIT_WITH_MASK`` does, at ``INIT_SIDE``),
  then ``ITERATIONS`` of ``GC_EVAL``; the result is scaled back (bilinear, threshold 0.5), kept
  inside the box and pasted into the full image.
- With positive clicks, only the parts of the cut connected to one are kept: the object's colour
  model also picks far-off patches of similar colour.

Constants were chosen on scripts/eval_interactor.py's composites (see tests/test_grabcut.py for the
measured IoU). The request's ``threshold`` is accepted and has no effect: GrabCut's labels are hard.

Confidence: each pixel's posterior probability of the object colour model against the background
one (equal priors, as GrabCut's data term has them), from the two Gaussian mixtures the final cut
used, averaged over the object mask at the working size.
"""

from __future__ import annotations

import cv2
import numpy as np

from serverless.common.boxes import Box
from serverless.common.handler import BadRequest
from serverless.common.interactors import Interaction, Interactor, Segmentation, mean_probability, paste

WORK_SIDE = 256  # px, the longer side GrabCut works at (320: IoU about the same, 1.7x the time)
ITERATIONS = 5
CONTEXT = 0.25  # of the box's longer side: background around a box that the colour model learns from
# Without a box: the positive clicks' box padded by the first of these (of the image's longer
# side) whose cut still keeps COLLAPSED of the box after CHECK_ITERATIONS.
CLICK_PADDINGS = (0.15, 0.3, 0.5)
COLLAPSED = 0.05
CHECK_ITERATIONS = 2  # 1 is not enough: a cut may keep the object one iteration, then collapse
INIT_SIDE = 100  # px, the longer side the colour models are first estimated at
MIN_INIT_SAMPLES = 50  # of each kind (object, background) for that; GrabCut's k-means needs 5
SEED_RADIUS = 3  # px at the working scale: the definite label around every click
# A negative click also makes the colours around it (flood fill, per channel) probable background:
# a few definite pixels weigh too little in the background's colour model to move a whole region.
NEGATIVE_TOLERANCE = 12
GMM_COMPONENTS = 5  # per colour model, fixed in OpenCV's GrabCut


class GrabCut(Interactor):
    def segment(self, interaction: Interaction) -> Segmentation:
        """The H x W 0/1 object mask for the interaction's box and clicks, with its confidence."""
        positive, shape = interaction.pos_points, interaction.shape
        if interaction.box is not None:
            return self.cut(interaction, object_box(interaction.box, positive, shape))
        for padding in CLICK_PADDINGS[:-1]:
            result = self.cut(interaction, object_box(None, positive, shape, padding), give_up_if_collapsed=True)
            if result is not None:
                return result
        return self.cut(interaction, object_box(None, positive, shape, CLICK_PADDINGS[-1]))

    def cut(self, interaction: Interaction, box: Box[float], give_up_if_collapsed: bool = False) -> Segmentation | None:
        """GrabCut from ``box`` and the clicks: the H x W 0/1 mask and its confidence; None when asked
        to give up on a cut that keeps less than ``COLLAPSED`` of the box after ``CHECK_ITERATIONS``."""
        shape = interaction.shape
        positive, negative = interaction.pos_points, interaction.neg_points
        x1, y1, x2, y2 = crop = working_crop(box, shape)
        scale = min(1.0, WORK_SIDE / max(x2 - x1, y2 - y1))
        work_size = (max(1, round((x2 - x1) * scale)), max(1, round((y2 - y1) * scale)))
        work_image = np.ascontiguousarray(cv2.resize(interaction.image[y1:y2, x1:x2], work_size,
                                                     interpolation=cv2.INTER_AREA))

        def to_work(x: float, y: float) -> tuple[int, int]:
            return (min(max(int((x - x1) * scale), 0), work_size[0] - 1),
                    min(max(int((y - y1) * scale), 0), work_size[1] - 1))

        # The box's last pixel row and column are those before x2 and y2.
        labels = rectangle_labels(work_size, to_work(box[0], box[1]), to_work(box[2] - 1, box[3] - 1))
        box_area = np.count_nonzero(labels == cv2.GC_PR_FGD)
        for x, y in negative:
            labels[(similar_around(work_image, to_work(x, y)) != 0) & (labels == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
        for points, label in ((positive, cv2.GC_FGD), (negative, cv2.GC_BGD)):
            for x, y in points:
                cv2.circle(labels, to_work(x, y), SEED_RADIUS, label, -1)
        seeds = [to_work(x, y) for x, y in positive]

        def object_mask() -> np.ndarray:
            work_mask = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
            return connected_to(work_mask, seeds) if seeds else work_mask

        models = initial_models(work_image, labels)
        if give_up_if_collapsed:
            cv2.grabCut(work_image, labels, None, *models, CHECK_ITERATIONS, cv2.GC_EVAL)
            if np.count_nonzero(object_mask()) < COLLAPSED * box_area:
                return None
            cv2.grabCut(work_image, labels, None, *models, ITERATIONS - CHECK_ITERATIONS, cv2.GC_EVAL)
        else:
            cv2.grabCut(work_image, labels, None, *models, ITERATIONS, cv2.GC_EVAL)

        work_mask = object_mask()
        crop_mask = cv2.resize(work_mask.astype(np.float32), (x2 - x1, y2 - y1),
                               interpolation=cv2.INTER_LINEAR) >= 0.5
        # Outside the box is definite background: scaling back must not spill across its edges.
        bx1, by1, bx2, by2 = int(box[0]) - x1, int(box[1]) - y1, int(np.ceil(box[2])) - x1, int(np.ceil(box[3])) - y1
        inside = np.zeros_like(crop_mask)
        inside[by1:by2, bx1:bx2] = True
        return Segmentation(paste(crop_mask & inside, crop, shape),
                            mean_probability(object_posterior(work_image, *models), work_mask))


def object_box(box: Box[float] | None, positive: np.ndarray, shape: tuple[int, int],
               padding: float = 0.0) -> Box[float]:
    """Where the object may be: the request's box grown to take in every positive click, or
    without a box the positive clicks' bounding box padded by ``padding`` of the image's longer
    side; in the image."""
    height, width = shape
    if box is None:
        if not len(positive):
            raise BadRequest("GrabCut needs an object box ('obj_bbox') or at least one positive point ('pos_points')")
        pad = padding * max(height, width)
        box = (positive[:, 0].min() - pad, positive[:, 1].min() - pad,
               positive[:, 0].max() + 1 + pad, positive[:, 1].max() + 1 + pad)
    elif len(positive):  # a positive click outside the box says the box was too tight
        box = (min(box[0], positive[:, 0].min()), min(box[1], positive[:, 1].min()),
               max(box[2], positive[:, 0].max() + 1), max(box[3], positive[:, 1].max() + 1))
    box = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        raise BadRequest(f"'obj_bbox' {[round(c, 2) for c in box]} is too small: GrabCut needs at least 2 x 2 pixels")
    return box


def working_crop(box: Box[float], shape: tuple[int, int]) -> Box[int]:
    """Integer (x1, y1, x2, y2), x2 and y2 exclusive: the box and ``CONTEXT`` of background around
    it, in the image; what GrabCut looks at."""
    height, width = shape
    pad = CONTEXT * max(box[2] - box[0], box[3] - box[1])
    return (max(int(box[0] - pad), 0), max(int(box[1] - pad), 0),
            min(int(np.ceil(box[2] + pad)), width), min(int(np.ceil(box[3] + pad)), height))


def rectangle_labels(size: tuple[int, int], top_left: tuple[int, int], bottom_right: tuple[int, int]) -> np.ndarray:
    """GrabCut's rectangle init at the working ``size`` (w, h): definite background, probable object
    from ``top_left`` to ``bottom_right`` inclusive. A box covering the whole crop leaves no
    background to learn from, so the crop's outer ring becomes probable background then."""
    width, height = size
    labels = np.full((height, width), cv2.GC_BGD, np.uint8)
    (x1, y1), (x2, y2) = top_left, bottom_right
    labels[y1:y2 + 1, x1:x2 + 1] = cv2.GC_PR_FGD
    if not np.any(labels == cv2.GC_BGD):
        labels[[0, -1], :] = cv2.GC_PR_BGD
        labels[:, [0, -1]] = cv2.GC_PR_BGD
    return labels


def initial_models(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GrabCut's colour models (background, object) as GC_INIT_WITH_MASK starts them, by k-means,
    but on a copy at most ``INIT_SIDE`` px long: k-means++ on every working pixel took most of a
    call's time, and each iteration re-learns the models from all pixels anyway."""
    height, width = labels.shape
    scale = min(1.0, INIT_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    small_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    is_object = np.isin(small_labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if min(np.count_nonzero(is_object), np.count_nonzero(~is_object)) < MIN_INIT_SAMPLES:
        small_labels, small_image = labels.copy(), image  # too few of one kind left: k-means on all
    models = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # k-means picks its first centres at random: same call, same mask
    cv2.grabCut(small_image, small_labels, None, *models, 0, cv2.GC_INIT_WITH_MASK)  # 0: initialise only
    return models


def log_likelihood(model: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """log p(colour) of N x 3 ``pixels`` under one of cv2.grabCut's colour models, a 1 x 65 array in
    OpenCV's layout: 5 component weights, 5 means (3 each), 5 covariances (3 x 3 each). Like
    OpenCV's GMM, it leaves out the (2 pi)^(-3/2) every component shares and skips components of
    weight 0."""
    model = model.ravel().astype(np.float64)
    weights = model[:GMM_COMPONENTS]
    means = model[GMM_COMPONENTS:4 * GMM_COMPONENTS].reshape(GMM_COMPONENTS, 3)
    covariances = model[4 * GMM_COMPONENTS:].reshape(GMM_COMPONENTS, 3, 3)
    terms = []
    for weight, mean, covariance in zip(weights, means, covariances):
        if weight > 0:
            offsets = pixels - mean
            squared = np.einsum("ni,ni->n", offsets @ np.linalg.inv(covariance), offsets)
            terms.append(np.log(weight) - 0.5 * (np.log(np.linalg.det(covariance)) + squared))
    return np.logaddexp.reduce(terms, axis=0)


def object_posterior(image: np.ndarray, background_model: np.ndarray, object_model: np.ndarray) -> np.ndarray:
    """H x W: each pixel's probability of the object model against the background one, equal priors."""
    pixels = image.reshape(-1, 3).astype(np.float64)
    log_ratio = log_likelihood(background_model, pixels) - log_likelihood(object_model, pixels)
    return np.exp(-np.logaddexp(0.0, log_ratio)).reshape(image.shape[:2])  # 1 / (1 + ratio), without overflow


def similar_around(image: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 0/1 region of colours within ``NEGATIVE_TOLERANCE`` of the ``seed`` pixel's, connected
    to it (a flood fill at the working scale)."""
    height, width = image.shape[:2]
    region = np.zeros((height + 2, width + 2), np.uint8)  # floodFill's mask has a 1-pixel border
    tolerance = (NEGATIVE_TOLERANCE,) * 3
    cv2.floodFill(image.copy(), region, seed, 0, tolerance, tolerance,
                  4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8))
    return region[1:-1, 1:-1]


def connected_to(mask: np.ndarray, seeds: list[tuple[int, int]]) -> np.ndarray:
    """The 8-connected parts of the 0/1 ``mask`` that hold one of the (x, y) seeds."""
    _, components = cv2.connectedComponents(mask, connectivity=8)
    kept = [label for label in {components[y, x] for x, y in seeds} if label]
    return np.isin(components, kept).astype(np.uint8)
