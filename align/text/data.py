"""Text data files: prompts (task split, .txt, .jsonl) and preference pairs (.jsonl).

A pairs file holds one JSON object per line: {"prompt": str, "chosen": str, "rejected": str}.
Every problem is reported with its file and line number before any training starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PAIR_KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def _json_lines(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})"
            ) from error


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Preference pairs from a JSONL file; raises ValueError naming the first bad line."""
    path = Path(path)
    pairs = []
    for number, record in _json_lines(path):
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected an object with {', '.join(PAIR_KEYS)}")
        missing = [k for k in PAIR_KEYS if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(
                f"{path}:{number}: missing or non-string {', '.join(missing)}; each line needs {PAIR_KEYS}"
            )
        if record["chosen"] == record["rejected"]:
            raise ValueError(
                f"{path}:{number}: chosen and rejected are the same text; the pair teaches nothing"
            )
        pairs.append(PreferencePair(record["prompt"], record["chosen"], record["rejected"]))
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs


def load_text_prompts(source: str) -> list[str]:
    """Prompts from `task:split` (e.g. arithmetic:train), a .txt file (one per line) or a .jsonl file."""
    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".jsonl":
        prompts = []
        for number, record in _json_lines(path):
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}:{number}: needs a string `prompt`")
            prompts.append(record["prompt"])
    else:
        from rewards.text.tasks import task_problems

        prompts = [problem["prompt"] for problem in task_problems(source)]
    if not prompts:
        raise ValueError(f"{source}: no prompts")
    return prompts


def load_prompt_difficulties(source: str) -> list[float]:
    """One difficulty per prompt of `source`, in load_text_prompts' order, for a curriculum: a text task's
    own (arithmetic: the sum) or a .jsonl's numeric `difficulty` on every line."""
    path = Path(source)
    fix = "give a task split whose task defines one (arithmetic:train) or a .jsonl with a numeric `difficulty` per line"
    if path.suffix == ".jsonl":
        difficulties = []
        for number, record in _json_lines(path):
            value = record.get("difficulty") if isinstance(record, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{path}:{number}: no numeric `difficulty` for the curriculum; {fix}")
            difficulties.append(float(value))
        return difficulties
    if path.suffix != ".txt":
        from rewards.text.tasks import lookup_task, task_problems

        task = lookup_task(source.partition(":")[0])
        if task.difficulty is not None:
            return [task.difficulty(problem["prompt"]) for problem in task_problems(source)]
    raise ValueError(f"train.curriculum_start: the prompts {source!r} have no difficulties; {fix}")
