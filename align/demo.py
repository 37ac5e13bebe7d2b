"""`align demo`: the whole pipeline on the shipped toy model, on a CPU, with no download.

1. Flow-GRPO on the verifiable GenEval-style reward (configs/toy/grpo-demo.yaml); the run evaluates
   the base model and the aligned one on held-out prompts, with the toy CLIP and quality rewards
   reported as gold rewards that are not optimised.
2. DiffusionNFT on the same reward for about a minute of training (configs/toy/diffusion-nft-demo.yaml),
   the forward-process method that leads Flow-GRPO at equal time up to about two minutes
   (benchmarks/frontier.py), evaluated the same way (the base's evaluation reused).
3. Noise optimisation (ReNO) on held-out prompts with the toy CLIP reward, against best-of-N.
4. Reward backprop (DRaFT-LV) with the toy CLIP and quality rewards (configs/toy/draft-clip.yaml).
5. A comparison gallery of the base model and the fine-tuned runs.
Every step runs on one device (`device`, as samplers/devices.py resolves it) in one dtype.
DIR/summary.json holds {"base": evaluation, "aligned": Flow-GRPO's evaluation, "nft": {"aligned":
DiffusionNFT's}, "reno": ..., "draft": ...}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def _reno(out: Path, prompts: list[str], iterations: int, device: torch.device, dtype: str) -> dict:
    from align.optimize import OptimizeSettings, compare_with_best_of_n
    from align.runs import load_model
    from rewards.base import build_reward

    settings = OptimizeSettings(
        iterations=iterations, lr=5.0, regularisation=0.01, grad_clip=0.1, weights={"clip-toy": 100.0}
    )
    rewards = {"clip-toy": build_reward("clip-toy", device=device)}
    compared = compare_with_best_of_n(
        load_model("toy", device=device, dtype=dtype), prompts, list(range(len(prompts))), rewards, settings
    )
    results = {
        method: {"accuracy": summary["accuracy"], "rewards": summary["rewards"]}
        for method, summary in compared["summaries"].items()
    }
    results["settings"] = {
        "iterations": compared["optimised"]["iterations"],
        "prompts": len(prompts),
        "best_of_n": compared["best_of_n"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    return results


def run_demo(
    out: Path,
    *,
    epochs: int | None = None,
    extras: bool = True,
    reno_prompts: int = 12,
    reno_iterations: int = 20,
    gallery_prompts: int = 12,
    device: str = "auto",
    dtype: str = "float32",
) -> dict:
    """Flow-GRPO, then DiffusionNFT, on the toy model's verifiable reward (and with `extras` ReNO,
    DRaFT-LV and the gallery) into OUT; returns and writes the summary, prints the README's table."""
    from align.config import load_config
    from align.loop import make_accelerator, train
    from align.recipes import load_prompts, recipe
    from samplers.devices import resolve_device

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; choose a new --out for the demo")
    chosen = resolve_device(device)
    heldout = load_prompts("heldout")
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.perf_counter() - start - sum(timings.values())

    def trained(name: str, folder: str, overrides=(), like=None) -> tuple:
        """Train a toy recipe into OUT/folder; `like` (config, summary) of an earlier run whose base
        evaluation is reused where it is the same. Returns (config, summary)."""
        config = load_config(recipe(f"toy/{name}"), [f"model.dtype={dtype}", *overrides])
        base = like[1]["base"] if like and _same_evaluation(like[0], config, like[1]["base"]) else None
        accelerator = make_accelerator(config.train.mixed_precision, device=device)
        summary = train(config, out / folder, base=base, accelerator=accelerator)
        lap(folder)
        return config, summary

    steps = 5 if extras else 2
    print(f"[1/{steps}] Flow-GRPO on the verifiable reward (base and aligned evaluated on held-out prompts)")
    first = trained("grpo-demo.yaml", "grpo", [f"train.num_epochs={epochs}"] if epochs else [])
    print(f"[2/{steps}] DiffusionNFT on the same reward, about a minute of training, the same evaluation")
    _, nft = trained("diffusion-nft-demo.yaml", "nft", like=first)
    summary = {"base": first[1]["base"], "aligned": first[1]["aligned"], "nft": {"aligned": nft["aligned"]}}
    if extras:
        print(f"[3/{steps}] ReNO noise optimisation with the toy CLIP reward, against best-of-N")
        subset = heldout[:: max(1, len(heldout) // reno_prompts)][:reno_prompts]
        summary["reno"] = _reno(out / "reno", subset, reno_iterations, chosen, dtype)
        lap("reno")
        print(f"[4/{steps}] DRaFT-LV reward backprop with the toy CLIP and quality rewards")
        _, draft = trained("draft-clip.yaml", "draft", like=first)
        summary["draft"] = {"base": draft["base"], "aligned": draft["aligned"]}
        print(f"[5/{steps}] comparison gallery")
        _gallery(out, heldout[:: max(1, len(heldout) // gallery_prompts)][:gallery_prompts], chosen, dtype)
        lap("gallery")
    summary["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(results_table(summary))
    more = f", DRaFT-LV run {out}/draft, ReNO {out}/reno, gallery {out}/gallery/index.html" if extras else ""
    print(f"files: {out}/summary.json, Flow-GRPO run {out}/grpo, DiffusionNFT run {out}/nft{more}")
    return summary


def _same_evaluation(config, other, base: dict) -> bool:
    """Whether `base` (the base model evaluated under `config`) is what `other` would measure: the
    same prompts, seeds and sampler steps, and every reward `other` reports already in it."""

    def setting(c):
        return c.eval.prompts, c.eval.seeds, c.eval.max_prompts, c.sampling.eval_num_steps, c.model

    names = {term.name for term in other.rewards.terms} | set(other.eval.rewards)
    return setting(config) == setting(other) and names <= set(base.get("rewards", {}))


RUNS = {"flow-grpo": "grpo", "diffusion-nft": "nft", "draft-lv": "draft"}  # gallery name -> run folder


def _gallery(out: Path, prompts: list[str], device: torch.device, dtype: str) -> None:
    from align.runs import load_model, run_record
    from gallery import build_gallery
    from rewards.base import build_reward

    rewards = {name: build_reward(name, device=device) for name in ("geneval-toy", "clip-toy", "aesthetic-toy")}
    sources = {"base": "toy", **{name: str(out / folder) for name, folder in RUNS.items()}}
    models = {
        name: (lambda model=model: load_model(model, device=device, dtype=dtype)) for name, model in sources.items()
    }
    build_gallery(
        models,
        prompts,
        2,
        rewards,
        out / "gallery",
        runs={name: run_record(out / folder) for name, folder in RUNS.items()},
        title="align demo: toy world, held-out prompts",
    )


def results_table(summary: dict) -> str:
    """Accuracy (all constraints met) +- its SE over images, the change from the base +- the SE of the
    paired per-image differences (same prompts and seeds), categories and the gold rewards."""
    from align.evaluate import paired_difference

    base, aligned = summary["base"], summary["aligned"]
    names = ["count", "colour", "shape", "position"]
    rows = [("base", base), ("flow-grpo", aligned)]
    if "nft" in summary:
        rows.append(("diffusion-nft (1 min)", summary["nft"]["aligned"]))
    if "draft" in summary:
        rows.append(("draft-lv (clip-toy)", summary["draft"]["aligned"]))
    gold = ["clip-toy", "aesthetic-toy"]
    lines = [
        f"held-out prompts ({base['num_images']} images)     accuracy     vs base  "
        + "  ".join(f"{n:>8}" for n in names)
        + "  "
        + "  ".join(f"{g:>13}" for g in gold)
    ]
    for label, row in rows:
        cats = "  ".join(f"{row['categories'].get(n, float('nan')):>8.3f}" for n in names)
        golds = "  ".join(f"{row['rewards'].get(g, float('nan')):>13.4f}" for g in gold)
        accuracy = f"{row['accuracy']:.3f} +- {row.get('accuracy_se', float('nan')):.3f}"
        change = "" if row is base else "{:+.3f} +- {:.3f}".format(*paired_difference(base, row))
        lines.append(f"{label:<32} {accuracy:>14} {change:>15}  {cats}  {golds}")
    reno = summary.get("reno")
    if reno is None:
        return "\n".join(lines)
    lines.append(
        "ReNO (toy CLIP)       "
        + "  ".join(
            f"{m} {reno[m]['rewards']['clip-toy']:.4f} / acc {reno[m]['accuracy']:.3f}"
            for m in ("base", "best_of_n", "optimized")
        )
    )
    return "\n".join(lines)
