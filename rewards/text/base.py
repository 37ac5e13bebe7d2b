"""Text rewards: `reward(texts, prompts) -> Tensor[B]` float32, higher is better.

They live in the image rewards' registry (rewards/base.py) under names that cannot clash (`text-*`,
`bleu`, `chrf`, `sentiment`). None is differentiable: text is sampled, so the gradient reaches the
policy through the log-probs of GRPO or DPO, never through the reward. Rewards that compare with a
reference read it through `References`: a dict, a JSONL file, or a built-in task that knows the
answer of its own prompts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REFERENCE_KEYS = ("references", "reference", "answer")


class TextReward(torch.nn.Module):
    """Base class: validates input, checks the output. Subclasses define `score`."""

    differentiable = False
    name = ""

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)  # where a reward with weights runs; rule-based ones ignore it

    def score(self, texts: list[str], prompts: list[str]) -> Sequence[float] | torch.Tensor:
        raise NotImplementedError

    def forward(self, texts: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        name = self.name or type(self).__name__
        texts, prompts = list(texts), list(prompts)
        if not texts:
            raise ValueError(f"reward {name}: empty batch")
        if len(texts) != len(prompts):
            raise ValueError(f"reward {name}: {len(prompts)} prompts for a batch of {len(texts)} texts")
        wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if wrong:
            raise ValueError(f"reward {name}: texts must be strings; items {wrong[:5]} are not")
        with torch.no_grad():
            values = torch.as_tensor(self.score(texts, prompts), dtype=torch.float32).detach().cpu()
        if values.shape != (len(texts),):
            raise ValueError(f"reward {name}: returned shape {list(values.shape)}, expected [{len(texts)}]")
        if not bool(torch.isfinite(values).all()):
            bad = [int(i) for i in (~torch.isfinite(values)).nonzero().flatten()]
            raise ValueError(f"reward {name}: returned NaN or inf for texts {bad}")
        return values


def read_reference_file(path: Path) -> dict[str, list[str]]:
    """JSONL with {"prompt": ..., "references" | "reference" | "answer": str or [str]} per line."""
    table: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        key = next((k for k in REFERENCE_KEYS if isinstance(record, dict) and k in record), None)
        if key is None or not isinstance(record.get("prompt"), str):
            raise ValueError(
                f"{path}:{number}: needs a string `prompt` and one of {', '.join(REFERENCE_KEYS)}"
            )
        value = record[key]
        table.setdefault(record["prompt"], []).extend([value] if isinstance(value, str) else list(value))
    return table


class References:
    """prompt -> list of reference strings, from a dict, a JSONL path, or a task name (`arithmetic`)."""

    def __init__(self, source: dict | str | Path):
        self.source = source
        self.lookup: Callable[[str], list[str] | None]
        if isinstance(source, dict):
            table = {k: [v] if isinstance(v, str) else list(v) for k, v in source.items()}
            self.lookup = table.get
        elif Path(source).suffix == ".jsonl":
            if not Path(source).is_file():
                raise FileNotFoundError(f"reference file {source} does not exist")
            self.lookup = read_reference_file(Path(source)).get
        else:
            from rewards.text.tasks import lookup_task

            task = lookup_task(str(source))
            self.lookup = lambda prompt: None if (answer := task.answer(prompt)) is None else [answer]

    def __call__(self, prompts: Sequence[str]) -> list[list[str]]:
        out = []
        for prompt in prompts:
            references = self.lookup(prompt)
            if not references:
                raise ValueError(f"no reference for prompt {prompt!r} in {self.source}")
            out.append(references)
        return out
