"""Built-in verifiable text tasks: deterministic prompts with known answers, split into train/heldout.

`arithmetic`: "What is 7 + 15? Reply with only the number." for operands 1-20. Its 400 problems
are shuffled once with a fixed seed; the first 200 are held out (enough to see a +0.05 change: an
accuracy's SE is at most 0.035), the next 50 are a validation split to tune recipes on, the other 150
train. The answer is read back from the prompt itself, so a verifiable reward needs no reference
file (`references: arithmetic`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from plumbing.registry import Registry


@dataclass(frozen=True)
class TextTask:
    name: str
    problems: Callable[[str], list[dict]]  # split -> [{"prompt", "answer"}]
    answer: Callable[[str], str | None]  # prompt -> its answer, None when not a task prompt
    splits: tuple[str, ...]
    # prompt -> how hard it is (larger = harder), for a curriculum (train.curriculum_start); None = unknown
    difficulty: Callable[[str], float] | None = None


TEXT_TASKS: Registry = Registry("text task")

ARITHMETIC_PROMPT = re.compile(r"What is (\d+) ([+-]) (\d+)\? Reply with only the number\.")
ARITHMETIC_OPERANDS = range(1, 21)
ARITHMETIC_SPLITS = {"heldout": (0, 200), "validation": (200, 250), "train": (250, 400)}


def arithmetic_answer(prompt: str) -> str | None:
    match = ARITHMETIC_PROMPT.fullmatch(prompt.strip())
    if match is None:
        return None
    a, op, b = int(match[1]), match[2], int(match[3])
    return str(a + b if op == "+" else a - b)


def arithmetic_problems(split: str) -> list[dict]:
    operands = ARITHMETIC_OPERANDS
    prompts = [f"What is {a} + {b}? Reply with only the number." for a in operands for b in operands]
    random.Random(0).shuffle(prompts)
    start, stop = ARITHMETIC_SPLITS[split]
    chosen = prompts[start:stop]
    return [{"prompt": p, "answer": arithmetic_answer(p)} for p in chosen]


def arithmetic_pairs(split: str = "train") -> list[dict]:
    """Preference pairs for offline DPO/SimPO on a split: per prompt, the bare right number chosen over the
    restated equation ("12" over "7 + 5 = 12": the format), and over a near miss ("12" over "13": the sum).
    configs/text/arithmetic-pairs.jsonl is this list for the train split (a test keeps them equal)."""
    pairs = []
    for index, problem in enumerate(arithmetic_problems(split)):
        prompt, answer = problem["prompt"], problem["answer"]
        a, _, b = ARITHMETIC_PROMPT.fullmatch(prompt).groups()
        near_miss = str(int(answer) + (1 if index % 2 else -1))
        pairs.append({"prompt": prompt, "chosen": answer, "rejected": f"{a} + {b} = {answer}"})
        pairs.append({"prompt": prompt, "chosen": answer, "rejected": near_miss})
    return pairs


def arithmetic_difficulty(prompt: str) -> float:
    """The sum's size: "3 + 4" is easier for a small model to answer at its first token than "17 + 19"."""
    a, _, b = ARITHMETIC_PROMPT.fullmatch(prompt.strip()).groups()
    return float(int(a) + int(b))


TEXT_TASKS["arithmetic"] = TextTask(
    "arithmetic", arithmetic_problems, arithmetic_answer, tuple(ARITHMETIC_SPLITS), arithmetic_difficulty
)


def lookup_task(name: str) -> TextTask:
    return TEXT_TASKS.lookup(name)


def task_problems(source: str) -> list[dict]:
    """`task:split` (e.g. `arithmetic:heldout`) -> its problems."""
    name, _, split = source.partition(":")
    task = lookup_task(name)
    if split not in task.splits:
        raise ValueError(f"text task {name!r} has no split {split!r}; use one of {', '.join(task.splits)}")
    return task.problems(split)
