"""Text GRPO, DPO, SimPO and online DPO on the loop's epoch, with a tiny Llama built in code."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from align.config import config_from_data
from align.loop import Run, plan_epoch
from align.schema import ConfigError
from align.text import grpo, preference  # noqa: F401  (registers the text algorithms)
from align.text.data import load_text_prompts, read_pairs
from align.text.grpo import reduce_tokens
from align.text.preference import best_and_worst, sequence_log_probs
from rewards.text.tasks import task_problems

CONFIGS = Path(__file__).parents[1] / "configs" / "text"
SAYS_YES = {"name": "text-format", "args": {"pattern": "yes", "mode": "search"}}


def tiny_config(algorithm: dict, rewards=(SAYS_YES,), **train):
    data = {
        "model": {"name": "tiny:llama"},
        "lora": {"rank": 8, "alpha": 16.0},
        "rewards": {"terms": [dict(r) for r in rewards], "normalise": "none"},
        "algorithm": {"max_new_tokens": 6, "logprob_chunk_size": 16} | algorithm,
        "train": {
            "seed": 0, "lr": 3e-2, "batch_size": 32, "group_size": 8, "micro_batch_size": 16,
            "num_epochs": 8, "prompts": "arithmetic:train", "max_grad_norm": 1.0,
        } | train,
        "eval": {"prompts": "arithmetic:heldout", "max_prompts": 16},
        "logging": {"tensorboard": False, "progress": False},
    }  # fmt: skip
    return config_from_data(data)


def run_epochs(config, tmp_path, epochs=None):
    run = Run(config, tmp_path)
    before = {n: p.detach().clone() for n, p in run.policy.named_parameters().items()}
    records = []
    for _ in range(epochs or config.train.num_epochs):
        record = run.train_epoch()
        record.pop("_images"), record.pop("_prompts")
        records.append(record)
    return run, records, before


def test_token_and_sequence_reduction_by_hand():
    values = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert reduce_tokens(values, mask, "token").item() == pytest.approx((1 + 2 + 4) / 3)
    assert reduce_tokens(values, mask, "sequence").item() == pytest.approx((1.5 + 4) / 2)
    log_probs = torch.tensor([[-1.0, -2.0, 5.0], [-3.0, 7.0, 7.0]])
    assert sequence_log_probs(log_probs, mask, mean=False).tolist() == [-3.0, -3.0]
    assert sequence_log_probs(log_probs, mask, mean=True).tolist() == [-1.5, -3.0]


def test_best_and_worst_of_each_group_with_a_margin():
    signal = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.5, 0.2, 0.7, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert best_and_worst(signal, groups, 0.0) == ([1, 6], [0, 7])  # group 1 has no spread
    assert best_and_worst(signal, groups, 0.75) == ([1], [0])


def test_short_grpo_run_raises_a_verifiable_reward_and_trains_every_lora_tensor(tmp_path):
    config = tiny_config({"name": "text-grpo", "temperature": 1.0})
    run, records, before = run_epochs(config, tmp_path)
    rewards = [r["reward"] for r in records]
    assert sum(rewards[-2:]) / 2 > rewards[0] + 0.2, rewards
    after = run.policy.named_parameters()
    assert all(not torch.equal(before[n], p) for n, p in after.items())  # every trainable tensor moved
    assert records[0]["ratio_min"] == records[0]["ratio_max"] == 1.0  # on-policy: ratio exactly 1
    summary = run.evaluate()
    assert summary["rewards"]["text-format"] > 0.5 and math.isnan(summary["accuracy"]) is False


def test_grpo_first_loss_has_zero_kl_and_unit_ratio_when_rescored(tmp_path):
    from align.loop import plan_epoch

    config = tiny_config({"name": "text-grpo", "kl_coef": 0.1, "normalisation": "sequence"}, inner_epochs=2)
    run = Run(config, tmp_path)
    plan = plan_epoch(run.prompts, config, 0, 0, 1)
    batch = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)
    unit = run.algorithm.micro_batches(batch, torch.Generator().manual_seed(0))[0]
    loss, stats = run.algorithm.loss(batch, unit)
    assert stats["kl"] == 0.0  # a fresh LoRA (B = 0) is the reference
    # old log-probs came from the whole batch, these from a micro-batch: equal up to float rounding
    assert abs(stats["ratio_min"] - 1) < 1e-5 and abs(stats["ratio_max"] - 1) < 1e-5
    advantages = batch.advantages[unit]
    assert loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-5)  # ratio 1: -mean A


def _pairs_file(tmp_path, lines):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(line) if isinstance(line, dict) else line for line in lines) + "\n")
    return path


PAIRS = [
    {"prompt": "reply with yes", "chosen": "yes", "rejected": "no"},
    {"prompt": "was it a good movie ?", "chosen": "yes it was good", "rejected": "no it was bad"},
    {"prompt": "what is 3 plus 4 ?", "chosen": "7", "rejected": "8"},
    {"prompt": "is the cat happy ?", "chosen": "yes very happy", "rejected": "no sad"},
]


@pytest.mark.parametrize("name", ["text-dpo", "text-simpo"])
def test_offline_preferences_learn_the_chosen_side(tmp_path, name):
    path = _pairs_file(tmp_path, PAIRS)
    config = tiny_config(
        {"name": name, "pairs": str(path)}, batch_size=8, group_size=2, micro_batch_size=4, lr=1e-2
    )
    run, records, _ = run_epochs(config, tmp_path, epochs=8)
    if name == "text-dpo":
        assert records[0]["preference_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference
    assert records[-1]["reward_margin"] > records[0]["reward_margin"] + 0.5
    assert records[-1]["reward_accuracy"] == 1.0
    assert records[-1]["preference_loss"] < records[0]["preference_loss"]


def test_online_dpo_pairs_the_best_and_worst_samples(tmp_path):
    """Each pair's completions are its group's highest- and lowest-scored samples (re-scored from the
    pair's own tokens); only groups whose spread passes the margin give a pair; training moves the LoRA."""
    config = tiny_config({"name": "text-online-dpo", "beta": 0.5}, lr=1e-2)
    run, records, before = run_epochs(config, tmp_path, epochs=4)
    assert all(0 <= r["pairs"] <= 4 for r in records) and records[0]["pairs"] > 0
    assert all(r["pair_gap"] > 0 for r in records if r["pairs"])
    assert any(not torch.equal(before[n], p) for n, p in run.policy.named_parameters().items())

    plan = plan_epoch(run.prompts, config, epoch=4, process=0, processes=1)
    batch = run.algorithm.collect(4, plan.prompts, plan.group_ids, plan.seeds)
    (values,) = batch.values.values()  # [B] one reward; normalise none: the signal itself
    groups = {g: values[plan.group_ids == g] for g in plan.group_ids.unique().tolist()}
    spread = [g for g, v in groups.items() if float(v.max() - v.min()) > config.algorithm.reward_margin]
    assert spread and len(batch.prompts) == len(spread)
    tokens, policy = batch.tokens, run.policy
    chosen = run.rewards.score(policy.decode(tokens["chosen_ids"], tokens["chosen_mask"]), batch.prompts)
    rejected = run.rewards.score(
        policy.decode(tokens["rejected_ids"], tokens["rejected_mask"]), batch.prompts
    )
    prompt_group = {plan.prompts[int((plan.group_ids == g).nonzero()[0])]: g for g in spread}
    for prompt, best, worst in zip(
        batch.prompts, chosen["text-format"], rejected["text-format"], strict=True
    ):
        group = groups[prompt_group[prompt]]
        assert float(best) == float(group.max()) and float(worst) == float(group.min())


def test_a_malformed_pairs_file_names_its_line(tmp_path):
    path = _pairs_file(tmp_path, [PAIRS[0], {"prompt": "x", "chosen": "a"}, PAIRS[1]])
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: missing or non-string rejected"):
        read_pairs(path)
    path = _pairs_file(tmp_path, [PAIRS[0], "{not json"])
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: not valid JSON"):
        read_pairs(path)
    path = _pairs_file(tmp_path, [{"prompt": "x", "chosen": "same", "rejected": "same"}])
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: chosen and rejected are the same text"):
        read_pairs(path)
    config = tiny_config(
        {"name": "text-dpo", "pairs": str(path)}, batch_size=8, group_size=2, micro_batch_size=4
    )
    with pytest.raises(ValueError, match=r"pairs.jsonl:1"):
        Run(config, tmp_path)
    with pytest.raises(ValueError, match="set algorithm.pairs"):
        Run(tiny_config({"name": "text-simpo"}, batch_size=8, group_size=2, micro_batch_size=4), tmp_path)


def test_algorithm_settings_are_checked_with_their_paths():
    with pytest.raises(ConfigError) as error:
        tiny_config({"name": "text-grpo", "normalisation": "tokens", "temperature": 0.0})
    text = str(error.value)
    assert "algorithm.normalisation: 'tokens' is not one of token, sequence" in text
    assert "algorithm.temperature: 0.0 must be greater than 0.0" in text
    with pytest.raises(ValueError, match="group_size >= 2"):
        Run(
            tiny_config({"name": "text-grpo"}, batch_size=4, group_size=1, micro_batch_size=4), Path("unused")
        )


def test_arithmetic_task_splits_prompts_and_files(tmp_path):
    splits = {name: task_problems(f"arithmetic:{name}") for name in ("train", "validation", "heldout")}
    assert {name: len(problems) for name, problems in splits.items()} == {
        "train": 150,
        "validation": 50,
        "heldout": 200,
    }
    prompts = [{p["prompt"] for p in problems} for problems in splits.values()]
    assert len(set.union(*prompts)) == 400  # disjoint: every operand pair 1..20 once
    for problems in splits.values():
        assert all(
            int(p["answer"]) == sum(map(int, p["prompt"].split("?")[0][8:].split(" + "))) for p in problems
        )
    (tmp_path / "prompts.txt").write_text("one\n\ntwo\n")
    assert load_text_prompts(str(tmp_path / "prompts.txt")) == ["one", "two"]
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match="prompts.jsonl:2: needs a string `prompt`"):
        load_text_prompts(str(tmp_path / "prompts.jsonl"))
    with pytest.raises(ValueError, match="has no split 'test'"):
        load_text_prompts("arithmetic:test")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_text_configs_validate(path):
    config = config_from_data(yaml.safe_load(path.read_text()))
    assert (
        config.algorithm.name.startswith("text-") and config.train.batch_size % config.train.group_size == 0
    )


def test_the_demo_runs_the_cpu_config_file():
    from align.text.demo import DEMO_CONFIG

    data = yaml.safe_load((CONFIGS / "smollm2-grpo-arithmetic.yaml").read_text())
    assert data == copy.deepcopy(DEMO_CONFIG)


def test_evaluation_counts_exact_and_final_number_answers():
    from types import SimpleNamespace

    from align.text.evaluate import evaluate_text, format_text_summary
    from rewards.combine import RewardSet
    from rewards.text.base import References

    answers = {"What is 2 + 2?": "4", "What is 3 + 4?": "7", "What is 5 + 5?": "10"}
    texts = {"What is 2 + 2?": "4", "What is 3 + 4?": "3 + 4 = 7", "What is 5 + 5?": "11"}

    class Replies:  # a policy that answers from a table (greedy evaluation asks for temperature 0)
        def sample(self, prompts, *, max_new_tokens, temperature, score):
            assert temperature == 0.0 and not score
            mask = torch.ones(len(prompts), max_new_tokens, dtype=torch.long)
            return SimpleNamespace(extra={"texts": [texts[p] for p in prompts], "completion_mask": mask})

    rewards = RewardSet([("text-exact", 2.0, {"references": answers})])
    summary = evaluate_text(
        Replies(), list(answers), max_new_tokens=3, references=References(answers), rewards=rewards
    )
    assert summary["exact_accuracy"] == pytest.approx(1 / 3) and summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["rewards"] == {"text-exact": pytest.approx(1 / 3)} and summary["score"] == pytest.approx(
        2 / 3
    )
    assert summary["completion_tokens"] == 3.0 and summary["examples"][1]["completion"] == "3 + 4 = 7"
    assert summary["outcomes"] == [1, 1, 0] and summary["exact_outcomes"] == [1, 0, 0]  # in prompt order
    se = math.sqrt(1 / 3 / 3)  # sample std of (1, 1, 0) (and of (1, 0, 0)) over sqrt(3): sqrt(1/3) / sqrt(3)
    assert summary["accuracy_se"] == pytest.approx(se) and summary["exact_accuracy_se"] == pytest.approx(se)
    assert "accuracy 0.667 +- 0.333  exact 0.333 +- 0.333" in format_text_summary(summary)
    words = {"Name a colour.": "red"}  # references that are not numbers: accuracy is the exact one
    texts["Name a colour."] = "Red."
    summary = evaluate_text(Replies(), list(words), max_new_tokens=2, references=References(words))
    assert summary["accuracy"] == summary["exact_accuracy"] == 1.0 and math.isnan(summary["score"])


def test_the_text_results_table_pairs_each_row_with_the_base():
    from align.text.evaluate import text_results_table

    def row(final, exact):
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        sd = lambda v: math.sqrt(sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1) / len(v))  # noqa: E731
        return {"num_prompts": len(final), "outcomes": final, "exact_outcomes": exact, "accuracy": mean(final),
                "accuracy_se": sd(final), "exact_accuracy": mean(exact), "exact_accuracy_se": sd(exact)}  # fmt: skip

    base, aligned = row([1, 0, 1, 0], [0, 0, 0, 0]), row([1, 1, 1, 0], [1, 1, 0, 0])
    # exact: differences (1, 1, 0, 0): mean 0.5, SE sqrt(1/3) / 2 = 0.289; final: (0, 1, 0, 0): 0.25, SE 0.25
    assert text_results_table([("base", base), ("GRPO", aligned)]).splitlines() == [
        "| held-out (4 prompts, greedy) | exact answer | vs base | final number right | vs base |",
        "| --- | --- | --- | --- | --- |",
        "| base | 0.000 +- 0.000 |  | 0.500 +- 0.289 |  |",
        "| GRPO | 0.500 +- 0.289 | +0.500 +- 0.289 | 0.750 +- 0.250 | +0.250 +- 0.250 |",
    ]


def test_the_shipped_pairs_are_the_arithmetic_train_splits():
    from rewards.text.tasks import arithmetic_pairs

    shipped = [json.loads(line) for line in (CONFIGS / "arithmetic-pairs.jsonl").read_text().splitlines()]
    assert shipped == arithmetic_pairs("train") and len(shipped) == 300
    assert {p["prompt"] for p in shipped} == {p["prompt"] for p in task_problems("arithmetic:train")}
    assert shipped[:2] == [
        {
            "prompt": "What is 20 + 14? Reply with only the number.",
            "chosen": "34",
            "rejected": "20 + 14 = 34",
        },
        {"prompt": "What is 20 + 14? Reply with only the number.", "chosen": "34", "rejected": "33"},
    ]


def test_the_text_demo_prints_its_results_table(tmp_path):
    """`align demo --text` ends on the README's table: the held-out accuracies of the run it trained, with
    the paired changes (a tiny Llama for one epoch in place of SmolLM2's 80)."""
    from align.evaluate import paired_difference
    from align.text.demo import run_text_demo

    lines = []
    result = run_text_demo(
        tmp_path / "run", model="tiny:llama", epochs=1, echo=lambda text: lines.extend(str(text).splitlines())
    )
    base, aligned = result["base"], result["aligned"]
    assert base["num_prompts"] == aligned["num_prompts"] == 200  # the whole held-out split
    table = lines[
        lines.index(
            "| held-out (200 prompts, greedy) | exact answer | vs base | final number right | vs base |"
        ) :
    ]
    exact, _ = paired_difference(base, aligned, "exact_outcomes")
    final, _ = paired_difference(base, aligned, "outcomes")
    assert table[2].startswith(f"| base tiny:llama | {base['exact_accuracy']:.3f} +- ")
    # the warm start's row, between them: its own evaluation, paired with the base
    warm = json.loads((tmp_path / "run" / "summary.json").read_text())["rft"]
    solved, evaluated = warm["solved_prompts"], warm["evaluation"]
    exact_warm, _ = paired_difference(base, evaluated, "exact_outcomes")
    assert table[3].startswith(
        f"| RFT warm start ({solved} solved prompts) | {evaluated['exact_accuracy']:.3f} +- "
        f"{evaluated['exact_accuracy_se']:.3f} | {exact_warm:+.3f} +- "
    )
    assert table[4].startswith(
        f"| GRPO, 1 epochs | {aligned['exact_accuracy']:.3f} +- {aligned['exact_accuracy_se']:.3f} | {exact:+.3f} +- "
    )
    assert f"| {aligned['accuracy']:.3f} +- {aligned['accuracy_se']:.3f} | {final:+.3f} +- " in table[4]
    assert table[5].startswith("run directory: ") and len(table) == 6
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["aligned"]["outcomes"] == aligned["outcomes"]


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_align_evaluate_scores_a_text_run_as_the_run_scored_itself(tmp_path, capsys, trainable):
    """One `align evaluate` for both modalities: given a text run directory it loads the base model with
    the run's LoRA and answers exactly as the run's own final evaluation did; given the base model's
    name, as the run's base evaluation did; image-only flags are refused with a one-line error."""
    from align.cli import main
    from align.commands.evaluate import modality_of
    from align.modality import ImageModality
    from align.text.modality import TextModality

    run_dir = tmp_path / "run"
    assert main(["train", "configs/tiny/text-grpo.yaml", f"train.trainable={trainable}", "--out", str(run_dir)]) == 0
    trained = json.loads((run_dir / "summary.json").read_text())
    assert modality_of(str(run_dir)) is TextModality and modality_of("tiny:llama") is TextModality
    assert (
        modality_of("toy") is ImageModality and modality_of("my/model", "arithmetic:heldout") is TextModality
    )
    answers = {}
    for name, model in (("aligned", str(run_dir)), ("base", "tiny:llama")):
        out = tmp_path / name
        budget = [] if name == "aligned" else ["--max-new-tokens", "6"]  # the run's own budget, read from it
        assert (
            main(
                [
                    "evaluate",
                    model,
                    "--prompts",
                    "arithmetic:heldout",
                    "--max-prompts",
                    "4",
                    "--out",
                    str(out),
                    *budget,
                ]
            )
            == 0
        )
        summary = json.loads((out / "summary.json").read_text())
        answers[name] = [e["completion"] for e in summary["examples"]]
        assert answers[name] == [e["completion"] for e in trained[name]["examples"]], name
        assert summary["exact_outcomes"] == trained[name]["exact_outcomes"]
    assert answers["aligned"] != answers["base"]  # the LoRA was applied
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--swap-test"]) == 2
    assert "only image models take --swap-test" in capsys.readouterr().err
