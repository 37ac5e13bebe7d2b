"""The toy world: captions match images, the verifier's partial scores, the shipped model and CLIP."""

import random

import numpy as np
import pytest
import torch

from align.recipes import load_prompts
from rewards.geneval import detect, evaluate_images, template
from rewards.toy_world import ASSETS as TOY_ASSETS
from rewards.toy_world import (
    BACKGROUND,
    COLOURS,
    SHAPES,
    Obj,
    Scene,
    coverage,
    make_example,
    parse_prompt,
    render,
)
from samplers.toy import PIPELINE_DIR


def as_batch(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def scores(arrays, prompts) -> list[float]:
    return [r["score"] for r in evaluate_images(as_batch(arrays), prompts)]


def test_rendered_training_images_score_one():
    prompts = load_prompts("train") + load_prompts("heldout") + load_prompts("novel")
    arrays = [make_example(p, seed)[0] for seed, p in enumerate(prompts)]
    assert scores(arrays, prompts) == [1.0] * len(prompts)


def test_degraded_renders_stay_above_the_floor_and_blobs_do_not_pass():
    from scipy import ndimage

    prompts = load_prompts("heldout")
    clean = [make_example(p, 100 + seed)[0] for seed, p in enumerate(prompts)]
    rng = np.random.default_rng(0)
    blurred = [ndimage.gaussian_filter(a, sigma=(1.0, 1.0, 0)) for a in clean]
    noisy = [np.clip(a + rng.normal(0, 0.03, a.shape), 0, 1).astype(np.float32) for a in clean]
    assert np.mean(scores(blurred, prompts)) == 1.0  # soft edges, as generated images have
    assert np.mean(scores(noisy, prompts)) >= 0.95
    # a shapeless blob (heavy blur) of the right colour and count keeps count and colour, not shape
    blob_prompts = ["a red square", "a blue triangle", "two yellow squares"]
    blobs = [ndimage.gaussian_filter(make_example(p, 7)[0], sigma=(2.5, 2.5, 0)) for p in blob_prompts]
    for result in evaluate_images(as_batch(blobs), blob_prompts):
        assert result["constraints"]["shape"] is False


def scene(prompt: str, objects: list[tuple[str, str, float, float]]) -> np.ndarray:
    return render(Scene(parse_prompt(prompt), [Obj(c, s, x, y, 11, COLOURS[c]) for c, s, x, y in objects]))


def test_hand_made_errors_give_the_expected_partial_scores():
    cases = [
        ("two red circles", [("red", "circle", 8, 8), ("red", "circle", 23, 22)], 1.0),
        ("two red circles", [("red", "circle", 8, 8), ("blue", "circle", 23, 22)], 2 / 3),  # colour
        ("three blue squares", [("blue", "square", 8, 8), ("blue", "square", 23, 22)], 2 / 3),  # count
        ("a green triangle", [("green", "square", 16, 16)], 2 / 3),  # shape
        ("a green triangle", [("red", "square", 8, 8), ("red", "square", 23, 22)], 0.0),  # all wrong
        ("a red circle left of a blue square", [("red", "circle", 8, 16), ("blue", "square", 24, 16)], 1.0),
        ("a red circle left of a blue square", [("red", "circle", 24, 16), ("blue", "square", 8, 16)], 3 / 4),
        ("a red circle above a blue square", [("red", "circle", 16, 8), ("blue", "triangle", 16, 24)], 3 / 4),
        ("a red circle above a blue square", [("red", "circle", 16, 8)], 0.0),  # one object, no partner
    ]
    got = scores([scene(p, objects) for p, objects, _ in cases], [p for p, _, _ in cases])
    assert got == pytest.approx([expected for _, _, expected in cases])


def composite(alpha: np.ndarray, rgb) -> np.ndarray:
    """Colour `rgb` (0-255: one colour, or one per pixel [H, W, 3]) at coverage `alpha` over the
    background, as `render` composites an object."""
    a = alpha[..., None]
    background = np.asarray(BACKGROUND, np.float32) / 255
    return (background * (1 - a) + a * np.asarray(rgb, np.float32) / 255).astype(np.float32)


def nearest_colour(rgb) -> str:
    """The palette colour whose offset from the background points nearest (by cosine) that of `rgb`."""
    offset = np.subtract(rgb, BACKGROUND)

    def cosine(name):
        direction = np.subtract(COLOURS[name], BACKGROUND)
        return offset @ direction / np.linalg.norm(direction)

    return max(COLOURS, key=cosine)


def test_an_off_palette_colour_split_between_two_palette_colours_is_one_object():
    """Violet lies between blue and purple: noise or shading puts its pixels on both sides of the
    boundary (two fragments, no shape, with per-pixel colours), and the fragments make one circle of
    the palette colour nearest the mean."""
    circle = coverage("circle", 15.7, 16.2, 11)
    violet = (105, 82, 222)
    noisy = composite(circle, violet) + np.random.default_rng(0).normal(0, 0.02, (32, 32, 3))
    cases = [(np.clip(noisy, 0, 1).astype(np.float32), violet)]
    t = np.clip((np.arange(32) + 0.5 - 15.7) / 11 + 0.5, 0, 1)[None, :, None]  # across the circle
    for left, right in [((75, 90, 230), (125, 76, 216)), ((90, 87, 227), (130, 75, 215))]:  # shaded
        shading = np.broadcast_to((1 - t) * np.asarray(left) + t * np.asarray(right), (32, 32, 3))
        cases.append((composite(circle, shading), np.add(left, right) / 2))
    assert [nearest_colour(mean) for _, mean in cases] == ["purple", "blue", "purple"]
    for image, mean in cases:
        objects = detect(image)
        assert [(o.colour, o.shape) for o in objects] == [(nearest_colour(mean), "circle")]
        assert objects[0].iou >= 0.9


def test_touching_objects_of_different_colours_stay_two():
    cases = [
        ("a red circle left of a blue square", [("red", "circle", 10, 16), ("blue", "square", 21, 16)]),
        ("a blue circle left of a purple square", [("blue", "circle", 10, 16), ("purple", "square", 21, 16)]),
        ("a blue square above a purple circle", [("blue", "square", 16, 10), ("purple", "circle", 16, 21)]),
    ]
    assert scores([scene(p, objects) for p, objects in cases], [p for p, _ in cases]) == [1.0] * len(cases)


def test_shapes_of_one_colour_that_touch_are_separate_objects():
    from scipy import ndimage

    cases = [  # squares meeting at a pixel corner, and inside a pixel that both cover; tangent circles;
        # triangles whose base corners meet
        ("two red squares", [("red", "square", 8.5, 8.5), ("red", "square", 19.5, 19.5)]),
        ("two red squares", [("red", "square", 8, 8), ("red", "square", 19, 19)]),
        ("two red circles", [("red", "circle", 10, 16), ("red", "circle", 21, 16)]),
        ("two red triangles", [("red", "triangle", 10, 16), ("red", "triangle", 21, 16)]),
    ]
    sharp = [scene(p, objects) for p, objects in cases]
    soft = [ndimage.gaussian_filter(a, sigma=(1.0, 1.0, 0)) for a in sharp]
    prompts = [p for p, _ in cases] * 2
    assert scores(sharp + soft, prompts) == [1.0] * len(prompts)


def box(cx: float, cy: float, width: float, height: float) -> np.ndarray:
    """Coverage of an axis-aligned width x height box: the world's square is the product of a row
    and a column profile, so the profiles of two squares make the box."""
    rows = coverage("square", cx, cy, height).max(axis=1)
    columns = coverage("square", cx, cy, width).max(axis=0)
    return np.outer(rows, columns)


def ellipse(cx: float, cy: float, width: float, height: float, n: int = 8) -> np.ndarray:
    """Coverage of an axis-aligned ellipse, n x n supersampled."""
    s = (np.arange(32 * n) + 0.5) / n
    inside = ((s[None, :] - cx) / (width / 2)) ** 2 + ((s[:, None] - cy) / (height / 2)) ** 2 <= 1
    return inside.reshape(32, n, 32, n).mean(axis=(1, 3))


def test_slightly_stretched_squares_are_squares_and_elongated_boxes_are_not():
    from scipy import ndimage

    assert np.array_equal(box(16.3, 15.8, 11, 11), coverage("square", 16.3, 15.8, 11))

    def fits(alpha, blur=0.0):
        image = composite(alpha, COLOURS["orange"])
        image = ndimage.gaussian_filter(image, sigma=(blur, blur, 0)) if blur else image
        return [(o.shape, round(o.iou, 3)) for o in detect(image)]

    # aspect 1.1 and 1.2: a square template with one side from both variances scored 0.915 and 0.846
    for width in (11, 12):
        [(shape, iou)] = fits(box(16.3, 15.8, width, 10))
        assert shape == "square" and iou >= 0.98
    # with soft edges and a duller colour (85 % coverage), as generated squares have: 0.739, no shape
    [(shape, iou)] = fits(0.85 * box(16.3, 15.8, 12, 10), blur=1.5)
    assert shape == "square" and iou >= 0.77
    # aspect 1.5 is elongated: no shape; an ellipse of aspect 1.2 is a circle (its template stretches too)
    assert fits(box(16.3, 15.8, 15, 10)) == [(None, 0.0)]
    [(shape, iou)] = fits(ellipse(16.3, 15.8, 12, 10))
    assert shape == "circle" and iou >= 0.95


def test_verifier_templates_are_the_worlds_shapes_when_width_equals_height():
    for shape in SHAPES:
        for cx, cy, size in [(16, 16, 11), (9.3, 20.7, 9.6), (20.5, 11.25, 13)]:
            assert np.array_equal(template(shape, cx, cy, size, size, 32), coverage(shape, cx, cy, size))


def test_splits_are_disjoint_and_novel_pairs_are_unseen():
    splits = {name: set(load_prompts(name)) for name in ("pretrain", "train", "heldout", "novel")}
    assert not splits["heldout"] & (splits["pretrain"] | splits["train"])
    assert not splits["novel"] & (splits["pretrain"] | splits["train"] | splits["heldout"])
    assert splits["train"] <= splits["pretrain"]
    from rewards.toy_world import NOVEL_PAIRS

    seen = {pair for p in splits["pretrain"] for pair in parse_prompt(p).pairs}
    assert not seen & set(NOVEL_PAIRS)
    assert all(set(parse_prompt(p).pairs) & set(NOVEL_PAIRS) for p in splits["novel"])


def test_rendering_is_deterministic_from_the_seed():
    a, _ = make_example("a purple triangle left of an orange circle", 5)
    b, _ = make_example("a purple triangle left of an orange circle", 5)
    c, _ = make_example("a purple triangle left of an orange circle", 6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shipped_pipeline_loads_offline_through_the_sd3_adapter_and_passes_doctor(capsys):
    from align.cli import main
    from samplers.adapters.sd3 import SD3Adapter
    from samplers.models import load_adapter

    adapter = load_adapter("toy")
    assert isinstance(adapter, SD3Adapter) and type(adapter.pipeline).__name__ == "StableDiffusion3Pipeline"
    size = sum(f.stat().st_size for f in PIPELINE_DIR.rglob("*") if f.is_file())
    assert size < 30 * 2**20, size
    assert main(["doctor", "toy", "--steps", "4"]) == 0
    assert "4/4 checks passed" in capsys.readouterr().out


def test_shipped_model_draws_the_colours_it_is_asked_for():
    """A floor on the base model, far above chance (1/6): the shipped base is deliberately partly trained,
    so that alignment has headroom. Held-out singles x 8 seeds (120 images; 0.767 measured, SE 0.039): the
    floor sits 14 images (3 SE) below, so a change in float rounding that flips a few images cannot fail
    it, while a base that lost its colours (0.5 and less) does."""
    from samplers.models import load_adapter

    adapter = load_adapter("toy")
    singles = [p for p in load_prompts("heldout") if parse_prompt(p).kind == "single"]
    prompts = [p for p in singles for _ in range(8)]
    with torch.no_grad():
        images = adapter.generate(prompts, list(range(len(prompts))))
    results = evaluate_images(images, prompts)
    colour = np.mean([r["constraints"]["colour"] for r in results])
    assert len(results) == 120 and colour >= COLOUR_FLOOR, colour


COLOUR_FLOOR = 0.65


def test_toy_clip_ranks_the_true_caption_first_on_heldout_images():
    from align.toy.reward_models import clip_top1
    from rewards.clip_score import _toy_clip_dir

    top1 = clip_top1(_toy_clip_dir(), "heldout", seeds=1, candidates=8)
    assert top1 >= CLIP_TOP1_FLOOR, top1  # chance is 1/8


CLIP_TOP1_FLOOR = 0.8


def test_count_variants_are_the_other_counts_of_a_single_object_prompt():
    from align.toy.reward_models import count_variants

    assert count_variants("two red circles") == ["a red circle", "three red circles"]
    assert count_variants("an orange square") == ["two orange squares", "three orange squares"]
    assert count_variants("a red circle left of a blue square") == []


def test_toy_clip_reads_the_count_of_clean_renders():
    """Of each held-out single-object render's three count captions the toy CLIP prefers the right one
    0.85 of the time over 4 seeds (chance 1/3): what ReNO's images fool is a CLIP that reads count."""
    from align.toy.reward_models import clip_count_top1
    from rewards.clip_score import _toy_clip_dir

    top1 = clip_count_top1(_toy_clip_dir(), "heldout", seeds=1)
    assert top1 >= CLIP_COUNT_FLOOR, top1


CLIP_COUNT_FLOOR = 0.75


def test_world_rng_is_local():
    state = random.getstate()
    make_example("a red circle", 0)
    assert random.getstate() == state


def test_shipped_configs_name_no_absolute_path():
    import json

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    found = [
        (path.name, s)
        for root in (PIPELINE_DIR, TOY_ASSETS)
        for path in root.rglob("*.json")
        for s in strings(json.loads(path.read_text()))
        if s.startswith("/") or s[1:3] == ":\\"
    ]
    assert not found, found
