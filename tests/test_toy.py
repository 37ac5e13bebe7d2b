"""The toy world: captions match images, the verifier's partial scores, the shipped model and CLIP."""

import random

import numpy as np
import pytest
import torch

from align.toy.model import PIPELINE_DIR
from align.toy.world import Obj, Scene, load_prompts, make_example, parse_prompt, render
from rewards.geneval import evaluate_images

SHIPPED = (PIPELINE_DIR / "model_index.json").is_file()
needs_assets = pytest.mark.skipif(not SHIPPED, reason="toy assets not built (align pretrain-toy)")


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
    from align.toy.world import COLOURS

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


def test_splits_are_disjoint_and_novel_pairs_are_unseen():
    splits = {name: set(load_prompts(name)) for name in ("pretrain", "train", "heldout", "novel")}
    assert not splits["heldout"] & (splits["pretrain"] | splits["train"])
    assert not splits["novel"] & (splits["pretrain"] | splits["train"] | splits["heldout"])
    assert splits["train"] <= splits["pretrain"]
    from align.toy.world import NOVEL_PAIRS

    seen = {pair for p in splits["pretrain"] for pair in parse_prompt(p).pairs}
    assert not seen & set(NOVEL_PAIRS)
    assert all(set(parse_prompt(p).pairs) & set(NOVEL_PAIRS) for p in splits["novel"])


def test_rendering_is_deterministic_from_the_seed():
    a, _ = make_example("a purple triangle left of an orange circle", 5)
    b, _ = make_example("a purple triangle left of an orange circle", 5)
    c, _ = make_example("a purple triangle left of an orange circle", 6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@needs_assets
def test_shipped_pipeline_loads_offline_through_the_sd3_adapter_and_passes_doctor(capsys):
    from align.cli import main
    from samplers.adapters.sd3 import SD3Adapter
    from samplers.models import load_adapter

    adapter = load_adapter("toy")
    assert isinstance(adapter, SD3Adapter) and type(adapter.pipeline).__name__ == "StableDiffusion3Pipeline"
    size = sum(f.stat().st_size for f in PIPELINE_DIR.parent.rglob("*") if f.is_file())
    assert size < 30 * 2**20, size
    assert main(["doctor", "toy", "--steps", "4"]) == 0
    assert "4/4 checks passed" in capsys.readouterr().out


@needs_assets
def test_shipped_model_draws_the_colours_it_is_asked_for():
    """A floor on the base model: colour is the category it learns first (0.96 on held-out prompts at export)."""
    from samplers.models import load_adapter

    adapter = load_adapter("toy")
    prompts = [p for p in load_prompts("heldout") if parse_prompt(p).kind == "single"]
    with torch.no_grad():
        images = adapter.generate(prompts, list(range(len(prompts))))
    results = evaluate_images(images, prompts)
    colour = np.mean([r["constraints"]["colour"] for r in results])
    assert colour >= COLOUR_FLOOR, colour


COLOUR_FLOOR = 0.85


@pytest.mark.skipif(not (PIPELINE_DIR.parent / "clip").is_dir(), reason="toy CLIP not built")
def test_toy_clip_ranks_the_true_caption_first_on_heldout_images():
    from align.toy.reward_models import clip_top1
    from rewards.clip_score import _toy_clip_dir

    top1 = clip_top1(_toy_clip_dir(), "heldout", seeds=1, candidates=8)
    assert top1 >= CLIP_TOP1_FLOOR, top1  # chance is 1/8


CLIP_TOP1_FLOOR = 0.8


def test_world_rng_is_local():
    state = random.getstate()
    make_example("a red circle", 0)
    assert random.getstate() == state


def test_shipped_configs_name_no_absolute_path():
    import json

    from align.toy.model import ASSETS

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    found = [
        (path.name, s)
        for path in ASSETS.rglob("*.json")
        for s in strings(json.loads(path.read_text()))
        if s.startswith("/") or s[1:3] == ":\\"
    ]
    assert not found, found
