"""`align pretrain-toy`: train the toy model from scratch on CPU, in resumable chunks.

Stages (each reads the previous one's output under OUT):
  vae        the autoencoder, on rendered scenes (a few minutes)
  data       render and encode the pretraining set once (latents + captions)
  diffusion  transformer + text encoders by rectified flow, with EMA, checkpoints and periodic
             held-out evaluation (the long stage: run it with --minutes and --resume)
  export     write the EMA pipeline with `save_pretrained` to OUT/pipeline
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm import tqdm

from align.checkpoint import (
    atomic_directory,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)
from align.toy import model as toy
from align.toy.stages import cosine_lr, fit_autoencoder, write_data
from rewards.toy_world import make_example, parse_prompt, prompt_splits
from samplers.toy import ADAPTER_DEFAULTS, DEFAULT_GUIDANCE, DEFAULT_STEPS


def render_batch(prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]."""
    images = np.stack([make_example(p, s)[0] for p, s in zip(prompts, seeds)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def balanced_prompts(rng: random.Random, count: int, split: str = "pretrain") -> list[str]:
    """Half single-object prompts, half relation prompts, drawn from `split`."""
    prompts = prompt_splits()[split]
    singles = [p for p in prompts if parse_prompt(p).kind == "single"]
    relations = [p for p in prompts if parse_prompt(p).kind == "relation"]
    return [rng.choice(singles if i % 2 == 0 else relations) for i in range(count)]


# --- stage 1: the VAE ---------------------------------------------------------------------------


def train_vae(
    out: Path, steps: int = 2500, batch_size: int = 64, lr: float = 1e-3, kl_weight: float = 1e-6
) -> dict:
    torch.manual_seed(0)
    rng = random.Random(0)
    vae = toy.build_vae()

    def batch() -> torch.Tensor:
        prompts = balanced_prompts(rng, batch_size)
        return render_batch(prompts, [rng.randrange(2**31) for _ in prompts]) * 2 - 1

    fit_autoencoder(vae, batch, steps, lr, kl_weight, "vae")
    report = _calibrate_vae(vae, rng)
    vae.save_pretrained(out / "vae")
    (out / "vae" / "report.json").write_text(json.dumps(report, indent=2))
    return report


@torch.no_grad()
def _calibrate_vae(vae, rng: random.Random) -> dict:
    """Set the latent shift/scale (SD3 style: z = (z_raw - shift) * scale has unit variance) and
    measure what the verifier reads from reconstructions."""
    from rewards.geneval import evaluate_images

    prompts = balanced_prompts(rng, 512)
    images = render_batch(prompts, [rng.randrange(2**31) for _ in prompts])
    latents = vae.encode(images * 2 - 1).latent_dist.mean
    shift, scale = float(latents.mean()), float(1 / latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    reconstruction = (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)
    results = evaluate_images(reconstruction, prompts)
    return {
        "shift_factor": shift,
        "scaling_factor": scale,
        "reconstruction_l1": float((reconstruction - images).abs().mean()),
        "verifier_accuracy_on_reconstructions": float(np.mean([r["all"] for r in results])),
    }


# --- stage 2: the encoded pretraining set ------------------------------------------------------


@torch.no_grad()
def build_data(out: Path, count: int = 120_000, batch_size: int = 256) -> dict:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "vae").eval()

    def encode(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        raw = vae.encode(render_batch(prompts, seeds) * 2 - 1).latent_dist.mean
        return (raw - vae.config.shift_factor) * vae.config.scaling_factor

    return write_data(out, balanced_prompts(random.Random(1), count), encode, batch_size, "data")


# --- stage 3: rectified flow on latents --------------------------------------------------------


class DiffusionTrainer:
    """Transformer + both text encoders, trained jointly; EMA copies are what ships."""

    def __init__(
        self,
        out: Path,
        *,
        total_steps: int,
        batch_size: int = 64,
        lr: float = 6e-4,
        ema_decay: float = 0.999,
        caption_dropout: float = 0.1,
        relation_fraction: float | None = 0.75,
        sigma_location: float = 0.5,
        warmup: int = 300,
        seed: int = 0,
    ):
        self.out, self.total_steps, self.batch_size = out, total_steps, batch_size
        self.lr, self.ema_decay, self.caption_dropout = lr, ema_decay, caption_dropout
        self._average = get_ema_multi_avg_fn(ema_decay)  # torch's EMA rule: a fused lerp per module
        self.warmup, self.sigma_location = warmup, sigma_location
        self.pipeline = self.build_pipeline(seed)
        self.trainable = {name: getattr(self.pipeline, name) for name in self.trained}
        self.ema = {
            name: copy.deepcopy(module).requires_grad_(False) for name, module in self.trainable.items()
        }
        params = [p for m in self.trainable.values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
        data = load_file(str(out / "data.safetensors"))
        self.latents = data["latents"]
        self.prompts = json.loads((out / "data.json").read_text())["prompts"]
        kinds = {p: self.kind(p) for p in dict.fromkeys(self.prompts)}
        self.by_kind = {
            kind: [i for i, p in enumerate(self.prompts) if kinds[p] == kind]
            for kind in ("single", "relation")
        }
        self.relation_fraction = relation_fraction
        self.step = 0
        self.rng = random.Random(seed)
        torch.manual_seed(seed)

    trained = ("transformer", "text_encoder", "text_encoder_2")  # the pipeline's modules trained here

    def build_pipeline(self, seed: int):
        from diffusers import AutoencoderKL

        return toy.build_pipeline(seed, vae=AutoencoderKL.from_pretrained(self.out / "vae").eval())

    @staticmethod
    def kind(prompt: str) -> str:
        return parse_prompt(prompt).kind

    def predict(self, noisy: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The transformer's velocity for `noisy` latents at `sigma` [B], conditioned on `prompts`."""
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=False,
            max_sequence_length=ADAPTER_DEFAULTS["max_sequence_length"],
        )
        return self.pipeline.transformer(
            hidden_states=noisy,
            timestep=sigma * 1000,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]

    def loss(self, noisy, sigma, prompts, target) -> torch.Tensor:
        """The rectified-flow loss: the velocity's mean squared error."""
        return (self.predict(noisy, sigma, prompts) - target).pow(2).mean()

    def sample_indices(self) -> list[int]:
        """A batch of example indices: uniform over the data (half relations), or relations with
        probability `relation_fraction`. Relations need more of the data than their half: their
        relation word is only informative together with word order ("A left of B" and "B right of A"
        are one scene), so a model learns them last, and from a 50/50 mix it had not at all after
        4,250 steps (the swap test flipped 1 pair in 96)."""
        if self.relation_fraction is None:
            return [self.rng.randrange(len(self.prompts)) for _ in range(self.batch_size)]
        pools = self.by_kind
        return [
            self.rng.choice(pools["relation" if self.rng.random() < self.relation_fraction else "single"])
            for _ in range(self.batch_size)
        ]

    def state(self) -> dict:
        return {
            "modules": {n: m.state_dict() for n, m in self.trainable.items()},
            "ema": {n: m.state_dict() for n, m in self.ema.items()},
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": rng_state(),
            "data_rng": list(self.rng.getstate()[1]),
        }

    def load(self, state: dict) -> None:
        for name, module in self.trainable.items():
            module.load_state_dict(state["modules"][name])
            self.ema[name].load_state_dict(state["ema"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        set_rng_state(state["rng"])
        self.rng.setstate((3, tuple(state["data_rng"]), None))

    def save(self) -> None:
        with atomic_directory(self.out / "diffusion" / "checkpoint") as staging:
            save_state(staging, self.state())
            self.pipeline.tokenizer.save_pretrained(
                str(staging / "tokenizer")
            )  # the ids the encoders learned

    def train_step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * cosine_lr(self.step, self.total_steps, self.warmup)
        index = self.sample_indices()
        prompts = ["" if self.rng.random() < self.caption_dropout else self.prompts[i] for i in index]
        x0 = self.latents[index].float()
        # logit-normal, as SD3 trains; a positive location puts more weight on the noisy steps that lay out the scene
        sigma = torch.sigmoid(torch.randn(self.batch_size) + self.sigma_location)
        noise = torch.randn_like(x0)
        view = sigma.view(-1, *[1] * (x0.ndim - 1))
        noisy = (1 - view) * x0 + view * noise
        loss = self.loss(noisy, sigma, prompts, noise - x0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in self.trainable.values() for p in m.parameters()], 1.0)
        self.optimizer.step()
        for name, module in self.trainable.items():
            self._average(list(self.ema[name].parameters()), list(module.parameters()), None)
        self.step += 1
        return loss.item()

    def ema_pipeline(self):
        from diffusers import StableDiffusion3Pipeline

        p = self.pipeline
        return StableDiffusion3Pipeline(
            transformer=self.ema["transformer"],
            scheduler=toy.build_scheduler(),
            vae=p.vae,
            text_encoder=self.ema["text_encoder"],
            tokenizer=p.tokenizer,
            text_encoder_2=self.ema["text_encoder_2"],
            tokenizer_2=p.tokenizer_2,
            text_encoder_3=None,
            tokenizer_3=None,
        )

    def eval_adapter(self):
        """The EMA pipeline as the shipped model is sampled."""
        from samplers.adapters.sd3 import SD3Adapter

        settings = {"guidance_scale": DEFAULT_GUIDANCE, "default_steps": DEFAULT_STEPS}
        return SD3Adapter(self.ema_pipeline(), max_sequence_length=1, **settings)

    @staticmethod
    def splits() -> dict[str, list[str]]:
        return prompt_splits()

    @staticmethod
    def swap_test(adapter, prompts: list[str], seeds: int) -> dict:
        from align.evaluate import swap_test  # the relation words (video: align.toy.video's direction words)

        return swap_test(adapter, prompts, seeds=seeds)

    def evaluate(self, seeds: int = 2) -> dict:
        """The EMA model's held-out and novel accuracy, and its swap test, at `seeds` seeds."""
        from align.evaluate import evaluate

        adapter, splits = self.eval_adapter(), self.splits()
        results = {"step": self.step}
        for split in ("heldout", "novel"):
            summary, _, _ = evaluate(adapter, splits[split], seeds=seeds)
            results[split] = {k: summary[k] for k in ("accuracy", "score", "categories", "kinds")}
        results["swap"] = self.swap_test(adapter, splits["heldout"], seeds)
        for module in self.ema.values():
            module.requires_grad_(False)
        return results


def check_tokenizer(checkpoint: Path, tokenizer) -> None:
    """A checkpoint's text encoders learned the ids of the tokenizer saved with it: refuse another."""
    saved = type(tokenizer).from_pretrained(str(checkpoint / "tokenizer"))
    if saved.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"{checkpoint} was trained with another tokenizer; its text encoders would read wrong ids"
        )


def train_diffusion(
    out: Path,
    *,
    total_steps: int,
    minutes: float | None,
    resume: bool,
    eval_every: int = 1000,
    checkpoint_every: int = 250,
    stop_at: int | None = None,
    trainer_class: type[DiffusionTrainer] = DiffusionTrainer,
    **options,
) -> dict:
    """Train to `stop_at` (default: the end) of a `total_steps` cosine schedule, in resumable chunks of
    `minutes`. options: DiffusionTrainer's (relation_fraction, sigma_location, lr, warmup, ...)."""
    trainer = trainer_class(out, total_steps=total_steps, **options)
    stop_at = min(stop_at or total_steps, total_steps)
    checkpoint = out / "diffusion" / "checkpoint"
    if resume:
        if not checkpoint.is_dir():
            raise ValueError(f"--resume: no checkpoint at {checkpoint}; run without --resume to start")
        check_tokenizer(checkpoint, trainer.pipeline.tokenizer)
        trainer.load(load_state(checkpoint))
    elif checkpoint.is_dir():
        raise ValueError(f"{checkpoint} exists; pass --resume to continue it or choose another --out")
    (out / "diffusion").mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * minutes if minutes else float("inf")
    bar = tqdm(total=stop_at, initial=trainer.step, desc="diffusion", mininterval=10)
    losses = []
    while trainer.step < stop_at and time.time() < deadline:
        losses.append(trainer.train_step())
        bar.update(1)
        if trainer.step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if trainer.step % checkpoint_every == 0:
            trainer.save()
        if trainer.step % eval_every == 0 or trainer.step == stop_at:
            results = trainer.evaluate()
            results["loss"] = float(np.mean(losses[-200:]))
            with open(out / "diffusion" / "eval.jsonl", "a") as log:
                log.write(json.dumps(results) + "\n")
            held = results["heldout"]
            tqdm.write(
                f"step {trainer.step}: heldout accuracy {held['accuracy']:.3f} {held['categories']} "
                f"novel {results['novel']['accuracy']:.3f} swap flips {results['swap']['flip_fraction']:.3f}"
            )
    trainer.save()
    bar.close()
    return {"step": trainer.step, "done": trainer.step >= stop_at}


def export(
    out: Path,
    destination: Path | None = None,
    dtype: torch.dtype = torch.float16,
    trainer_class: type[DiffusionTrainer] = DiffusionTrainer,
) -> Path:
    """Write the EMA pipeline (fp16 on disk, half the size) with `save_pretrained`."""
    trainer = trainer_class(out, total_steps=1)
    check_tokenizer(out / "diffusion" / "checkpoint", trainer.pipeline.tokenizer)
    trainer.load(load_state(out / "diffusion" / "checkpoint"))
    pipeline = trainer.ema_pipeline()
    for name in ("vae", "transformer"):  # the working directory's path must not ship with the model
        getattr(pipeline, name).register_to_config(_name_or_path=name)
    destination = destination or out / "pipeline"
    pipeline.to(dtype).save_pretrained(str(destination))
    return destination
