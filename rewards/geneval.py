"""Verifiable toy-world rewards: read counts, colours, shapes and positions exactly from the image.

Detection (per image):
1. Colour. Every palette colour c defines a direction u_c = c - background in RGB. A pixel's offset
   from the background is projected on the closest direction (by cosine); the projection length is
   its coverage alpha in [0, 1]. Anti-aliased or blurred edges are blends along that very direction,
   so soft edges keep their colour and only lose alpha.
2. Objects. Connected components of pixels with alpha >= 0.3, per colour; components whose summed
   alpha is below a speck threshold are noise. Each object's alpha map includes its soft rim.
3. Shape. From the alpha map's centroid and second moments, each shape template (circle, square,
   triangle, drawn by the generator's own `coverage`, at a few edge blurs) is fitted and compared by
   soft IoU; the best template above `iou_threshold` names the shape, otherwise the object is an
   unrecognised blob (ragged shapes, ellipses and merged neighbours score at most 0.73).
Constraints (GenEval-style): count (exactly the asked number of objects), colour, shape, and for
relations position (centroids ordered on the relation's axis by at least 2 px).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from align.toy.world import BACKGROUND, COLOURS, RESOLUTION, SHAPES, PromptSpec, coverage, parse_prompt
from rewards.base import Reward, register_reward

CONSTRAINTS = ("count", "colour", "shape", "position")
_PALETTE = np.asarray(list(COLOURS.values()), np.float32) / 255 - np.asarray(BACKGROUND, np.float32) / 255
_LENGTHS = np.linalg.norm(_PALETTE, axis=1)
_NAMES = list(COLOURS)
BLUR_LEVELS = (0.0, 0.6, 1.0)  # px: edge softnesses the templates are tried at
IOU_THRESHOLD = 0.75  # calibrated: clean and blurred (sigma <= 1 px) shapes >= 0.9; blobs <= 0.73


@dataclass
class Detection:
    colour: str
    shape: str | None  # None: an unrecognised blob
    cx: float
    cy: float
    area: float  # summed coverage, in pixels
    iou: float  # soft IoU with the best template


def _moments(alpha: np.ndarray):
    ys, xs = np.indices(alpha.shape, dtype=np.float32) + 0.5
    mass = float(alpha.sum())
    cx, cy = float((alpha * xs).sum()) / mass, float((alpha * ys).sum()) / mass
    var_x = float((alpha * (xs - cx) ** 2).sum()) / mass
    var_y = float((alpha * (ys - cy) ** 2).sum()) / mass
    return mass, cx, cy, var_x, var_y


def fit_shape(alpha: np.ndarray) -> tuple[str, float]:
    """(best shape, its soft IoU) for one object's coverage map [H, W].

    Each template is placed from the map's moments and compared at a few edge softnesses (a
    Gaussian blur of sigma adds sigma^2 to each axis variance), so blurred edges still match.
    """
    from scipy import ndimage

    _, cx, cy, var_x, var_y = _moments(alpha)
    best, best_iou = SHAPES[0], -1.0
    for sigma in BLUR_LEVELS:
        vx, vy = max(var_x - sigma**2, 0.1), max(var_y - sigma**2, 0.1)
        side = np.sqrt(12 * vx + 9 * vy)  # triangle: var_x = s^2 / 24, var_y = s^2 / 18
        fits = {
            "square": (cx, cy, np.sqrt(6 * (vx + vy))),  # var = s^2 / 12 on each axis
            "circle": (cx, cy, np.sqrt(8 * (vx + vy))),  # var = d^2 / 16 on each axis
            "triangle": (cx, cy - side / 6, side),  # the centroid lies s/6 below the box centre
        }
        for shape in SHAPES:
            x, y, size = fits[shape]
            template = coverage(shape, x, y, size, alpha.shape[0])
            if sigma:
                template = ndimage.gaussian_filter(template, sigma)
            iou = float(np.minimum(alpha, template).sum() / max(np.maximum(alpha, template).sum(), 1e-6))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def detect(image: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> list[Detection]:
    """Objects in one image [H, W, 3] float in [0, 1]."""
    from scipy import ndimage

    resolution = image.shape[0]
    scale = (resolution / RESOLUTION) ** 2
    offset = image.astype(np.float32) - np.asarray(BACKGROUND, np.float32) / 255
    norm = np.linalg.norm(offset, axis=-1)
    cosine = offset @ (_PALETTE / _LENGTHS[:, None]).T / np.maximum(norm, 1e-6)[..., None]
    label = cosine.argmax(-1)
    projection = np.take_along_axis(offset @ _PALETTE.T, label[..., None], -1)[..., 0]
    alpha = np.clip(projection / _LENGTHS[label] ** 2, 0, 1)
    alpha[cosine.max(-1) < 0.8] = 0  # offsets pointing nowhere near a palette colour
    found = []
    for index, colour in enumerate(_NAMES):
        own = np.where(label == index, alpha, 0)
        components, count = ndimage.label(own >= 0.3, structure=np.ones((3, 3)))
        for k in range(1, count + 1):
            core = components == k
            rim = ndimage.binary_dilation(core, iterations=1) & (own > 0.02)
            region = np.where(rim, own, 0)
            mass = float(region.sum())
            if mass < 12 * scale:
                continue
            shape, iou = fit_shape(region)
            _, cx, cy, _, _ = _moments(region)
            found.append(Detection(colour, shape if iou >= iou_threshold else None, cx, cy, mass, iou))
    return found


def _relation_holds(first: Detection, second: Detection, relation: str, margin: float) -> bool:
    dx, dy = second.cx - first.cx, second.cy - first.cy
    return {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation] >= margin


def check_constraints(
    spec: PromptSpec, objects: list[Detection], resolution: int = RESOLUTION
) -> dict[str, bool]:
    """Which of the prompt's constraints the detected objects meet."""
    if not spec.relation:
        present = len(objects) > 0
        return {
            "count": len(objects) == spec.count,
            "colour": present and all(o.colour == spec.colour for o in objects),
            "shape": present and all(o.shape == spec.shape for o in objects),
        }

    def largest(colour):
        candidates = [o for o in objects if o.colour == colour]
        return max(candidates, key=lambda o: o.area) if candidates else None

    first, second = largest(spec.colour), largest(spec.colour2)
    both = first is not None and second is not None
    return {
        "count": len(objects) == 2,
        "colour": both,
        "shape": both and first.shape == spec.shape and second.shape == spec.shape2,
        "position": both and _relation_holds(first, second, spec.relation, 2 * resolution / RESOLUTION),
    }


def evaluate_images(
    images: torch.Tensor, prompts: Sequence[str], iou_threshold: float = IOU_THRESHOLD
) -> list[dict]:
    """Per image: {"constraints": {name: bool}, "score": fraction met, "all": all met}."""
    arrays = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    results = []
    for array, prompt in zip(arrays, prompts):
        spec = parse_prompt(prompt)
        constraints = check_constraints(spec, detect(array, iou_threshold), array.shape[0])
        met = list(constraints.values())
        results.append({"constraints": constraints, "score": sum(met) / len(met), "all": all(met)})
    return results


class GenEvalReward(Reward):
    """Black-box: the fraction of the prompt's constraints met (or 1/0 for all met, `strict`)."""

    differentiable = False

    def __init__(self, *, strict: bool = False, iou_threshold: float = IOU_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        self.strict = strict
        self.iou_threshold = iou_threshold

    def score(self, images, prompts):
        results = evaluate_images(images, prompts, self.iou_threshold)
        key = "all" if self.strict else "score"
        return torch.tensor([float(r[key]) for r in results], dtype=torch.float32)


register_reward(
    "geneval",
    differentiable=False,
    weights="none (exact: connected components and shape templates)",
    description="toy world: fraction of the prompt's count/colour/shape/position constraints met",
)(GenEvalReward)


@register_reward(
    "geneval-all",
    differentiable=False,
    weights="none (exact: connected components and shape templates)",
    description="toy world: 1 when every constraint of the prompt is met, else 0",
)
def _geneval_all(**kwargs) -> GenEvalReward:
    return GenEvalReward(strict=True, **kwargs)
