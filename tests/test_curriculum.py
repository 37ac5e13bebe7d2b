"""A curriculum of prompts (train.curriculum_start / curriculum_epochs): easiest first, the pool growing to all."""

import json
from types import SimpleNamespace

import pytest

from align.config import config_from_data
from align.epochs import plan_epoch, training_prompts
from align.schema import ConfigError
from align.text.data import load_prompt_difficulties, load_text_prompts
from align.text.modality import TextModality
from rewards.text.tasks import arithmetic_answer


def text_config(**train):
    return config_from_data(
        {
            "model": {"name": "tiny:llama"},
            "algorithm": {"name": "text-grpo"},
            "rewards": {"terms": [{"name": "text-exact", "args": {"references": "arithmetic"}}]},
            "train": {"batch_size": 32, "group_size": 4, "micro_batch_size": 32, "num_epochs": 100,
                      "prompts": "arithmetic:train", **train},
        }
    )


def sums(prompts):
    return [int(arithmetic_answer(p)) for p in prompts]


def test_arithmetic_prompts_are_ordered_by_their_sum_and_the_pool_grows_to_all():
    config = text_config(curriculum_start=0.25, curriculum_epochs=40)
    prompts = training_prompts(TextModality, config.train)
    assert sorted(prompts) == sorted(load_text_prompts("arithmetic:train"))  # the same 150, reordered
    assert sums(prompts) == sorted(sums(prompts))
    head = max(sums(prompts[:38]))  # epoch 0 draws from the easiest ceil(0.25 x 150) = 38
    first = plan_epoch(prompts, config, 0, 0, 1)
    assert max(sums(first.prompts)) <= head and len(set(first.prompts)) == 8  # 8 distinct prompts x 4
    middle = set(sums(plan_epoch(prompts, config, 20, 0, 1).prompts))  # share 0.625: 94 prompts
    assert max(middle) <= max(sums(prompts[:94]))
    # after the curriculum, every prompt is drawn again: epochs 40-59 reach the hardest sums
    late = {p for e in range(40, 60) for p in plan_epoch(prompts, config, e, 0, 1).prompts}
    assert max(sums(late)) == max(sums(prompts)) > head
    assert plan_epoch(prompts, config, 3, 0, 1).prompts == plan_epoch(prompts, config, 3, 0, 1).prompts


def test_no_curriculum_leaves_the_prompts_and_epochs_as_they_were():
    config = text_config()
    prompts = training_prompts(TextModality, config.train)
    assert prompts == load_text_prompts("arithmetic:train")
    assert max(sums(plan_epoch(prompts, config, 0, 0, 1).prompts)) > 30  # the first epoch is not the easy end


def test_a_curriculum_needs_its_epochs_and_difficulties(tmp_path):
    with pytest.raises(ConfigError, match="curriculum_epochs"):
        text_config(curriculum_start=0.5)
    bare = tmp_path / "prompts.jsonl"
    bare.write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"prompts.jsonl:1: no numeric `difficulty`"):
        load_prompt_difficulties(str(bare))
    graded = tmp_path / "graded.jsonl"
    graded.write_text("".join(json.dumps({"prompt": p, "difficulty": d}) + "\n" for p, d in [("b", 2), ("a", 1)]))
    config = text_config(curriculum_start=0.5, curriculum_epochs=4, prompts=str(graded))
    assert training_prompts(TextModality, config.train) == ["a", "b"]
    with pytest.raises(ValueError, match="no difficulties"):
        load_prompt_difficulties(str(tmp_path / "lines.txt"))
    images = SimpleNamespace(prompts=lambda source: ["a red circle"])  # a modality without difficulties
    with pytest.raises(ValueError, match="only text prompts"):
        training_prompts(images, config.train)


def test_a_ramped_reward_weight_rises_from_zero_and_evaluations_score_with_the_full_weight(tmp_path):
    from align.cli import main

    with pytest.raises(ConfigError, match=r"ramp \[3, 1\]"):
        config_from_data({"rewards": {"terms": [{"name": "clip-toy", "ramp": [3, 1]}]}})
    term = text_config().rewards.terms[0]
    term.weight, term.ramp = 0.3, [1, 3]
    assert [term.weight_at(e) for e in range(5)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3])

    recipe = "configs/text/smollm2-grpo-arithmetic.yaml"
    overrides = ["model.name=tiny:llama", "train.num_epochs=3", "train.batch_size=8", "train.micro_batch_size=8",
                 "eval.max_prompts=4", "algorithm.max_new_tokens=4", "rewards.terms.1.ramp=[1, 2]",
                 "train.curriculum_start=0.2", "train.curriculum_epochs=2"]
    assert main(["train", recipe, *overrides, "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    format_weights = [r["reward_weights"]["text-format"] for r in records if "reward_weights" in r]
    assert format_weights == pytest.approx([0.0, 0.15, 0.3])
    assert all(r["reward_weights"]["text-exact"] == 1.0 for r in records if "reward_weights" in r)
    aligned = json.loads((tmp_path / "run" / "summary.json").read_text())["aligned"]
    weights = {"text-exact": 1.0, "text-format": 0.3, "text-numeric": 1.0}
    assert aligned["score"] == pytest.approx(sum(weights[n] * v for n, v in aligned["rewards"].items()), abs=1e-6)
