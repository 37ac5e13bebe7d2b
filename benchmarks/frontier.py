"""Held-out gain at equal training time: Flow-GRPO against the forward-process methods on the toy model.

    python benchmarks/frontier.py --out DIR [--budgets 60 150 300] [--prompts heldout --seeds 8]
        [--case NAME[@BUDGET,...]=CONFIG [OVERRIDE ...]] ...     (no --case: the README's eight cases)
    python benchmarks/frontier.py --out DIR --tables               (the tables of a finished run)

Each case trains its recipe (`align train`'s Run, one run at a time), adding up the wall-clock time of
its epochs (sampling, rewards and updates; not the evaluations), and keeps the trained weights at the
end of the first epoch that reaches each budget. Then the base model and every kept snapshot are
evaluated on the same prompts and seeds (the demo's held-out grid by default, and the novel split of
unseen colour-shape pairs beside it); the table gives accuracy (all constraints met) and the paired
change from the base with its SE, and the gold rewards the methods do not optimise (clip-toy,
aesthetic-toy). `--prompts train --seed-offset 100` evaluates on training prompts at other seeds:
the split to tune on, never the held-out one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRPO = "configs/toy/grpo-demo.yaml"
DRIFT = "train.steps_per_pass=4 train.inner_epochs=2 train.lr=3e-2"  # where plain Flow-GRPO's ratio drifts
GUARD = "algorithm.guard.ratio_norm=true algorithm.guard.step_reweight=true"
DEFAULT_CASES = [  # the README's frontier table, in this order, one run at a time
    f"flow-grpo={GRPO}",
    f"flow-grpo+cps={GRPO} sampling.sde=cps sampling.noise_level=0.5",  # CPS's level, tuned (docs/tuning.md)
    f"flow-grpo+guard={GRPO} {GUARD}",
    "diffusion-nft@24,60,150,300=configs/toy/diffusion-nft-demo.yaml",
    "awm=configs/toy/awm-demo.yaml",
    "dgpo@30,60,150=configs/toy/dgpo-demo.yaml",
    f"drift@150={GRPO} {DRIFT}",
    f"drift+guard@150={GRPO} {DRIFT} {GUARD}",
]
GOLD = ["clip-toy", "aesthetic-toy"]


def parse_case(text: str, budgets: list[float]) -> tuple[str, list[float], str, list[str]]:
    """NAME[=CONFIG OVERRIDE ...]; NAME may carry its own budgets: `nft@24,60,150`."""
    name, _, rest = text.partition("=")
    config, *overrides = rest.split()
    name, _, own = name.partition("@")
    return name, [float(b) for b in own.split(",")] if own else budgets, config, overrides


def train_with_budgets(config, out: Path, budgets: list[float]) -> list[dict]:
    """Train until the last budget; [{budget, epoch, seconds, state}] at each budget's crossing."""
    from align.loop import Run

    out.mkdir(parents=True, exist_ok=True)
    run = Run(config, out)
    kept, spent, records = [], 0.0, []
    remaining = sorted(budgets)
    while remaining:
        start = time.perf_counter()
        record = run.train_epoch()
        spent += time.perf_counter() - start
        records.append({k: v for k, v in record.items() if not k.startswith("_") and k != "images"})
        while remaining and spent >= remaining[0]:
            kept.append(
                {"budget": remaining.pop(0), "epoch": run.epoch, "seconds": spent, "state": run.policy.trainable_state()}
            )
        if run.epoch >= 10_000:
            raise RuntimeError("no budget reached in 10,000 epochs")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    return kept, run


def grid_evaluation(run, prompts: list[str], seeds: int, offset: int, eval_steps: int) -> dict:
    from rewards.base import build_reward
    from rewards.scoring import score_images, summarise

    adapter = run.adapter
    flat_prompts = [p for p in prompts for _ in range(seeds)]
    flat_seeds = [offset + s for _ in prompts for s in range(seeds)]
    rewards = {name: build_reward(name) for name in ["geneval-toy", *GOLD]}
    network, adapter.network = adapter.network, None
    try:
        images = adapter.generate(flat_prompts, flat_seeds, num_steps=eval_steps, batch_size=64)
    finally:
        adapter.network = network
    summary, _ = summarise(flat_prompts, flat_seeds, score_images(images, flat_prompts, rewards))
    return summary


def print_tables(rows: list[dict], base: dict) -> None:
    """Every snapshot (the long table), then the README's: held-out gain +- SE and the quality gold
    reward's change at each budget, then the novel split's gain, one row per case."""
    print("\n| case | split | budget (s) | epochs | accuracy | vs base | clip-toy | aesthetic-toy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for split, summary in base.items():
        print(f"| base | {split} | | | {summary['accuracy']:.3f} | | | |")
    for r in rows:
        print(
            f"| {r['case']} | {r['split']} | {r['budget']:.0f} ({r['seconds']:.0f}) | {r['epochs']} | "
            f"{r['accuracy']:.3f} | {r['gain']:+.3f} +- {r['se']:.3f} | {r['clip-toy']:+.4f} | "
            f"{r['aesthetic-toy']:+.4f} |"
        )
    budgets = sorted({r["budget"] for r in rows})
    splits = list(dict.fromkeys(r["split"] for r in rows))
    header = f"{splits[0]} gain (quality change)" + (f", {splits[1]} gain" if len(splits) > 1 else "")
    print(f"\n| {header} | " + " | ".join(f"{b:.0f} s" for b in budgets) + " |")
    print("| --- |" + " --- |" * len(budgets))
    for case in dict.fromkeys(r["case"] for r in rows):
        cells = []
        for budget in budgets:
            found = {r["split"]: r for r in rows if r["case"] == case and r["budget"] == budget}
            if splits[0] not in found:
                cells.append("")
                continue
            first = found[splits[0]]
            cell = f"{first['gain']:+.3f} +- {first['se']:.3f} ({first['aesthetic-toy']:+.4f})"
            if len(splits) > 1 and splits[1] in found:
                cell += f", {found[splits[1]]['gain']:+.3f}"
            cells.append(cell)
        print(f"| {case} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--case", action="append", help="NAME[@BUDGET,...]=CONFIG [OVERRIDE ...] (repeatable)"
    )
    parser.add_argument("--budgets", type=float, nargs="+", default=[60, 150, 300])
    parser.add_argument("--prompts", default="heldout")
    parser.add_argument("--novel", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--tables", action="store_true", help="print the tables of OUT/frontier.json and stop")
    args = parser.parse_args(argv)
    if args.tables:
        saved = json.loads((args.out / "frontier.json").read_text())
        print_tables(saved["rows"], saved["base"])
        return 0


    from align.config import load_config
    from align.evaluate import paired_difference
    from rewards.toy_world import prompt_splits

    args.out.mkdir(parents=True, exist_ok=True)
    splits = [args.prompts] + (["novel"] if args.novel else [])
    rows, base = [], {}
    for case in args.case or DEFAULT_CASES:
        name, budgets, path, overrides = parse_case(case, args.budgets)
        config = load_config(ROOT / path if not Path(path).is_absolute() else path, overrides)
        kept, run = train_with_budgets(config, args.out / name, budgets)
        steps = config.sampling.eval_num_steps
        for split in splits:
            prompts = prompt_splits()[split][: args.max_prompts]
            if split not in base:
                with run.policy.reference():
                    base[split] = grid_evaluation(run, prompts, args.seeds, args.seed_offset, steps)
            for snapshot in kept:
                with run.policy.swapped(snapshot["state"]):
                    summary = grid_evaluation(run, prompts, args.seeds, args.seed_offset, steps)
                gain, se = paired_difference(base[split], summary)
                rows.append(
                    {
                        "case": name,
                        "split": split,
                        "budget": snapshot["budget"],
                        "epochs": snapshot["epoch"],
                        "seconds": round(snapshot["seconds"], 1),
                        "accuracy": summary["accuracy"],
                        "gain": gain,
                        "se": se,
                        **{g: summary["rewards"][g] - base[split]["rewards"][g] for g in GOLD},
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "frontier.json").write_text(
        json.dumps(
            {"rows": rows, "base": {k: {"accuracy": v["accuracy"], "rewards": v["rewards"]} for k, v in base.items()}},
            indent=1,
        )
    )
    print_tables(rows, base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
