"""Built-in verifiable text tasks: deterministic prompts with known answers, split into train/heldout.

`arithmetic`: "What is 7 + 5? Reply with only the number." for operands 1-10. Its 100 problems
are shuffled once with a fixed seed; the first 40 are held out, the other 60 train. The answer is
read back from the prompt itself, so a verifiable reward needs no reference file
(`references: arithmetic`).
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


TEXT_TASKS: Registry = Registry("text task")

ARITHMETIC_PROMPT = re.compile(r"What is (\d+) ([+-]) (\d+)\? Reply with only the number\.")
ARITHMETIC_HELDOUT = 40


def arithmetic_answer(prompt: str) -> str | None:
    match = ARITHMETIC_PROMPT.fullmatch(prompt.strip())
    if match is None:
        return None
    a, op, b = int(match[1]), match[2], int(match[3])
    return str(a + b if op == "+" else a - b)


def arithmetic_problems(split: str) -> list[dict]:
    prompts = [f"What is {a} + {b}? Reply with only the number." for a in range(1, 11) for b in range(1, 11)]
    random.Random(0).shuffle(prompts)
    chosen = {"heldout": prompts[:ARITHMETIC_HELDOUT], "train": prompts[ARITHMETIC_HELDOUT:]}[split]
    return [{"prompt": p, "answer": arithmetic_answer(p)} for p in chosen]


TEXT_TASKS["arithmetic"] = TextTask(
    "arithmetic", arithmetic_problems, arithmetic_answer, ("train", "heldout")
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
