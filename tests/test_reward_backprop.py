"""Reward backprop (AlignProp / DRaFT / ReFL) on the loop: gradients, exactness, refusals."""

import pattern_reward  # noqa: F401  (registers test-pattern)
import pytest
import torch

from align.algorithms.base import saved_bytes
from align.config import config_from_data
from align.loop import Run, plan_epoch


def backprop_config(algorithm: dict, rewards=("test-pattern",), **train):
    return config_from_data(
        {
            "model": {"name": "tiny:sd3"},
            "algorithm": algorithm,
            "rewards": {"terms": [{"name": r} for r in rewards], "normalise": "none"},
            "sampling": {"num_steps": 4, "noise_level": 0.0, "eval_num_steps": 4},
            "lora": {"rank": 4, "alpha": 4},
            "train": {
                "batch_size": 4,
                "group_size": 1,
                "micro_batch_size": 4,
                "num_epochs": 2,
                "lr": 1e-2,
                "prompts": "train",
                **train,
            },
            "eval": {"prompts": "heldout", "max_prompts": 2},
            "logging": {"tensorboard": False, "progress": False},
        }
    )


def lora_gradients(run: Run, batch, unit) -> dict[str, torch.Tensor]:
    run.optimizer.zero_grad(set_to_none=True)
    loss, _ = run.algorithm.loss(batch, unit)
    loss.backward()
    return {
        n: p.grad.detach().clone() for n, p in run.policy.named_parameters().items() if p.grad is not None
    }


def collected(run: Run):
    plan = plan_epoch(run.prompts, run.config, 0, 0, 1)
    return run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "draft", "grad_steps": 2},
        {"name": "draft-lv", "lv_repeats": 2},
        {"name": "refl"},
        {"name": "alignprop", "truncation_min": 2},
    ],
)
def test_gradients_reach_every_lora_matrix_and_are_finite(tmp_path, algorithm):
    run = Run(backprop_config(algorithm), tmp_path)
    batch = collected(run)
    # one step so that LoRA's zero-initialised B is non-zero and A receives gradient too
    for unit in run.algorithm.micro_batches(batch, torch.Generator().manual_seed(0)):
        run.algorithm.loss(batch, unit)[0].backward()
    run.optimizer.step()
    grads = lora_gradients(run, batch, torch.arange(4))
    assert set(grads) == set(run.policy.named_parameters())
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_draft_with_k_equal_to_the_steps_is_full_backprop(tmp_path):
    run = Run(backprop_config({"name": "draft", "grad_steps": 4}), tmp_path)
    batch = collected(run)
    assert batch.trajectory is None  # the replay from x_T is the epoch's sample: nothing sampled twice
    replayed = lora_gradients(run, batch, torch.arange(4))
    run.optimizer.zero_grad(set_to_none=True)
    from samplers.noise import generators_from_seeds

    prompts = batch.prompts
    full = run.adapter.sample(prompts, generators_from_seeds(batch.seeds), num_steps=4, grad_steps=4)
    images = run.adapter.decode(full.final)
    (-run.rewards.combine(run.rewards.score(images, prompts)).mean()).backward()
    direct = {n: p.grad for n, p in run.policy.named_parameters().items() if p.grad is not None}
    assert replayed.keys() == direct.keys()
    for name in direct:
        torch.testing.assert_close(replayed[name], direct[name], rtol=1e-4, atol=1e-7)


def test_a_non_differentiable_reward_is_refused_pointing_to_flow_grpo(tmp_path):
    with pytest.raises(ValueError, match=r"geneval-toy is not differentiable; use flow-grpo"):
        Run(backprop_config({"name": "draft"}, rewards=("test-pattern", "geneval-toy")), tmp_path)


def test_short_draft_run_raises_the_reward_on_fixed_seeds(tmp_path):
    from samplers.noise import generators_from_seeds

    run = Run(
        backprop_config({"name": "draft", "grad_steps": 4}, lr=2e-2, batch_size=8, micro_batch_size=8),
        tmp_path,
    )
    prompts = run.prompts[:16]

    @torch.no_grad()
    def fixed_reward() -> float:
        images = run.adapter.decode(
            run.adapter.sample(prompts, generators_from_seeds(range(100, 116)), num_steps=4).final
        )
        return float(run.rewards.combine(run.rewards.score(images, prompts)).mean())

    before = fixed_reward()
    for _ in range(6):
        run.train_epoch()
    assert fixed_reward() > before + 0.01


def test_par_maximises_the_sigmoid_of_each_images_gain_over_the_reference(tmp_path):
    # micro-batches of one: each loss is one image's, so the shaped loss can be checked by hand
    plain = Run(backprop_config({"name": "draft-lv"}, micro_batch_size=1), tmp_path / "plain")
    shaped = Run(
        backprop_config({"name": "draft-lv", "shaping": "par", "par_temperature": 0.05}, micro_batch_size=1),
        tmp_path / "par",
    )
    batch = collected(plain)
    for row in range(4):
        unit = torch.tensor([row])
        reward = -float(plain.algorithm.loss(batch, unit)[0].detach())
        loss, stats = shaped.algorithm.loss(batch, unit)
        loss = loss.detach()
        reference = shaped.algorithm.reference_rewards[batch.prompts[row]]
        assert stats["par_reference"] == pytest.approx(reference)
        assert float(loss) == pytest.approx(
            -float(torch.sigmoid(torch.tensor((reward - reference) / 0.05))), abs=1e-5
        )
    # the reference is the LoRA-off model's seed-0 sample, drawn once per prompt and kept across a resume
    state = shaped.algorithm.state_dict()
    assert set(state["reference_rewards"]) == set(batch.prompts)


def test_constraint_multiplier_moves_by_the_last_batchs_violation_and_prices_the_reward(tmp_path):
    spec = {
        "name": "draft-lv",
        "constraints": [{"name": "test-pattern", "at_most": -1.0}],
        "constraint_lr": 0.5,
    }
    run = Run(backprop_config(spec, micro_batch_size=2), tmp_path)
    batch = collected(run)
    assert batch.stats["lambda/test-pattern"] == 0.0
    seen = []
    for unit in run.algorithm.micro_batches(batch, torch.Generator().manual_seed(0)):
        loss, stats = run.algorithm.loss(batch, unit)
        seen.append(stats["backprop_reward"])
    mean = sum(seen) / len(seen)  # the reward is the one term: the violation is its batch mean + 1
    batch = run.algorithm.collect(1, batch.prompts, torch.arange(4), [s + 1 for s in batch.seeds])
    multiplier = batch.stats["lambda/test-pattern"]
    assert multiplier == pytest.approx(0.5 * (mean + 1.0), rel=1e-5) and multiplier > 0
    unit = torch.arange(2)
    loss, stats = run.algorithm.loss(batch, unit)
    loss, reward = (
        float(loss.detach()),
        stats["backprop_reward"],
    )  # mean of the two images' rewards; the Lagrangian is linear in them
    assert loss == pytest.approx(-(reward - multiplier * (reward + 1.0)), rel=1e-5)
    assert run.algorithm.state_dict()["constraints"]["multipliers"]["test-pattern"] == multiplier


def test_backprop_constraint_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match="'clip-toy' is not a reward term"):
        Run(
            backprop_config({"name": "draft", "constraints": [{"name": "clip-toy", "at_most": 0.8}]}),
            tmp_path,
        )
    with pytest.raises(ValueError, match="exactly one of at_most / at_least"):
        backprop_config({"name": "draft", "constraints": [{"name": "test-pattern"}]})


def test_activation_size_from_one_row_bounds_the_batchs_from_above():
    from conftest import tiny_adapter

    from samplers.types import select_batch

    adapter = tiny_adapter("tiny:sd3")  # shared by the suite: its weights are frozen again after
    trained = list(adapter.model.parameters())[:4]
    for p in trained:
        p.requires_grad_(True)  # a trainable weight, as LoRA's, so that activations are kept
    try:
        prompts = ["a red circle", "two blue squares", "a green triangle", "a cat"]
        x = adapter.initial_noise(None, 4, 4)
        t = adapter.schedule(4).timesteps[:1].float().expand(4)
        cond = adapter.encode(prompts)
        whole = saved_bytes(adapter.denoise, x, t, cond)
        # reward backprop's estimate of a unit: one row's saved bytes times its rows; the part that does
        # not grow with the batch is counted once per row
        estimate = 4 * saved_bytes(adapter.denoise, x[:1], t[:1], select_batch(cond, slice(0, 1)))
        assert whole > 0 and whole <= estimate <= 1.5 * whole, (whole, estimate)
        decoded = saved_bytes(adapter.decode, x[:1].clone().requires_grad_(True))
        assert decoded > 0  # the decoder's activations count once its input carries gradients
    finally:
        for p in trained:
            p.requires_grad_(False)


def test_checkpointed_reward_backprop_keeps_memory_flat_in_the_number_of_gradient_steps(tmp_path):
    """What autograd keeps for backward through one loss, at 1, 2 and 4 gradient steps (DRaFT-K). Without
    checkpointing each step keeps its denoiser call's activations (2.4 MB a step on tiny:sd3, measured);
    checkpointed, a step keeps only the latents its update reads ([4, 16, 8, 8] float32: 16 KiB)."""
    kept = {}
    for checkpoint in (False, True):
        for steps in (1, 2, 4):
            algorithm = {
                "name": "draft",
                "grad_steps": steps,
                "checkpoint": checkpoint,
                "checkpoint_above_mb": 1e-6,
            }
            run = Run(backprop_config(algorithm), tmp_path / f"{checkpoint}-{steps}")
            batch = collected(run)
            kept[checkpoint, steps] = saved_bytes(
                lambda run=run, batch=batch: run.algorithm.loss(batch, torch.arange(4))[0]
            )
    plain_step = (kept[False, 4] - kept[False, 2]) / 2
    checkpointed_step = (kept[True, 4] - kept[True, 2]) / 2
    assert plain_step > 1e6 and kept[False, 4] > 1.5 * kept[False, 2]  # the measure sees every step's graph
    latents = 4 * 16 * 8 * 8 * 4
    assert 0 < checkpointed_step <= 1.5 * latents  # flat but for the latents: 0.7% of a plain step here
    assert kept[True, 4] < 0.05 * kept[False, 4]


def test_measuring_the_activations_leaves_none_of_them_alive():
    import gc

    def graphs() -> int:
        return sum(isinstance(o, torch.Tensor) and o.grad_fn is not None for o in gc.get_objects())

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.SiLU(), torch.nn.Conv2d(3, 3, 3))
    model.requires_grad_(False)[0].weight.requires_grad_(True)
    x = torch.randn(1, 3, 9, 9, requires_grad=True)
    gc.collect()  # earlier tests' garbage collected now, and no collection during the count: an automatic
    gc.disable()  # one would free (or a finaliser create) objects that have nothing to do with this call
    try:
        before = graphs()
        # the first conv keeps its input (x, left out) and its weight; the SiLU its input
        # (3 x 7 x 7 floats); the second conv the SiLU's output and its own weight
        assert saved_bytes(model, x) == (3 * 7 * 7 * 2 + 3 * 3 * 9) * 4 + 3 * 3 * 9 * 4
        assert graphs() == before  # what the graph kept was freed with it, by reference counts alone
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "limit_mb, blocks, nested", [(1e-6, True, True), (1e-6, False, False), (1e6, True, False)]
)
def test_checkpointing_only_where_memory_needs_it_and_the_gradients_do_not_change(
    tmp_path, limit_mb, blocks, nested
):
    algorithm = {"name": "draft", "grad_steps": 4, "checkpoint_blocks": blocks}
    plain = Run(backprop_config({**algorithm, "checkpoint": False}), tmp_path / "plain")
    measured = Run(backprop_config({**algorithm, "checkpoint_above_mb": limit_mb}), tmp_path / "measured")
    batch = collected(plain)
    reference = lora_gradients(plain, batch, torch.arange(4))
    grads = lora_gradients(measured, batch, torch.arange(4))
    step, decode = measured.algorithm.row_bytes
    assert step > 0 and decode > 0
    # above the limit: every call checkpointed and, one call alone being above it too, each block inside
    assert measured.adapter.model.is_gradient_checkpointing is nested
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "algorithm", [{"name": "draft", "grad_steps": 4}, {"name": "alignprop", "truncation_min": 4}]
)
def test_a_micro_batch_over_the_limit_is_replayed_in_smaller_units_before_anything_is_checkpointed(
    tmp_path, algorithm
):
    plain = Run(backprop_config({**algorithm, "checkpoint": False}), tmp_path / "plain")
    batch = collected(plain)
    plain.algorithm.row_bytes = None
    step, decode = plain.algorithm._row_bytes(batch)
    row_mb = (4 * step + decode) / 2**20
    steps = []
    for name, limit_mb, rows in (
        ("two", 2.5 * row_mb, 2),
        ("one", 1.5 * row_mb, 1),
        ("four", 4.5 * row_mb, 4),
    ):
        run = Run(backprop_config({**algorithm, "checkpoint_above_mb": limit_mb}), tmp_path / name)
        units = run.algorithm.micro_batches(collected(run), torch.Generator().manual_seed(0))
        assert [len(u) for u in units] == [rows] * (4 // rows)
        assert not run.algorithm._checkpointing(batch, rows, 4)  # each unit fits: nothing recomputed
        steps.append(first_step_gradients(run))
    reference = first_step_gradients(plain)  # one unit of 4, checkpointing off
    for gradients in steps:
        for one, two in zip(reference, gradients, strict=True):
            torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-7)
    # one row's replay is over the limit: checkpointed, with as many rows as keep one call under it
    call_mb = max(step, decode) / 2**20
    for limit_mb, rows in ((2.5 * call_mb, 2), (1.5 * call_mb, 1), (0.5 * call_mb, 1)):
        limit_mb = min(limit_mb, 0.99 * row_mb)
        tight = Run(backprop_config({**algorithm, "checkpoint_above_mb": limit_mb}), tmp_path / f"{limit_mb}")
        units = tight.algorithm.micro_batches(collected(tight), torch.Generator().manual_seed(0))
        assert [len(u) for u in units] == [rows] * (4 // rows)
        assert tight.algorithm._checkpointing(batch, rows, 4)


def first_step_gradients(run: Run) -> list[torch.Tensor]:
    """The gradients the first epoch's optimiser step was taken with."""
    taken = []
    run.optimizer.optimizer.register_step_pre_hook(
        lambda *_: taken.append([p.grad.clone() for p in run.policy.parameters() if p.grad is not None])
    )
    run.train_epoch()
    return taken[0]
