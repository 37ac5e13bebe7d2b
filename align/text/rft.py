"""Rejection-sampling fine-tuning (RFT) before a text run's first epoch: the model's own right answers,
kept by the references and fine-tuned on, as a warm start for the algorithm that follows.

The model answers every training prompt: greedily, then `rft_samples - 1` draws at `rft_temperature`,
each given the evaluation's token budget. An answer the references judge right (as the evaluation
judges it: its last number, where the references are numbers) is kept, once per distinct target, and
the LoRA is fine-tuned on the kept (prompt, target) pairs for `rft_epochs` passes: the mean token
negative log-likelihood, with an AdamW of its own at `rft_lr`, so the run's optimiser and lr
schedule start fresh on the algorithm's first epoch.

`rft_target: answer` trains on the answer as sampled (RFT, Yuan et al. 2023; STaR's rationale step,
Zelikman et al. 2022): the model's solved paths become more likely. `rft_target: reference` trains on
the prompt's reference in place of the right answer, the form the instruction asks for: SmolLM2
answers "What is 8 + 11? Reply with only the number." with "8 + 11 = 19", and learns to say "19" at the
first token from the sums it could already do (self-distillation of the restated sum into the bare one).
Only prompts the model solved are taught, so what it learns is its own skill in the asked-for form.
The fine-tuned LoRA then becomes the KL anchor of the run (TextPolicy.anchor_reference, called by the
text modality's `warm_start`): anchored to the base, GRPO's KL pulled the bare answers back toward the
restated ones and the run collapsed (docs/tuning.md).
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import torch

from align.text.evaluate import eval_references, judge_answers


def rft_settings(settings) -> dict:
    """The algorithm's rft_* settings without their prefix: {"epochs": 3, "samples": 1, ...}."""
    names = [field.name for field in dataclasses.fields(settings) if field.name.startswith("rft_")]
    return {name.removeprefix("rft_"): getattr(settings, name) for name in names}


@torch.no_grad()
def right_answers(policy, prompts, references, *, samples: int, temperature: float, max_new_tokens: int, seed: int):
    """{(prompt, target)}: each prompt's answers judged right, as sampled ("answer") and as the reference
    ("reference"): {"answer": [...], "reference": [...]}, both in prompt order, each pair once."""
    targets = references(prompts)
    found = {"answer": {}, "reference": {}}
    for draw in range(samples):
        temperature_here = 0.0 if draw == 0 else temperature
        for start in range(0, len(prompts), 64):
            chunk = prompts[start : start + 64]
            trajectory = policy.sample(
                chunk,
                max_new_tokens=max_new_tokens,
                temperature=temperature_here,
                seed=seed * 7_919 + draw * 1_000_003 + start,
                score=False,
            )
            texts = trajectory.extra["texts"]
            final, _ = judge_answers(texts, targets[start : start + 64])
            for prompt, text, right, refs in zip(chunk, texts, final, targets[start : start + 64]):
                if right:
                    found["answer"][(prompt, text)] = None
                    found["reference"][(prompt, refs[0])] = None
    return {kind: list(pairs) for kind, pairs in found.items()}


def fine_tune(policy, pairs, *, epochs: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Token NLL of the completions given their prompts, `epochs` shuffled passes; each pass's mean NLL."""
    optimizer = torch.optim.AdamW(list(policy.parameters()), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    means = []
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=generator).tolist()
        total, tokens_seen = [], []  # on the device: one host sync a pass, none a step
        for start in range(0, len(order), batch_size):
            rows = [pairs[i] for i in order[start : start + batch_size]]
            tokens = policy.encode_prompts([prompt for prompt, _ in rows])
            tokens.update(policy.encode_completions([completion for _, completion in rows]))
            mask = tokens["completion_mask"]
            nll = -(policy.token_log_probs(tokens) * mask).sum()
            count = mask.sum()
            (nll / count).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total.append(nll.detach())
            tokens_seen.append(count)
        means.append(float(torch.stack(total).sum() / torch.stack(tokens_seen).sum()))
    return means


def rejection_sampling_fine_tune(run) -> dict | None:
    """The warm start of a text run whose algorithm sets rft_epochs > 0 (else None): its statistics."""
    config = run.config
    settings = config.algorithm
    if not settings.rft_epochs:
        return None
    if not run.policy.is_lora:
        raise ValueError(
            "algorithm.rft_epochs > 0 moves the KL anchor to the fine-tuned LoRA; set train.trainable=lora "
            "or algorithm.rft_epochs=0"
        )
    references = eval_references(config.train.prompts)
    if references is None:
        raise ValueError(
            f"algorithm.rft_epochs > 0 keeps the answers that references judge right, and train.prompts "
            f"{config.train.prompts!r} has none; use a task split (arithmetic:train) or a .jsonl with "
            "answers, or set algorithm.rft_epochs=0"
        )
    start = time.perf_counter()
    prompts = sorted(set(run.prompts))
    policy = run.policy
    with run.accelerator.autocast():
        found = right_answers(
            policy,
            prompts,
            references,
            samples=settings.rft_samples,
            temperature=settings.rft_temperature,
            max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens,
            seed=config.train.seed,
        )
    pairs = found[settings.rft_target]
    sampled = time.perf_counter()
    nll: list[float] = []
    if not pairs:  # nothing to learn from: the run goes on from the base, and says so
        warnings.warn(
            f"rejection-sampling fine-tuning found no right answer to any of the {len(prompts)} training "
            "prompts and fine-tuned on nothing; draw more (algorithm.rft_samples) or set algorithm.rft_epochs=0",
            stacklevel=2,
        )
    else:
        with run.accelerator.autocast():
            nll = fine_tune(
                policy,
                pairs,
                epochs=settings.rft_epochs,
                lr=settings.rft_lr,
                batch_size=settings.rft_batch_size,
                seed=config.train.seed,
            )
    solved = len({prompt for prompt, _ in found["reference"]})
    return {
        "prompts": len(prompts),
        "solved_prompts": solved,
        "pairs": len(pairs),
        "nll": nll,
        "time/sampling": sampled - start,
        "time/training": time.perf_counter() - sampled,
        "settings": rft_settings(settings),
    }
