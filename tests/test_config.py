"""Config loading: every error at once, each with its key path; overrides; CLI exit code 2."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from align.cli import main
from align.config import ALGORITHM_CONFIGS, config_from_data, load_config
from align.schema import ConfigError, apply_overrides, param


@dataclass
class ToyAlgorithmConfig:
    name: str
    clip_range: float = param(1e-4, gt=0.0)
    beta: float = param(0.0, min=0.0)


if "test-algo" not in ALGORITHM_CONFIGS:
    ALGORITHM_CONFIGS["test-algo"] = ToyAlgorithmConfig

GOOD = {
    "model": {"name": "tiny:sd3"},
    "algorithm": {"name": "test-algo", "clip_range": 0.2},
    "train": {"batch_size": 8, "group_size": 4, "micro_batch_size": 4, "lr": "3e-4"},
    "rewards": {"terms": [{"name": "jpeg-compressibility", "weight": 1.0}]},
}


def write(tmp_path, data, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_good_config_loads_with_types_converted(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.train.lr == pytest.approx(3e-4)  # YAML's string "3e-4" became a float
    assert config.algorithm.clip_range == 0.2 and config.algorithm.beta == 0.0
    assert config.rewards.terms[0].name == "jpeg-compressibility"


def test_every_kind_of_error_in_one_message():
    bad = {
        "model": {"name": "tiny:sd3", "dtyp": "float16", "attention": "flash"},
        "train": {"batch_size": 10, "group_size": 4, "lr": -1.0, "num_epochs": "many", "ema_decay": 2.0},
        "sampling": {"num_steps": 0},
        "algorithm": {"name": "test-algo", "clip_rnge": 0.1},
        "loggin": {},
    }
    with pytest.raises(ConfigError) as caught:
        config_from_data(bad)
    errors = caught.value.errors
    expected = {
        "model.dtyp: unknown key; did you mean 'dtype'?",
        "model.attention: 'flash' is not one of auto, sdpa, xformers",
        "train.lr: -1.0 must be greater than 0.0",
        "train.num_epochs: expected an integer, got str 'many'",
        "train.ema_decay: 2.0 is above the maximum 1.0",
        "sampling.num_steps: 0 is below the minimum 1",
        "algorithm.clip_rnge: unknown key; did you mean 'clip_range'?",
        "loggin: unknown key; did you mean 'logging'?",
    }
    assert expected <= set(errors), errors
    assert any(
        e.startswith("train.batch_size: batch_size 10 is not divisible by group_size 4") for e in errors
    )
    assert len(errors) == len(expected) + 2  # + micro_batch_size divisibility (10 % 4)


def test_cross_field_rule_is_skipped_when_a_field_it_reads_is_already_wrong():
    bad = {"algorithm": {"name": "test-algo"}, "train": {"batch_size": "ten", "group_size": 4}}
    with pytest.raises(ConfigError) as caught:
        config_from_data(bad)
    assert caught.value.errors == ["train.batch_size: expected an integer, got str 'ten'"]


def test_unknown_algorithm_gets_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        config_from_data({"algorithm": {"name": "test-alg"}})
    assert "did you mean 'test-algo'" in caught.value.errors[0]


def test_dotted_overrides_reach_nested_keys_and_list_items():
    data = apply_overrides(
        yaml.safe_load(yaml.safe_dump(GOOD)),
        ["train.lr=1e-5", "model.resolution=64", "rewards.terms.0.weight=2.5", "logging.wandb=true"],
    )
    config = config_from_data(data)
    assert config.train.lr == pytest.approx(1e-5) and config.model.resolution == 64
    assert config.rewards.terms[0].weight == 2.5 and config.logging.wandb is True
    with pytest.raises(ConfigError, match="rewards.terms.3: no list item"):
        apply_overrides(yaml.safe_load(yaml.safe_dump(GOOD)), ["rewards.terms.3.weight=1"])


def test_cli_reports_every_error_with_exit_code_2_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, {**GOOD, "train": {"batch_size": 6, "group_size": 4, "lr": 0}})
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["config", str(path), "model.dtype=float64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert (
        "error: model.dtype: 'float64' is not one of float32, float16, bfloat16; did you mean 'float16'?"
        in err
    )
    assert "error: train.lr: 0.0 must be greater than 0.0" in err
    assert any(line.startswith("error: train.batch_size: batch_size 6 is not divisible") for line in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_missing_or_malformed_file(tmp_path, capsys):
    assert main(["config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    assert main(["config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_cli_doctor_prints_table_and_passes(capsys):
    assert main(["doctor", "tiny:flux", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "4/4 checks passed" in out and "ODE rollout = diffusers pipeline" in out


def test_cli_doctor_unknown_model_exits_2(capsys):
    assert main(["doctor", "tiny:nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown tiny model 'tiny:nope'")


SHIPPED = Path(__file__).parents[1] / "configs"
EXPERIMENTS = sorted(p for p in SHIPPED.rglob("*.yaml") if p.parent.name != "accelerate")  # accelerate's own


def test_every_experiment_file_is_found():
    assert {p.parent.name for p in EXPERIMENTS} >= {"toy", "text", "sd1.5", "sd3.5-medium", "sdxl", "flux.1-dev"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(SHIPPED)))
def test_align_config_accepts_every_shipped_experiment(path, capsys):
    assert main(["config", str(path)]) == 0, capsys.readouterr().err
    printed, shipped = yaml.safe_load(capsys.readouterr().out), yaml.safe_load(path.read_text())
    if "algorithm" in shipped:
        assert printed["algorithm"]["name"] == shipped["algorithm"]["name"]
    else:  # a noise-optimisation recipe (`align optimize --config`)
        assert printed == shipped and {"iterations", "method"} & set(shipped)


def test_align_config_checks_optimize_recipes_too(tmp_path, capsys):
    path = tmp_path / "reno.yaml"
    path.write_text("model: toy\nrewards: {clip-toyy: 1.0}\niterations: 5\n")
    assert main(["config", str(path)]) == 2
    assert "did you mean 'clip-toy'" in capsys.readouterr().err


def test_align_train_runs_a_text_recipe(tmp_path, capsys):
    """The text recipes run on the one loop through the CLI (a tiny Llama in place of SmolLM2)."""
    recipe = SHIPPED / "text" / "smollm2-grpo-arithmetic.yaml"
    overrides = ["model.name=tiny:llama", "train.num_epochs=1", "train.batch_size=8", "train.micro_batch_size=8"]
    overrides += ["eval.max_prompts=4", "algorithm.max_new_tokens=4"]
    assert main(["train", str(recipe), *overrides, "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"base", "aligned"} <= set(summary) and "exact_accuracy" in summary["aligned"]
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and set(record["rewards"]) == {"text-exact", "text-format", "text-numeric"}
    assert "exact" in capsys.readouterr().out  # the text summary format


@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("diffusion-nft-demo.yaml", []),
        ("awm-demo.yaml", []),
        ("dgpo-demo.yaml", []),
        ("grpo-demo.yaml", ["sampling.sde=cps", "sampling.noise_level=0.5", "algorithm.guard.ratio_norm=true", "algorithm.guard.step_reweight=true"]),
    ],
)
def test_align_train_runs_the_frontier_recipes(tmp_path, recipe, extra):
    """The shipped forward-process recipes, and Flow-GRPO with CPS and GRPO-Guard, train an epoch of the
    toy model through the CLI (a smaller batch and evaluation than the recipes', the same algorithms)."""
    overrides = ["train.num_epochs=1", "train.batch_size=16", "train.micro_batch_size=16", "train.group_size=8"]
    overrides += ["eval.max_prompts=2", "eval.seeds=1", "eval.rewards=[]", *extra]
    out = tmp_path / "run"
    assert main(["train", str(SHIPPED / "toy" / recipe), *overrides, "--out", str(out), "--device", "cpu"]) == 0
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["skipped_steps"] == 0 and record["step"] >= 1
    assert {"base", "aligned"} <= set(json.loads((out / "summary.json").read_text()))


@pytest.mark.parametrize("name", ["alignprop", "draft", "draft-lv", "refl"])
@pytest.mark.parametrize("normalise", ["group", "running"])
def test_reward_backprop_refuses_a_normalised_reward_with_the_fix(tmp_path, capsys, name, normalise):
    """A z-score within the batch averages to 0 whatever the images: its gradient is zero."""
    path = tmp_path / "backprop.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "tiny:sd3"},
                "algorithm": {"name": name},
                "rewards": {"terms": [{"name": "jpeg-compressibility"}], "normalise": normalise},
            }
        )
    )
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: rewards.normalise:") and line.endswith("set rewards.normalise: none")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    assert main(["config", str(path), "rewards.normalise=none"]) == 0


def test_the_policy_gradient_core_is_small_and_each_section_holds_its_own_knobs():
    import dataclasses

    from align.algorithms.policy_gradient_config import FlowGRPOConfig, PRDPConfig, TrajectoryDPOConfig

    assert len(dataclasses.fields(FlowGRPOConfig)) <= 15
    for own in (TrajectoryDPOConfig, PRDPConfig):  # D3PO and PRDP hold none of Flow-GRPO's reward knobs
        assert not {"advantage", "shaping", "dense", "guard"} & {f.name for f in dataclasses.fields(own)}


FLAT = {  # the previous release's spelling of configs/toy/dense-grpo-geneval.yaml's algorithm, and more
    "name": "flow-grpo",
    "sde_window": 3,
    "sde_window_range": [0, 1],
    "sliding_window_every": 2,
    "dense": True,
    "dense_mix": 0.5,
    "advantage_clip": 3.0,
    "advantage_std": "batch",
    "ratio_norm": True,
}
NESTED = {
    "name": "flow-grpo",
    "window": {"size": 3, "starts": [0, 1], "slide_every": 2},
    "dense": {"mix": 0.5},
    "advantage": {"clip": 3.0, "std": "batch"},
    "guard": {"ratio_norm": True},
}


@pytest.mark.parametrize(
    "flat, nested",
    [
        (FLAT, NESTED),
        (
            {"name": "flow-grpo", "shaping": "par", "par_temperature": 0.2, "pareto": "group", "advantage": "batch"},
            {"name": "flow-grpo", "shaping": {"par": 0.2, "pareto": "group"}, "advantage": {"rule": "batch"}},
        ),
        ({"name": "ddpo", "tracker_min_count": 2}, {"name": "ddpo", "advantage": {"tracker_min_count": 2}}),
        ({"name": "d3po", "sde_window": 2}, {"name": "d3po", "window": {"size": 2}}),
    ],
)
def test_the_previous_releases_flat_keys_read_as_the_nested_ones_with_a_warning(flat, nested):
    data = {**GOOD, "algorithm": flat}
    with pytest.warns(FutureWarning, match="the old spelling is read until the next release"):
        old = config_from_data(data)
    assert old.algorithm == config_from_data({**GOOD, "algorithm": nested}).algorithm
    assert old.algorithm != config_from_data({**GOOD, "algorithm": {"name": flat["name"]}}).algorithm


def test_an_old_style_override_on_a_new_style_recipe_takes_effect(capsys):
    """`align train configs/toy/grpo-demo.yaml algorithm.sde_window=2`: the recipe writes window.size 3,
    the override the old key; the override wins (with the warning), as any override does."""
    with pytest.warns(FutureWarning, match="algorithm.sde_window is now algorithm.window.size"):
        config = load_config(SHIPPED / "toy" / "grpo-demo.yaml", ["algorithm.sde_window=2"])
    assert config.algorithm.window.size == 2 and config.algorithm.window.starts == [0, 1]


@pytest.mark.parametrize("recipe", sorted((SHIPPED / "toy-video").glob("*.yaml")), ids=lambda p: p.name)
def test_align_train_runs_the_toy_video_recipes_on_a_tiny_wan(tmp_path, recipe):
    """The toy video recipes train an epoch through the CLI on tiny:wan (the toy video model is built by
    `align pretrain-toy --world video`), clips scored by the motion verifier, evaluated with its categories."""
    overrides = ["model.name=tiny:wan", "train.num_epochs=1", "train.batch_size=4", "train.micro_batch_size=4"]
    overrides += ["train.group_size=2", "sampling.num_steps=3", "sampling.eval_num_steps=3", "eval.max_prompts=2"]
    overrides += ["eval.seeds=1", "train.eval_every=1"]
    out = tmp_path / "run"
    assert main(["train", str(recipe), *overrides, "--out", str(out), "--device", "cpu"]) == 0
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["skipped_steps"] == 0 and record["step"] >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert {"direction", "speed"} <= set(summary["aligned"]["categories"])
    assert "temporal-consistency" in summary["aligned"]["rewards"]
