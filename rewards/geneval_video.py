"""The toy video world's gold verifier: read count, colour, shape, motion and relation off the frames.

Every frame goes through the still world's detector (rewards/geneval.py: palette colours, connected
components, shape templates). Then, per clip:
- count, colour, shape: the still world's checks (check_constraints) on each frame, each met when it
  holds in at least MAJORITY of the frames (a shape that blurs in one frame is not a failure);
- the track: the first object's centroid in every frame where it is found (for a single prompt, the
  centroid of the objects of the asked colour, in the frames that show the asked count of them; for a
  relation, the largest object of the first colour), and its velocity, the least-squares slope of
  position against frame (px a frame; at least MIN_TRACK frames);
- direction: the velocity points the asked way, at least MOVING px a frame on that axis and more than
  on the other;
- speed: the velocity's length within the asked speed's band (SPEED_BANDS), and for a relation the
  second object (the largest of its colour) still, under MOVING px a frame;
- position (relations): the still world's relation rule holds in at least MAJORITY of the frames.
A clip's score is the fraction of its constraints met; `all` when every one is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rewards.base import Reward, register_reward
from rewards.geneval import IOU_THRESHOLD, Detection, check_constraints, detect
from rewards.toy_video import DIRECTIONS, parse_video_prompt

VIDEO_CONSTRAINTS = ("count", "colour", "shape", "position", "direction", "speed")
MAJORITY = 2 / 3  # of the frames, for a per-frame constraint
MIN_TRACK = 3  # frames a velocity is fitted on
MOVING = 0.4  # px a frame: below it an object stands still
SPEED_BANDS = {"slowly": (MOVING, 1.5), "quickly": (1.5, 3.5)}  # px a frame (rendered: 1 and 2)


def largest(objects: list[Detection], colour: str) -> Detection | None:
    candidates = [o for o in objects if o.colour == colour]
    return max(candidates, key=lambda o: o.area) if candidates else None


def velocity(points: Sequence[tuple[int, float, float]]) -> np.ndarray | None:
    """(vx, vy) px a frame: the least-squares slope of (x, y) against the frame index, from
    (frame, x, y) points; None with fewer than MIN_TRACK frames."""
    if len(points) < MIN_TRACK:
        return None
    frames, xs, ys = (np.asarray(column, np.float64) for column in zip(*points))
    centred = frames - frames.mean()
    scale = (centred**2).sum()
    return np.array([(centred * xs).sum() / scale, (centred * ys).sum() / scale])


def _track(frames: list[list[Detection]], pick) -> np.ndarray | None:
    points = []
    for index, objects in enumerate(frames):
        found = pick(objects)
        if found is not None:
            points.append((index, *found))
    return velocity(points)


def _moves(v: np.ndarray | None, direction: str) -> bool:
    if v is None:
        return False
    axis = 0 if DIRECTIONS[direction][1] == 0 else 1
    along = v[axis] * sum(DIRECTIONS[direction])
    return along >= MOVING and along > abs(v[1 - axis])


def check_clip(prompt: str, frames: list[list[Detection]], resolution: int) -> dict[str, bool]:
    """Which of the clip prompt's constraints the per-frame detections meet."""
    spec = parse_video_prompt(prompt)
    scene = spec.scene
    per_frame = [check_constraints(scene, objects, resolution) for objects in frames]
    constraints = {
        name: sum(frame[name] for frame in per_frame) >= MAJORITY * len(frames) for name in per_frame[0]
    }
    if scene.relation:
        first = _track(frames, lambda objects: _centre(largest(objects, scene.colour)))
        second = _track(frames, lambda objects: _centre(largest(objects, scene.colour2)))
        still = second is not None and float(np.hypot(*second)) < MOVING
    else:
        def group(objects):
            same = [o for o in objects if o.colour == scene.colour]
            return (np.mean([o.cx for o in same]), np.mean([o.cy for o in same])) if len(same) == scene.count else None

        first, still = _track(frames, group), True
    low, high = SPEED_BANDS[spec.speed]
    constraints["direction"] = _moves(first, spec.direction)
    constraints["speed"] = first is not None and low <= float(np.hypot(*first)) < high and still
    return constraints


def _centre(obj: Detection | None):
    return None if obj is None else (obj.cx, obj.cy)


def evaluate_clips(videos: torch.Tensor, prompts: Sequence[str], iou_threshold: float = IOU_THRESHOLD) -> list[dict]:
    """Per clip of videos [B, F, 3, H, W] in [0, 1]: {"constraints", "score", "all"}, as the still
    world's evaluate_images."""
    arrays = videos.detach().float().clamp(0, 1).permute(0, 1, 3, 4, 2).cpu().numpy()
    results = []
    for clip, prompt in zip(arrays, prompts):
        frames = [detect(frame, iou_threshold) for frame in clip]
        constraints = check_clip(prompt, frames, clip.shape[1])
        met = list(constraints.values())
        results.append({"constraints": constraints, "score": sum(met) / len(met), "all": all(met)})
    return results


class GenEvalVideoReward(Reward):
    """Black-box: the fraction of the clip prompt's constraints met (1/0 for all met, `strict`)."""

    differentiable = False
    video = True

    def __init__(self, *, strict: bool = False, iou_threshold: float = IOU_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        self.strict = strict
        self.iou_threshold = iou_threshold

    def score(self, images, prompts):
        key = "all" if self.strict else "score"
        return torch.tensor([float(r[key]) for r in evaluate_clips(images, prompts, self.iou_threshold)])


register_reward(
    "geneval-toy-video",
    differentiable=False,
    weights="none (exact: per-frame components and templates, tracked)",
    description="toy video world: fraction of the clip prompt's count/colour/shape/motion/position constraints met",
)(GenEvalVideoReward)


@register_reward(
    "geneval-toy-video-all",
    differentiable=False,
    weights="none (exact: per-frame components and templates, tracked)",
    description="toy video world: 1 when every constraint of the clip prompt is met, else 0",
)
def _geneval_video_all(**kwargs) -> GenEvalVideoReward:
    return GenEvalVideoReward(strict=True, **kwargs)
