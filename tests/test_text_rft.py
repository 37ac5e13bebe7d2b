"""Rejection-sampling fine-tuning before a text run (align/text/rft.py), with a tiny Llama built in code."""

import json
from types import SimpleNamespace

import pytest
import torch

from align.config import config_from_data
from align.loop import Run, plan_epoch, train
from align.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from align.text import grpo  # noqa: F401  (registers the text algorithms)
from align.text.evaluate import generate_texts
from align.text.rft import right_answers
from rewards.text.base import References

PROMPTS = [f"What is {a} + {b}? Reply with only the number." for a, b in ((1, 2), (3, 4), (5, 6), (7, 8))]


def test_right_answers_keep_what_the_references_judge_right_as_sampled_and_as_the_reference():
    greedy = {PROMPTS[0]: "1 + 2 = 3", PROMPTS[1]: "8", PROMPTS[2]: "11", PROMPTS[3]: "15"}
    drawn = {PROMPTS[0]: "3", PROMPTS[1]: "The sum is 7", PROMPTS[2]: "12", PROMPTS[3]: "7 + 8 = 14"}
    temperatures = []

    class Replies:  # greedy answers from one table, draws from another
        def sample(self, prompts, *, max_new_tokens, temperature, seed, score):
            temperatures.append(temperature)
            table = greedy if temperature == 0.0 else drawn
            return SimpleNamespace(extra={"texts": [table[p] for p in prompts]})

    references = References({PROMPTS[0]: "3", PROMPTS[1]: "7", PROMPTS[2]: "11", PROMPTS[3]: "15"})
    found = right_answers(Replies(), PROMPTS, references, samples=2, temperature=0.7, max_new_tokens=8, seed=0)
    assert temperatures == [0.0, 0.7]  # greedy first, then the draws
    # the restated sum and the bare one of prompt 0 are two answers but one target
    assert found["answer"] == [
        (PROMPTS[0], "1 + 2 = 3"), (PROMPTS[2], "11"), (PROMPTS[3], "15"), (PROMPTS[0], "3"),
        (PROMPTS[1], "The sum is 7"),
    ]  # fmt: skip
    assert found["reference"] == [(PROMPTS[0], "3"), (PROMPTS[2], "11"), (PROMPTS[3], "15"), (PROMPTS[1], "7")]


def _config(prompts_file, train=None, **algorithm):
    data = {
        "model": {"name": "tiny:llama"},
        "lora": {"rank": 8, "alpha": 16.0},
        "rewards": {"terms": [{"name": "text-exact", "args": {"references": str(prompts_file)}}], "normalise": "none"},
        "algorithm": {"name": "text-grpo", "max_new_tokens": 4, "kl_coef": 0.1, "logprob_chunk_size": 16,
                      "rft_epochs": 4, "rft_lr": 1e-2, "rft_batch_size": 4} | algorithm,
        "train": {"seed": 0, "lr": 1e-3, "batch_size": 8, "group_size": 4, "micro_batch_size": 8,
                  "num_epochs": 1, "prompts": str(prompts_file)} | (train or {}),
        "eval": {"prompts": str(prompts_file)},
        "logging": {"tensorboard": False, "progress": False},
    }  # fmt: skip
    return config_from_data(data)


@pytest.fixture
def half_right(tmp_path):
    """A prompts file whose references are the tiny model's own greedy answers for half the prompts (those it
    'solves': 0 and 2) and a string it never says for the rest."""
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps({"prompt": p, "answer": "?"}) + "\n" for p in PROMPTS))
    run = Run(_config(probe, rft_epochs=0), tmp_path / "probe")
    said = generate_texts(run.policy, PROMPTS, max_new_tokens=4)["texts"]
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": p, "answer": s if i % 2 == 0 else "never said"} for i, (p, s) in enumerate(zip(PROMPTS, said))]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_warm_start_fine_tunes_on_the_solved_prompts_and_anchors_the_kl_there(tmp_path, half_right):
    run = Run(_config(half_right), tmp_path / "run")
    base = {name: value.clone() for name, value in run.policy.trainable_state().items()}
    stats = run.modality.warm_start(run)
    assert stats["prompts"] == 4 and stats["solved_prompts"] == 2 and stats["pairs"] == 2
    nll = stats["nll"]  # mean token NLL of each pass: falling, it learns them
    assert len(nll) == 4 and all(b < a for a, b in zip(nll, nll[1:])) and nll[-1] < 0.75 * nll[0], nll
    moved = run.policy.trainable_state()
    assert any(not torch.equal(base[n], moved[n]) for n in base)
    # the KL anchor is the fine-tuned LoRA: the first GRPO loss has no KL; with the base as anchor it would
    plan = plan_epoch(run.prompts, run.config, 0, 0, 1)
    batch = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)
    rows = torch.arange(batch.trajectory.batch_size)
    assert run.algorithm.loss(batch, rows)[1]["kl"] == 0.0
    anchor, run.policy.reference_state = run.policy.reference_state, None
    batch = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)
    assert run.algorithm.loss(batch, rows)[1]["kl"] > 1e-4
    run.policy.reference_state = anchor
    # the anchor is part of the run's checkpoint: a resumed run keeps it
    directory = save_run_checkpoint(run)
    resumed = Run(_config(half_right), tmp_path / "resumed")
    load_run_checkpoint(resumed, directory)
    assert all(torch.equal(anchor[n], resumed.policy.reference_state[n]) for n in anchor)


def test_a_run_records_the_warm_start_and_its_evaluation(tmp_path, half_right):
    summary = train(_config(half_right), tmp_path / "run")
    warm = summary["rft"]
    assert warm["solved_prompts"] == 2 and warm["evaluation"]["num_prompts"] == len(warm["evaluation"]["outcomes"]) == 4
    # an EMA of the weights starts from the warm-started ones: the warm start's evaluation is the same
    averaged = train(_config(half_right, train={"ema_decay": 0.5}), tmp_path / "ema")["rft"]["evaluation"]
    assert averaged["examples"] == warm["evaluation"]["examples"] and averaged["score"] == warm["evaluation"]["score"]
    assert summary["base"]["exact_accuracy"] == 0.5  # the base said those two already
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["rft"]["settings"]["epochs"] == 4 and written["rft"]["pairs"] == 2


def test_the_warm_start_refuses_prompts_it_cannot_judge_and_says_when_it_solves_none(tmp_path):
    text_file = tmp_path / "prompts.txt"
    text_file.write_text("\n".join(PROMPTS) + "\n")
    config = _config(text_file)
    config.rewards.terms[0].args["references"] = {p: "3" for p in PROMPTS}
    run = Run(config, tmp_path / "a")
    with pytest.raises(ValueError, match="has none; use a task split .* or set algorithm.rft_epochs=0"):
        run.modality.warm_start(run)
    never = tmp_path / "never.jsonl"
    never.write_text("".join(json.dumps({"prompt": p, "answer": "never said"}) + "\n" for p in PROMPTS))
    run = Run(_config(never), tmp_path / "b")
    base = run.policy.trainable_state()
    with pytest.warns(UserWarning, match="found no right answer to any of the 4 training prompts"):
        stats = run.modality.warm_start(run)  # nothing to learn: the run goes on from the base, and says so
    assert stats["solved_prompts"] == stats["pairs"] == 0 and stats["nll"] == []
    assert all(torch.equal(base[n], value) for n, value in run.policy.trainable_state().items())
