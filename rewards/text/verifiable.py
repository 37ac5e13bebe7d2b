"""Verifiable text rewards: exact answers, numeric answers, format checks. 1.0 right, 0.0 wrong."""

from __future__ import annotations

import math
import re

from rewards.base import register_reward
from rewards.text.base import References, TextReward

NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
POSITIONS = ("last", "first", "only")


def normalise_answer(text: str, ignore_case: bool = True) -> str:
    """Collapse whitespace, drop surrounding quotes and a trailing full stop."""
    text = " ".join(text.split()).strip().strip("\"'`").rstrip(".").strip()
    return text.lower() if ignore_case else text


def parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def extract_number(text: str, position: str = "last") -> float | None:
    """The last / first number in `text`, or (`only`) the number that is the whole text."""
    if position == "only":
        return parse_number(normalise_answer(text)) if NUMBER.fullmatch(normalise_answer(text)) else None
    found = NUMBER.findall(text)
    if not found:
        return None
    return parse_number(found[-1] if position == "last" else found[0])


@register_reward(
    "text-exact",
    differentiable=False,
    weights="none",
    description="1 if the completion equals a reference answer (whitespace, case, final '.' ignored)",
)
class ExactMatchReward(TextReward):
    def __init__(self, references: dict | str, ignore_case: bool = True, device: str = "cpu"):
        super().__init__(device)
        self.references = References(references)
        self.ignore_case = ignore_case

    def score(self, texts, prompts):
        return [
            float(
                normalise_answer(text, self.ignore_case)
                in {normalise_answer(r, self.ignore_case) for r in refs}
            )
            for text, refs in zip(texts, self.references(prompts))
        ]


@register_reward(
    "text-numeric",
    differentiable=False,
    weights="none",
    description=(
        "1 if the completion's answer number (last, first, or the whole text) equals the reference; "
        "with brevity_chars, less for every character around it; with partial_distance, partial "
        "credit for a wrong number near the reference"
    ),
)
class NumericAnswerReward(TextReward):
    """A right answer scores 1, or with `brevity_chars` = c: max(0, 1 - extra / c), extra being the
    characters of the completion beyond the answer's own ("14" -> 1, "9 + 5 = 14" -> 1 - 8/c): a
    length-shaped verifiable reward whose optimum is the bare answer. With `partial_distance` = d, a
    wrong number earns max(0, 1 - distance / d) (times the same brevity factor): a graded signal
    among wrong answers ("6" for 3 + 4 beats "11"), so a group of wrong samples still says which way
    is right; unlike a flat format bonus it gives a constant answer nothing to settle on."""

    def __init__(
        self,
        references: dict | str,
        position: str = "last",
        tolerance: float = 1e-6,
        brevity_chars: int | None = None,
        partial_distance: float | None = None,
        device: str = "cpu",
    ):
        super().__init__(device)
        if position not in POSITIONS:
            raise ValueError(f"text-numeric: position {position!r} is not one of {', '.join(POSITIONS)}")
        if brevity_chars is not None and brevity_chars < 1:
            raise ValueError(f"text-numeric: brevity_chars must be >= 1, got {brevity_chars}")
        if partial_distance is not None and partial_distance <= 0:
            raise ValueError(f"text-numeric: partial_distance must be > 0, got {partial_distance}")
        self.references = References(references)
        self.position, self.tolerance, self.brevity_chars = position, tolerance, brevity_chars
        self.partial_distance = partial_distance

    def score(self, texts, prompts):
        values = []
        for text, refs in zip(texts, self.references(prompts)):
            answer = extract_number(text, self.position)
            targets = [t for t in (parse_number(r) for r in refs) if t is not None]
            right = answer is not None and any(
                math.isclose(answer, t, abs_tol=self.tolerance) for t in targets
            )
            value = float(right)
            if not right and self.partial_distance and answer is not None and targets:
                distance = min(abs(answer - t) for t in targets)
                value = max(0.0, 1.0 - distance / self.partial_distance)
            if value and self.brevity_chars:
                extra = len(text.strip()) - min(len(r.strip()) for r in refs)
                value *= max(0.0, 1.0 - max(extra, 0) / self.brevity_chars)
            values.append(value)
        return values


@register_reward(
    "text-format",
    differentiable=False,
    weights="none",
    description="1 if the completion matches a regular expression (whole text, or anywhere) within max_chars",
)
class FormatReward(TextReward):
    def __init__(self, pattern: str, mode: str = "full", max_chars: int | None = None, device: str = "cpu"):
        super().__init__(device)
        if mode not in ("full", "search"):
            raise ValueError(f"text-format: mode {mode!r} is not 'full' or 'search'")
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as error:
            raise ValueError(
                f"text-format: pattern {pattern!r} is not a valid regular expression ({error})"
            ) from error
        self.mode = mode
        self.max_chars = max_chars

    def score(self, texts, prompts):
        match = self.pattern.fullmatch if self.mode == "full" else self.pattern.search
        return [
            float(match(text.strip()) is not None and (self.max_chars is None or len(text) <= self.max_chars))
            for text in texts
        ]
