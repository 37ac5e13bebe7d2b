"""Diffusion-DPO / Flow-DPO on the loop: log 2 at the start, learning, and strict pairs files."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_adapter

from align.cli import main
from align.config import config_from_data
from align.losses import LOG_2
from align.pairs import read_pairs_file, write_pairs


def make_pairs(directory: Path, model: str = "tiny:sd15", count: int = 4) -> Path:
    adapter = tiny_adapter(model)
    prompts = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"][:count]
    with torch.no_grad():
        chosen = adapter.generate(prompts, list(range(count)), num_steps=2)
        rejected = torch.flip(adapter.generate(prompts, list(range(10, 10 + count)), num_steps=2), dims=[-1])
    return write_pairs(directory, prompts, chosen, rejected, "test")


def dpo_config(pairs: Path, model: str, name: str, **train):
    return config_from_data(
        {
            "model": {"name": model},
            "algorithm": {"name": name, "pairs": str(pairs), "beta": 500.0},
            "rewards": {"terms": [{"name": "geneval-toy"}], "normalise": "none"},
            "sampling": {"num_steps": 2, "eval_num_steps": 2},
            "lora": {"rank": 4, "alpha": 4},
            "train": {
                "batch_size": 8,
                "group_size": 2,
                "micro_batch_size": 8,
                "num_epochs": 6,
                "lr": 1e-2,
                "prompts": "train",
                **train,
            },
            "eval": {"prompts": "heldout", "max_prompts": 2},
            "logging": {"tensorboard": False, "progress": False},
        }
    )


@pytest.mark.parametrize("model,name", [("tiny:sd15", "diffusion-dpo"), ("tiny:sd3", "flow-dpo")])
def test_dpo_loss_is_log2_when_the_policy_is_the_reference(tmp_path, model, name):
    from align.loop import Run

    pairs = make_pairs(tmp_path / "pairs", model)
    run = Run(dpo_config(pairs, model, name), tmp_path / "run")
    batch = run.algorithm.collect(0, [], torch.zeros(8, dtype=torch.long), list(range(8)))
    loss, stats = run.algorithm.loss(batch, torch.arange(len(batch.prompts)))
    assert loss.item() == pytest.approx(LOG_2, abs=1e-6)
    assert stats["reward_margin"] == 0.0
    loss.backward()
    grads = [p.grad for p in run.policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_short_dpo_run_raises_the_chosen_over_rejected_margin(tmp_path):
    """The margin is measured on fixed noised batches (epochs 0-5's timesteps and noise), before
    and after training: per-epoch training margins are one random timestep each, too noisy."""
    from align.loop import Run

    pairs = make_pairs(tmp_path / "pairs", "tiny:sd15")
    config = dpo_config(pairs, "tiny:sd15", "diffusion-dpo")
    config.algorithm.beta = 5000.0  # Diffusion-DPO's own beta (500 moves the margin ten times less)
    run = Run(config, tmp_path / "run")
    fixed = [run.algorithm.collect(e, [], torch.zeros(8, dtype=torch.long), list(range(8))) for e in range(6)]

    def measured():
        with torch.no_grad():
            outs = [run.algorithm.loss(b, torch.arange(len(b.prompts))) for b in fixed]
        return sum(o[0].item() for o in outs) / 6, sum(o[1]["reward_margin"] for o in outs) / 6

    loss_before, margin_before = measured()
    assert loss_before == pytest.approx(LOG_2, abs=1e-6) and margin_before == pytest.approx(0.0, abs=1e-6)
    for _ in range(4):
        run.train_epoch()
    loss_after, margin_after = measured()
    assert margin_after > 0.1, margin_after
    assert loss_after < LOG_2 - 0.01, loss_after


def test_pairs_file_errors_name_the_line(tmp_path):
    pairs = make_pairs(tmp_path / "pairs", count=2)
    good = pairs.read_text().splitlines()
    cases = {
        "missing field": [good[0], json.dumps({"prompt": "x", "chosen": "images/00000_chosen.png"})],
        "does not exist": [good[0], good[1].replace("00001_rejected", "nope")],
        "not a readable image": [good[0], good[1]],
    }
    (tmp_path / "pairs" / "images" / "broken.png").write_bytes(b"not an image")
    cases["not a readable image"][1] = good[1].replace("images/00001_rejected.png", "images/broken.png")
    for problem, lines in cases.items():
        bad = tmp_path / "pairs" / "bad.jsonl"
        bad.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{problem}"):
            read_pairs_file(bad)
    assert len(read_pairs_file(pairs)) == 2


def test_train_with_a_malformed_pairs_file_exits_2_and_writes_nothing(tmp_path, capsys):
    import yaml

    from align.config import config_to_data

    pairs = make_pairs(tmp_path / "pairs", count=2)
    bad = tmp_path / "pairs" / "bad.jsonl"
    bad.write_text(pairs.read_text().splitlines()[0] + '\n{"prompt": "x"}\n')
    config = config_to_data(dpo_config(bad, "tiny:sd15", "diffusion-dpo"))
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["train", str(path), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "bad.jsonl:2: missing field chosen, rejected" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_online_pairs_are_the_best_and_worst_of_each_group():
    from align.algorithms.dpo import _best_and_worst

    reward = torch.tensor([0.2, 0.9, 0.5, 0.5, 0.1, 0.7, 0.7, 0.3, 0.4, 0.4])
    groups = torch.tensor([3, 3, 3, 3, 1, 1, 1, 1, 2, 2])  # groups in order of first appearance
    best, worst = _best_and_worst(reward, groups)
    assert best.tolist() == [1, 5, 8] and worst.tolist() == [0, 4, 8]  # ties: the earlier sample
    assert (reward[best] - reward[worst]).tolist() == pytest.approx([0.7, 0.6, 0.0])  # equal: gap 0, dropped


def test_online_replay_trains_on_the_last_epochs_pairs_and_resumes_them(tmp_path):
    import pattern_reward  # noqa: F401  (registers test-pattern, a dense reward: every group has a gap)

    from align.loop import Run

    config = dpo_config(tmp_path / "unused.jsonl", "tiny:sd3", "online-dpo", group_size=4)
    config.algorithm.pairs = None
    config.algorithm.replay_epochs = 2
    config.rewards.terms[0].name = "test-pattern"
    run = Run(config, tmp_path / "run")
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    prompts = ["a red circle"] * 4 + ["a blue square"] * 4
    first = run.algorithm.collect(0, prompts, groups, list(range(8)))
    assert len(first.prompts) == 2  # the best against the worst of each group of 4
    saved = run.algorithm.state_dict()
    second = run.algorithm.collect(1, prompts, groups, list(range(8, 16)))
    third = run.algorithm.collect(2, prompts, groups, list(range(16, 24)))
    assert len(second.prompts) == len(third.prompts) == 4  # two epochs of two pairs, no more
    assert torch.equal(third.chosen[:2].cpu(), second.chosen[2:].cpu())  # epoch 1's pairs replayed
    assert not torch.equal(third.noise[:2], second.noise[2:])  # at new noise
    run.algorithm.load_state_dict(saved)  # as resume restores it
    again = run.algorithm.collect(1, prompts, groups, list(range(8, 16)))
    assert torch.equal(again.chosen, second.chosen) and torch.equal(again.noise, second.noise)


@pytest.mark.parametrize("source", ["policy", "reference"])
def test_online_pairs_come_from_the_reference_only_when_asked(source, tmp_path):
    from pathlib import Path

    from align.config import load_config
    from align.loop import Run, plan_epoch

    recipe = Path(__file__).parents[1] / "configs" / "tiny" / "online-dpo.yaml"
    config = load_config(recipe, [f"algorithm.sample_from={source}"])
    run = Run(config, tmp_path / "run")
    plan = plan_epoch(run.prompts, config, 0, 0, 1)
    before = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds).images
    with torch.no_grad():
        for parameter in run.policy.named_parameters().values():
            parameter.add_(0.5 * torch.randn_like(parameter))
    after = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds).images
    assert torch.equal(before, after) == (source == "reference")


def test_online_all_pairs_are_every_ordered_pair_of_a_group():
    from align.algorithms.dpo import _all_pairs

    reward = torch.tensor([0.2, 0.9, 0.5, 0.1, 0.7])
    groups = torch.tensor([3, 3, 3, 1, 1])
    higher, lower = _all_pairs(reward, groups)
    assert list(zip(higher.tolist(), lower.tolist())) == [(1, 0), (2, 0), (1, 2), (4, 3)]
    assert bool((reward[higher] >= reward[lower]).all())


def test_online_all_pairs_trains_on_more_pairs_than_best_and_worst(tmp_path):
    import pattern_reward  # noqa: F401  (a dense reward: no two samples tie)

    from align.loop import Run

    counts = {}
    for pairing in ("best-worst", "all"):
        config = dpo_config(tmp_path / "unused.jsonl", "tiny:sd3", "online-dpo", group_size=4)
        config.algorithm.pairs = None
        config.algorithm.pairing = pairing
        config.rewards.terms[0].name = "test-pattern"
        run = Run(config, tmp_path / pairing)
        groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        batch = run.algorithm.collect(0, ["a red circle"] * 4 + ["a blue square"] * 4, groups, list(range(8)))
        assert len(set(batch.noise[:, 0, 0, 0].tolist())) == len(batch.prompts)  # a noise per pair
        assert batch.stats["pair_chosen_reward"] > batch.stats["pair_rejected_reward"]
        counts[pairing] = len(batch.prompts)
    assert counts == {"best-worst": 2, "all": 12}


def test_sft_weight_adds_the_chosen_images_own_loss(tmp_path):
    from align.loop import Run

    pairs = make_pairs(tmp_path / "pairs", "tiny:sd3")
    config = dpo_config(pairs, "tiny:sd3", "flow-dpo")
    run = Run(config, tmp_path / "run")
    batch = run.algorithm.collect(0, [], torch.zeros(8, dtype=torch.long), list(range(8)))
    rows = torch.arange(len(batch.prompts))
    with torch.no_grad():
        for parameter in run.policy.named_parameters().values():
            parameter.add_(0.05 * torch.randn_like(parameter))
    plain, _ = run.algorithm.loss(batch, rows)
    run.context.settings.sft_weight = 2.0
    with_sft, stats = run.algorithm.loss(batch, rows)
    with torch.no_grad():
        errors = run.algorithm._errors(batch, rows)
        with run.policy.reference():
            reference = run.algorithm._errors(batch, rows)
    expected = (errors - reference).chunk(2)[0].mean()
    assert abs(float(expected)) > 1e-6  # the perturbed policy fits the chosen differently
    assert stats["sft_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert float((with_sft - plain).detach()) == pytest.approx(
        2.0 * 500.0 / 4 * float(expected), rel=1e-4, abs=1e-6
    )


@pytest.mark.parametrize("model", ["tiny:sd15", "tiny:sd3"])
def test_time_range_noises_pairs_only_in_that_part_of_the_schedule(tmp_path, model):
    from align.loop import Run

    pairs = make_pairs(tmp_path / "pairs", model)
    config = dpo_config(pairs, model, "flow-dpo" if model == "tiny:sd3" else "diffusion-dpo")
    config.algorithm.time_range = [0.6, 1.0]
    run = Run(config, tmp_path / "run")
    sigmas = torch.cat(
        [
            run.algorithm.collect(epoch, [], torch.zeros(8, dtype=torch.long), list(range(8))).sigma
            for epoch in range(8)
        ]
    )
    full = run.context.adapter.training_times(4096, torch.Generator().manual_seed(0))[1]
    high = run.context.adapter.training_times(4096, torch.Generator().manual_seed(0), within=(0.6, 1.0))[1]
    assert float(high.min()) > float(full.min()) + 0.1  # the low-noise part is cut away
    assert float(sigmas.min()) >= float(high.min()) - 1e-6 and float(sigmas.max()) <= 1.0


def test_time_range_out_of_order_is_refused(tmp_path, capsys):
    pairs = make_pairs(tmp_path / "pairs", "tiny:sd3", count=2)
    path = tmp_path / "dpo.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "tiny:sd3"},
                "algorithm": {"name": "flow-dpo", "pairs": str(pairs), "time_range": [0.8, 0.2]},
                "rewards": {"terms": [{"name": "geneval-toy"}], "normalise": "none"},
            }
        )
    )
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "time_range: must be [lo, hi] with 0 <= lo < hi <= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
