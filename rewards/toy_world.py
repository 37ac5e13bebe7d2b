"""The toy world: filled shapes on a plain background, captioned by a small grammar.

Palette (sRGB, 0-255) on a dark slate background (30, 30, 34):
    red (220, 45, 45)   green (50, 180, 70)   blue (55, 95, 235)
    yellow (235, 210, 40)   purple (155, 70, 210)   orange (245, 140, 30)
Geometry, at the default 32 x 32 pixels: every shape has a side (its bounding box) of 9 to 13 px,
lies 1 px or more inside the canvas and 3 px or more from any other shape's box, so that objects
never touch. Circles fill their box, squares are axis-aligned, triangles point up (base = height).
Edges are anti-aliased by 4 x 4 supersampling, so images have the soft edges generated ones have.

Grammar:  single    "a red circle" | "two red circles" | "three red circles" ("an orange circle")
          relation  "a red circle left of a blue square"  (left of, right of, above, below)
Everything is a deterministic function of a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ASSETS = (
    Path(__file__).parent / "assets"
)  # the toy rewards' weights (toy-clip/, toy-quality/), from pretrain-toy

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (50, 180, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 210, 40),
    "purple": (155, 70, 210),
    "orange": (245, 140, 30),
}
BACKGROUND = (30, 30, 34)
SHAPES = ("circle", "square", "triangle")
COUNTS = {1: "a", 2: "two", 3: "three"}
RELATIONS = ("left of", "right of", "above", "below")
RESOLUTION = 32
SIZE_RANGE = (9, 13)  # bounding-box side in px at RESOLUTION
GAP = 3  # px between bounding boxes
MARGIN = 1  # px to the canvas edge
RELATION_OFFSET = 8  # px: the centres of related objects differ at least this much on the relation's axis
COLOUR_JITTER = 8  # +- per channel, per object
SUPERSAMPLE = 4

# colour-shape pairs never seen in pretraining: one per shape, three different colours
NOVEL_PAIRS = (("red", "triangle"), ("green", "circle"), ("blue", "square"))


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for. Single: count x (colour, shape). Relation: A `relation` B."""

    colour: str
    shape: str
    count: int = 1
    relation: str | None = None
    colour2: str | None = None
    shape2: str | None = None

    @property
    def kind(self) -> str:
        return "relation" if self.relation else "single"

    @property
    def pairs(self) -> list[tuple[str, str]]:
        pairs = [(self.colour, self.shape)]
        return pairs + [(self.colour2, self.shape2)] if self.relation else pairs

    def text(self) -> str:
        if self.relation:
            first, second = _number(1, self.colour), _number(1, self.colour2)
            return f"{first} {self.colour} {self.shape} {self.relation} {second} {self.colour2} {self.shape2}"
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{_number(self.count, self.colour)} {self.colour} {noun}"


def _number(count: int, colour: str) -> str:
    return "an" if count == 1 and colour[0] in "aeiou" else COUNTS[count]


def parse_prompt(text: str) -> PromptSpec:
    """The inverse of PromptSpec.text; raises ValueError naming the prompt when it is not toy grammar."""
    words = text.strip().lower().split()
    numbers = {word: n for n, word in COUNTS.items()} | {"an": 1}
    try:
        if len(words) == 3:
            count = numbers[words[0]]
            shape = words[2][:-1] if count > 1 and words[2].endswith("s") else words[2]
            spec = PromptSpec(colour=words[1], shape=shape, count=count)
        else:
            relation_words = 2 if words[3] in ("left", "right") else 1
            relation = " ".join(words[3 : 3 + relation_words])
            rest = words[3 + relation_words :]
            if words[0] not in ("a", "an") or rest[0] not in ("a", "an") or len(rest) != 3:
                raise KeyError(text)
            spec = PromptSpec(words[1], words[2], 1, relation, rest[1], rest[2])
    except (KeyError, IndexError) as error:
        raise ValueError(f"{text!r} is not a toy-world prompt (e.g. 'two red circles')") from error
    for colour, shape in spec.pairs:
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(f"{text!r} names an unknown colour or shape; colours: {', '.join(COLOURS)}")
    if spec.relation and spec.relation not in RELATIONS:
        raise ValueError(f"{text!r}: unknown relation; use one of {', '.join(RELATIONS)}")
    if spec.text() != " ".join(words):
        raise ValueError(f"{text!r} is not a toy-world prompt (e.g. 'two red circles')")
    return spec


def is_toy_prompt(text: str) -> bool:
    try:
        parse_prompt(text)
    except ValueError:
        return False
    return True


# --- geometry -----------------------------------------------------------------------------------


def coverage(shape: str, cx: float, cy: float, size: float, resolution: int = RESOLUTION) -> np.ndarray:
    """Fraction of each pixel covered by the shape, [H, W] float32 in [0, 1] (4 x 4 supersampling).

    (cx, cy) is the bounding box centre in pixels, `size` its side. The verifier renders its
    templates with this very function, so rendering and reading share one geometry.
    """
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    coords = (np.arange(resolution)[:, None] + offsets[None, :]).reshape(-1)
    x = coords[None, :] - cx
    y = coords[:, None] - cy
    half = size / 2
    if shape == "circle":
        inside = x**2 + y**2 <= half**2
    elif shape == "square":
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":  # apex up: at height y (from -half to half) the half-width is (y+half)/2
        inside = (y >= -half) & (y <= half) & (np.abs(x) <= (y + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    n = SUPERSAMPLE
    return inside.reshape(resolution, n, resolution, n).mean(axis=(1, 3)).astype(np.float32)


@dataclass
class Obj:
    colour: str
    shape: str
    cx: float
    cy: float
    size: float
    rgb: tuple[int, int, int] = (0, 0, 0)

    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass
class Scene:
    spec: PromptSpec
    objects: list[Obj] = field(default_factory=list)

    @property
    def caption(self) -> str:
        return self.spec.text()


def _apart(a: Obj, b: Obj) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def _relation_holds(a: Obj, b: Obj, relation: str, offset: float) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # image y grows downwards
    return {
        "left of": dx >= offset,
        "right of": -dx >= offset,
        "above": dy >= offset,
        "below": -dy >= offset,
    }[relation]


def sample_scene(spec: PromptSpec, rng: random.Random, resolution: int = RESOLUTION) -> Scene:
    """Place the prompt's objects at random (rejection sampling until the geometry rules hold)."""
    scale = resolution / RESOLUTION
    wanted = [(spec.colour, spec.shape)] * spec.count if not spec.relation else spec.pairs
    for _ in range(10_000):
        objects = []
        for colour, shape in wanted:
            size = rng.uniform(*SIZE_RANGE) * scale
            low, high = MARGIN * scale + size / 2, resolution - MARGIN * scale - size / 2
            rgb = tuple(
                int(np.clip(c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER), 0, 255)) for c in COLOURS[colour]
            )
            objects.append(Obj(colour, shape, rng.uniform(low, high), rng.uniform(low, high), size, rgb))
        if not all(_apart(a, b) for i, a in enumerate(objects) for b in objects[i + 1 :]):
            continue
        if spec.relation and not _relation_holds(
            objects[0], objects[1], spec.relation, RELATION_OFFSET * scale
        ):
            continue
        return Scene(spec, objects)
    raise RuntimeError(f"could not place {spec.text()!r} at {resolution}px")


def render(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1]: objects alpha-composited over the background."""
    image = np.broadcast_to(np.asarray(BACKGROUND, np.float32) / 255, (resolution, resolution, 3)).copy()
    for obj in scene.objects:
        alpha = coverage(obj.shape, obj.cx, obj.cy, obj.size, resolution)[..., None]
        image = image * (1 - alpha) + alpha * (np.asarray(obj.rgb, np.float32) / 255)
    return image


def make_example(
    prompt: str | PromptSpec, seed: int, resolution: int = RESOLUTION
) -> tuple[np.ndarray, Scene]:
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    scene = sample_scene(spec, random.Random(seed), resolution)
    return render(scene, resolution), scene


# --- prompt sets -------------------------------------------------------------------------------


def all_single_specs() -> list[PromptSpec]:
    return [PromptSpec(c, s, n) for n in COUNTS for c in COLOURS for s in SHAPES]


def all_relation_specs() -> list[PromptSpec]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [
        PromptSpec(c1, s1, 1, rel, c2, s2)
        for (c1, s1) in pairs
        for (c2, s2) in pairs
        for rel in RELATIONS
        if c1 != c2
    ]


def _is_novel(spec: PromptSpec) -> bool:
    return any(pair in NOVEL_PAIRS for pair in spec.pairs)


def _heldout_singles(singles: list[PromptSpec]) -> list[PromptSpec]:
    """15 single prompts, 5 per shape and 5 per count: every (shape, count) cell once plus two
    diagonals of that 3 x 3 grid; colours assigned in turn, skipping prompts that are not available."""
    cells = [(s, c) for s in range(3) for c in range(3)]
    cells += [(s, s) for s in range(3)] + [(s, (s + 1) % 3) for s in range(3)]
    colours = list(COLOURS)
    chosen: list[PromptSpec] = []
    for i, (shape, count) in enumerate(cells):
        for k in range(len(colours)):
            spec = PromptSpec(colours[(i + k) % len(colours)], SHAPES[shape], count + 1)
            if spec in singles and spec not in chosen:
                chosen.append(spec)
                break
    return chosen


def prompt_splits(seed: int = 0) -> dict[str, list[str]]:
    """Fixed splits: pretrain, train (alignment), heldout (disjoint from both), novel (unseen pairs)."""
    rng = random.Random(seed)
    singles = [s for s in all_single_specs() if not _is_novel(s)]
    relations = [s for s in all_relation_specs() if not _is_novel(s)]
    heldout_singles = _heldout_singles(singles)
    rng.shuffle(relations)
    heldout_relations = sorted(relations[:48], key=lambda s: RELATIONS.index(s.relation))
    seen_singles = [s for s in singles if s not in heldout_singles]
    seen_relations = relations[48:]
    novel_singles = [s for s in all_single_specs() if _is_novel(s)]
    novel_relations = [s for s in all_relation_specs() if _is_novel(s)]
    rng.shuffle(novel_relations)
    pretrain = seen_singles + seen_relations
    return {
        "pretrain": [s.text() for s in pretrain],
        "train": [s.text() for s in seen_singles + seen_relations[:240]],
        "heldout": [s.text() for s in heldout_singles + heldout_relations],
        "novel": [s.text() for s in novel_singles + novel_relations[:24]],
    }


SPLITS = ("pretrain", "train", "heldout", "novel")
