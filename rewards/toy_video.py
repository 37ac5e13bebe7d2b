"""The toy world in motion: clips of the toy world's shapes moving in straight lines.

Clips: FRAMES = 9 frames of 32 x 32 px (Wan's VAE takes 1 + 4k frames), the toy world's palette,
shapes and anti-aliased rendering (rewards/toy_world.py); sides 7 to 9 px so that three shapes fit
across the canvas while they cross half of it. A moving object moves SPEEDS[speed] px a frame in its direction (slowly: 1 px, 8 over
the clip; quickly: 2 px, 16), every object of a single prompt alike.

Grammar:  single    "two red circles moving left quickly"    (left, right, up, down; slowly, quickly)
          relation  "a red circle moving up left of a blue square": the first object moves slowly, the
                    second stands still, and the relation holds in every frame.
Everything is a deterministic function of a seed. The verifier is rewards/geneval_video.py.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np

from rewards.toy_world import (
    BACKGROUND,
    COLOUR_JITTER,
    COLOURS,
    COUNTS,
    MARGIN,
    NOVEL_PAIRS,
    RELATIONS,
    SHAPES,
    Obj,
    PromptSpec,
    _relation_holds,
    coverage,
    parse_prompt,
)

FRAMES = 9
RESOLUTION = 32
SIZE_RANGE = (7, 9)  # bounding-box side in px
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image y grows downwards
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SPEEDS = {"slowly": 1.0, "quickly": 2.0}  # px a frame
GAP = 2  # px between bounding boxes in every frame (the still world keeps 3)
RELATION_OFFSET = 8  # px between the related objects' centres on the relation's axis, in every frame


@dataclass(frozen=True)
class VideoSpec:
    """What a clip's prompt asks for: the still scene (a toy-world PromptSpec) and the motion of its
    first object (all objects of a single prompt move alike; a relation's second object is still)."""

    scene: PromptSpec
    direction: str
    speed: str = "slowly"

    @property
    def kind(self) -> str:
        return self.scene.kind

    def text(self) -> str:
        words = self.scene.text().split()
        if self.scene.relation:
            return " ".join([*words[:3], "moving", self.direction, *words[3:]])
        return " ".join([*words, "moving", self.direction, self.speed])


def parse_video_prompt(text: str) -> VideoSpec:
    """The inverse of VideoSpec.text; a ValueError naming the prompt when it is not the clip grammar."""
    words = text.strip().lower().split()
    example = "e.g. 'two red circles moving left quickly' or 'a red circle moving up left of a blue square'"
    if len(words) < 5 or words[3] != "moving" or words[4] not in DIRECTIONS:
        raise ValueError(f"{text!r} is not a toy-video prompt ({example})")
    single = len(words) <= 6
    if single and (len(words) == 5 or words[5] not in SPEEDS):
        raise ValueError(f"{text!r}: a single-object prompt ends with its speed, {' or '.join(SPEEDS)} ({example})")
    still = words[:3] if single else words[:3] + words[5:]
    spec = VideoSpec(parse_prompt(" ".join(still)), words[4], words[5] if single else "slowly")
    if spec.text() != " ".join(words):
        raise ValueError(f"{text!r} is not a toy-video prompt ({example})")
    return spec


def is_video_prompt(text: str) -> bool:
    try:
        parse_video_prompt(text)
    except ValueError:
        return False
    return True


def swap_direction(prompt: str) -> str:
    """The prompt with its direction reversed (left <-> right, up <-> down): the swap test's pair."""
    spec = parse_video_prompt(prompt)
    return VideoSpec(spec.scene, OPPOSITE[spec.direction], spec.speed).text()


# --- clips -------------------------------------------------------------------------------------


@dataclass
class Clip:
    spec: VideoSpec
    objects: list[Obj]  # positions at frame 0
    velocities: list[tuple[float, float]]  # px a frame, one per object

    def at(self, frame: int) -> list[Obj]:
        return [
            Obj(o.colour, o.shape, o.cx + vx * frame, o.cy + vy * frame, o.size, o.rgb)
            for o, (vx, vy) in zip(self.objects, self.velocities)
        ]


def _inside(obj: Obj, resolution: int) -> bool:
    half = obj.size / 2
    return all(MARGIN + half <= c <= resolution - MARGIN - half for c in (obj.cx, obj.cy))


def _apart(a: Obj, b: Obj) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def _fits(clip: Clip, frames: int) -> bool:
    """The newest object keeps apart from the others in every frame (and, second of a relation, the
    relation holds in every frame)."""
    relation = clip.spec.scene.relation
    for frame in range(frames):
        *others, new = clip.at(frame)
        if not all(_apart(new, other) for other in others):
            return False
        if relation and others and not _relation_holds(others[0], new, relation, RELATION_OFFSET):
            return False
    return True


def sample_clip(spec: VideoSpec, rng: random.Random, frames: int = FRAMES, resolution: int = RESOLUTION) -> Clip:
    """Place the objects one by one, each where its whole path stays inside the canvas and apart from
    the objects placed before it (rejection sampling; a restart when one cannot be placed)."""
    scene = spec.scene
    wanted = scene.pairs if scene.relation else [(scene.colour, scene.shape)] * scene.count
    dx, dy = DIRECTIONS[spec.direction]
    step = SPEEDS[spec.speed]
    velocity = (dx * step, dy * step)
    velocities = [velocity, (0.0, 0.0)] if scene.relation else [velocity] * len(wanted)
    for _ in range(2_000):
        clip = Clip(spec, [], [])
        for (colour, shape), (vx, vy) in zip(wanted, velocities):
            for _ in range(200):
                size = rng.uniform(*SIZE_RANGE)
                low, high = MARGIN + size / 2, resolution - MARGIN - size / 2
                travel = [v * (frames - 1) for v in (vx, vy)]
                cx, cy = (rng.uniform(low - min(0, t), high - max(0, t)) for t in travel)
                jitter = [rng.randint(-COLOUR_JITTER, COLOUR_JITTER) for _ in range(3)]
                rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
                candidate = Clip(spec, [*clip.objects, Obj(colour, shape, cx, cy, size, rgb)],
                                 [*clip.velocities, (vx, vy)])
                if _fits(candidate, frames):
                    clip = candidate
                    break
            else:
                break
        if len(clip.objects) == len(wanted):
            return clip
    raise RuntimeError(f"could not place {spec.text()!r} in {frames} frames at {resolution}px")


def render_clip(clip: Clip, frames: int = FRAMES, resolution: int = RESOLUTION) -> np.ndarray:
    """[F, H, W, 3] float32 in [0, 1]: every frame's objects alpha-composited over the background."""
    background = np.asarray(BACKGROUND, np.float32) / 255
    video = np.empty((frames, resolution, resolution, 3), np.float32)
    for frame in range(frames):
        image = np.broadcast_to(background, (resolution, resolution, 3)).copy()
        for obj in clip.at(frame):
            alpha = coverage(obj.shape, obj.cx, obj.cy, obj.size, resolution)[..., None]
            image = image * (1 - alpha) + alpha * (np.asarray(obj.rgb, np.float32) / 255)
        video[frame] = image
    return video


def make_clip(prompt: str | VideoSpec, seed: int, frames: int = FRAMES) -> tuple[np.ndarray, Clip]:
    spec = parse_video_prompt(prompt) if isinstance(prompt, str) else prompt
    clip = sample_clip(spec, random.Random(seed), frames)
    return render_clip(clip, frames), clip


# --- prompt sets -------------------------------------------------------------------------------


def all_video_specs() -> list[VideoSpec]:
    singles = [
        VideoSpec(PromptSpec(c, s, n), d, v)
        for n in COUNTS
        for c in COLOURS
        for s in SHAPES
        for d in DIRECTIONS
        for v in SPEEDS
    ]
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    relations = [
        VideoSpec(PromptSpec(c1, s1, 1, rel, c2, s2), d)
        for (c1, s1) in pairs
        for (c2, s2) in pairs
        for rel in RELATIONS
        for d in DIRECTIONS
        if c1 != c2
    ]
    return singles + relations


VIDEO_SPLITS = ("video-pretrain", "video-train", "video-heldout", "video-novel")  # as prompt sources


def video_prompt_splits(seed: int = 0) -> dict[str, list[str]]:
    """Fixed splits, as the still world's: pretrain, train (alignment; seen in pretraining), heldout
    (64: 24 single, 40 relation, disjoint from both) and novel (32: the still world's unseen
    colour-shape pairs, never in pretraining)."""
    return {name: list(prompts) for name, prompts in _splits(seed).items()}


@functools.cache
def _splits(seed: int) -> dict[str, tuple[str, ...]]:
    rng = random.Random(seed)
    specs = all_video_specs()
    novel = [s for s in specs if any(pair in NOVEL_PAIRS for pair in s.scene.pairs)]
    seen = [s for s in specs if not any(pair in NOVEL_PAIRS for pair in s.scene.pairs)]
    singles = [s for s in seen if s.kind == "single"]
    relations = [s for s in seen if s.kind == "relation"]
    for group in (singles, relations, novel):
        rng.shuffle(group)
    heldout = singles[:24] + relations[:40]
    pretrain = singles[24:] + relations[40:]
    train = singles[24:120] + relations[40:240]
    novel_singles = [s for s in novel if s.kind == "single"][:12]
    novel_relations = [s for s in novel if s.kind == "relation"][:20]
    return {
        "pretrain": tuple(s.text() for s in pretrain),
        "train": tuple(s.text() for s in train),
        "heldout": tuple(s.text() for s in heldout),
        "novel": tuple(s.text() for s in novel_singles + novel_relations),
    }
