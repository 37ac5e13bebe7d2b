"""The peer side of vs_peers.py's flow-grpo case: the public flow_grpo repository's own sampling
(pipeline_with_logprob) and SDE step (sde_step_with_logprob), imported from a checkout of it and timed
on tiny:sd3, the model our side times.

Its training loop lives in a script that cannot be imported, so this harness drives its step function
the way that script does: the CFG branches in one batch with the unconditional one detached, the
clipped ratio per step, the KL reference pass with the LoRA disabled, one optimiser step per epoch
(2 prompts x 4 images, 10 steps, guidance 4.5, noise level 0.7, LoRA rank 8 on the attention
projections, the JPEG-compressibility reward). It runs in our virtualenv (it loads tiny:sd3 and the
reward through our code) with the checkout on its path:

    python benchmarks/peers/flow_grpo_harness.py --flow-grpo CHECKOUT [--epochs 4 --warmup 1 --beta 0.04]

Prints `RESULT {json}`: seconds per sample of sampling, reward and training (medians over the epochs
after the warm-up) and their sum.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def reference_step(transformer, scheduler, sde_step, latents, timesteps, j, embeds, pooled, guidance, level):
    """Re-score step j the way the reference's training script does: CFG branches in one batch, the
    unconditional one detached, then its SDE step function given the recorded next latent."""
    import torch

    x = latents[:, j]
    output = transformer(
        hidden_states=torch.cat([x, x]),
        timestep=torch.cat([timesteps[:, j]] * 2),
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        return_dict=False,
    )[0]
    uncond, text = output.chunk(2)
    output = uncond.detach() + guidance * (text - uncond.detach())
    return sde_step(
        scheduler,
        output.float(),
        timesteps[:, j],
        x.float(),
        prev_sample=latents[:, j + 1].float(),
        noise_level=level,
    )


def run(args) -> dict:
    """The reference implementation's sampling (pipeline_with_logprob) and training pass on tiny:sd3,
    its functions imported from the checkout at --flow-grpo; the harness loop follows its script."""
    import torch

    sys.path.insert(0, args.flow_grpo)
    from flow_grpo.diffusers_patch.sd3_pipeline_with_logprob import pipeline_with_logprob
    from flow_grpo.diffusers_patch.sd3_sde_with_logprob import sde_step_with_logprob
    from peft import LoraConfig, get_peft_model

    from align.policy import DEFAULT_TARGETS, lora_targets
    from rewards.base import build_reward
    from samplers.models import load_pipeline

    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipeline, _ = load_pipeline("tiny:sd3")
    pipeline.set_progress_bar_config(disable=True)
    for module in (pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3):
        module.requires_grad_(False)
    targets = lora_targets(pipeline.transformer, DEFAULT_TARGETS["flow"])
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=targets)
    transformer = get_peft_model(pipeline.transformer, lora)
    pipeline.transformer = transformer
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=3e-4)
    reward = build_reward("jpeg-compressibility")
    from align.recipes import load_prompts

    prompts = load_prompts("train")[:2]
    batch = [p for p in prompts for _ in range(4)]
    guidance, beta, noise_level = 4.5, args.beta, 0.7
    splits = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        with torch.no_grad():
            embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(batch, batch, batch)
            generator = [torch.Generator().manual_seed(epoch * 100 + i) for i in range(len(batch))]
            images, latents, log_probs = pipeline_with_logprob(
                pipeline,
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                negative_prompt_embeds=negative,
                negative_pooled_prompt_embeds=negative_pooled,
                num_inference_steps=10,
                guidance_scale=guidance,
                output_type="pt",
                height=32,
                width=32,
                noise_level=noise_level,
                generator=generator,
            )[:3]
        sampled = time.perf_counter()
        rewards = reward(images.float().clamp(0, 1), batch)
        grouped = rewards.view(-1, 4)
        advantages = (
            (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
        ).flatten()
        scored = time.perf_counter()
        latents = torch.stack(latents, dim=1)  # [B, T + 1, ...]
        log_probs = torch.stack(log_probs, dim=1)
        timesteps = pipeline.scheduler.timesteps.repeat(len(batch), 1)
        cond_embeds = torch.cat([negative, embeds])
        cond_pooled = torch.cat([negative_pooled, pooled])
        transformer.train()

        for j in range(9):  # every step but the last (sigma 0.001 -> 0), as ours trains
            step = (transformer, pipeline.scheduler, sde_step_with_logprob, latents, timesteps, j)
            _, log_prob, mean, std = reference_step(*step, cond_embeds, cond_pooled, guidance, noise_level)
            ratio = torch.exp(log_prob - log_probs[:, j])
            clipped = torch.clamp(ratio, 1 - 1e-4, 1 + 1e-4)
            loss = torch.mean(torch.maximum(-advantages * ratio, -advantages * clipped))
            if beta > 0:
                with torch.no_grad(), transformer.disable_adapter():
                    _, _, reference_mean, _ = reference_step(
                        *step, cond_embeds, cond_pooled, guidance, noise_level
                    )
                kl = ((mean - reference_mean) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std**2)
                loss = loss + beta * kl.mean()
            (loss / 9).backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        trained = time.perf_counter()
        splits.append({"sampling": sampled - start, "reward": scored - sampled, "training": trained - scored})
    steady = splits[args.warmup :]
    per_sample = {k: statistics.median(s[k] for s in steady) / len(batch) for k in steady[0]}
    per_sample["epoch"] = sum(per_sample.values())
    return {"per_sample": per_sample}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow-grpo", required=True, help="a checkout of github.com/yifan123/flow_grpo")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight")
    print("RESULT " + json.dumps(run(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
