"""GenEval as the benchmark defines it (Ghosh et al. 2023, "GenEval: An Object-Focused Framework for
Evaluating Text-to-Image Alignment"): detect the prompt's objects, classify each one's colour with
CLIP, count them, and apply the position rule; on real images, through real models.

Prompts become GenEval's metadata, {tag, include: [{class, count, color?, position?}], exclude: [...]}:
GenEval's six templates ("a photo of a dog", "a photo of two dogs", "a photo of a red dog", "a photo
of a dog and a cat", "a photo of a red dog and a blue cat", "a photo of a dog left of a cat"), or the
toy world's grammar with its shapes as classes. The rules, per image:
  - an include is met when at least `count` objects of its class are detected (score >= `threshold`,
    or `counting_threshold` for counting prompts; at most 16 a class), at least `count` of them of its
    colour when it names one, and, for a position, one of them stands in the relation to an object of
    the other include;
  - an exclude is met when fewer than `count` objects of its class are detected (counting prompts
    exclude count + 1, so the count is exact);
  - relative position: the offset of the box centres, shrunk on each axis by 0.1 x the two boxes'
    summed sizes, normalised by the offset's length; "left of" when its x component is below -0.5
    (then right of > 0.5, above < -0.5 in y, below > 0.5).
GenEval scores an image 1 when every rule holds (`strict`); the reward here pays the fraction of rules
met, so training has partial credit. `rules: toy` applies the toy verifier's constraints instead
(rewards/geneval.py: exactly `count` objects in all, every one of the colour and shape; centroids 2 px
apart): with the stand-in detector of the toy world it scores every toy render exactly as the toy
verifier does (a test), which checks the path from detections to constraints.

Models: an open-vocabulary detector through transformers (`AutoModelForZeroShotObjectDetection`:
OWLv2, OWL-ViT, Grounding DINO; default google/owlv2-base-patch16-ensemble) and CLIP for colour
(default openai/clip-vit-large-patch14, GenEval's), each a hub id or a local directory.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rewards.base import Reward, register_reward, to_pil

GENEVAL_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
RELATIONS = ("left of", "right of", "above", "below")
POSITION_THRESHOLD = 0.1
MAX_OBJECTS = 16


@dataclass
class Box:
    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float = 1.0
    colour: str | None = None  # filled by the colour classifier


def _singular(word: str, count: int) -> str:
    if count == 1:
        return word
    for plural, single in (
        ("ies", "y"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("xes", "x"),
        ("es", "e"),
        ("s", ""),
    ):
        if word.endswith(plural):
            return word[: -len(plural)] + single
    return word


def _object(words: list[str], colours) -> dict:
    """{'count', 'class', 'color'?} from e.g. ['two', 'red', 'dogs'] or ['a', 'hair', 'drier']."""
    if not words or words[0] not in NUMBERS:
        raise ValueError(" ".join(words))
    count, rest = NUMBERS[words[0]], words[1:]
    colour = rest[0] if len(rest) > 1 and rest[0] in colours else None
    name = " ".join(rest[1:] if colour else rest)
    if not name:
        raise ValueError(" ".join(words))
    item = {"class": _singular(name, count) if " " not in name else name, "count": count}
    return item | ({"color": colour} if colour else {})


def parse_metadata(prompt: str, colours: Sequence[str] = GENEVAL_COLOURS) -> dict:
    """GenEval's metadata for one of its templates (with or without "a photo of"), or for a toy prompt."""
    text = re.sub(r"^a photo of ", "", prompt.strip().lower().rstrip("."))
    words = text.split()
    try:
        for relation in RELATIONS:
            if f" {relation} " in f" {text} ":
                first, second = (part.split() for part in text.split(f" {relation} ", 1))
                target, reference = _object(first, colours), _object(second, colours)
                target["position"] = (relation, 1)
                return {"tag": "position", "include": [target, reference], "exclude": []}
        if " and " in text:
            first, second = (_object(part.split(), colours) for part in text.split(" and ", 1))
            tag = "color_attr" if "color" in first or "color" in second else "two_object"
            return {"tag": tag, "include": [first, second], "exclude": []}
        item = _object(words, colours)
    except ValueError:
        raise ValueError(
            f"{prompt!r} is not a GenEval prompt (e.g. 'a photo of two dogs', 'a photo of a red dog and a "
            "blue cat', 'a photo of a dog left of a cat')"
        ) from None
    if item["count"] > 1:
        exclude = [{"class": item["class"], "count": item["count"] + 1}]
        return {"tag": "counting", "include": [item], "exclude": exclude}
    return {"tag": "colors" if "color" in item else "single_object", "include": [item], "exclude": []}


def relative_position(a: Box, b: Box) -> set[str]:
    """Where box a stands relative to box b, sizes allowed for (the benchmark's rule)."""
    boxes = np.asarray([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = centre_a - centre_b
    shrunk = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def geneval_checks(metadata: dict, boxes: list[Box]) -> dict[str, bool]:
    """The benchmark's rules on one image's detections (colours classified): {rule: met}."""
    by_class: dict[str, list[Box]] = {}
    for box in sorted(boxes, key=lambda b: -b.score):
        found = by_class.setdefault(box.label, [])
        if len(found) < MAX_OBJECTS:
            found.append(box)
    checks, groups = {}, []
    for index, item in enumerate(metadata["include"]):
        found = by_class.get(item["class"], [])
        name = f"{item['class']}#{index}"
        checks[f"{name} count"] = len(found) >= item["count"]
        if "color" in item:
            found = [b for b in found if b.colour == item["color"]]
            checks[f"{name} colour"] = len(found) >= item["count"]
        groups.append(found)
    for index, item in enumerate(metadata["include"]):
        if "position" in item:
            relation, other = item["position"]
            pairs = ((a, b) for a in groups[index] for b in groups[other])
            checks[f"{item['class']}#{index} position"] = any(
                relation in relative_position(a, b) for a, b in pairs
            )
    for item in metadata["exclude"]:
        checks[f"{item['class']} not {item['count']}"] = len(by_class.get(item["class"], [])) < item["count"]
    return checks


def toy_checks(prompt: str, boxes: list[Box], resolution: int) -> dict[str, bool]:
    """The toy verifier's constraints (rewards/geneval.py) on these detections."""
    from rewards.geneval import Detection, check_constraints
    from rewards.toy_world import parse_prompt

    objects = []
    for b in boxes:
        x0, y0, x1, y1 = b.box
        shape = None if b.label == "object" else b.label
        objects.append(
            Detection(b.colour, shape, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * (y1 - y0), b.score)
        )
    return check_constraints(parse_prompt(prompt), objects, resolution)


class TransformersDetector:
    """An open-vocabulary detector through transformers: (image, class names) -> boxes above `threshold`."""

    def __init__(self, model: str, device="cpu"):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, picture, classes: list[str], threshold: float) -> list[Box]:
        queries = [f"a photo of a {name}" for name in classes]
        inputs = self.processor(text=[queries], images=picture, return_tensors="pt", padding=True).to(
            self.device
        )
        outputs = self.model(**inputs)
        size = torch.tensor([[picture.height, picture.width]], device=self.device)
        post = getattr(self.processor, "post_process_grounded_object_detection", None)
        post = post or self.processor.post_process_object_detection  # older OWL processors
        accepts = inspect.signature(post).parameters
        extra = {"input_ids": inputs["input_ids"]} if "input_ids" in accepts else {}  # Grounding DINO
        extra |= {"text_labels": [queries]} if "text_labels" in accepts else {}
        found = post(outputs, threshold=threshold, target_sizes=size, **extra)[0]
        labels = found.get("text_labels", found["labels"])
        boxes = []
        for box, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), labels):
            name = (
                classes[int(label)]
                if not isinstance(label, str)
                else label.removeprefix("a photo of a ").strip()
            )
            if name in classes:
                boxes.append(Box(name, tuple(box), float(score)))
        return boxes


class ClipColours:
    """Each box's colour by CLIP zero-shot, "a photo of a {colour} {class}", on its crop (GenEval's)."""

    def __init__(self, model: str, colours: Sequence[str] = GENEVAL_COLOURS, device="cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.processor = CLIPProcessor.from_pretrained(model)
        self.model = CLIPModel.from_pretrained(model).to(device).eval()
        self.colours, self.device = list(colours), device

    @torch.no_grad()
    def __call__(self, picture, boxes: list[Box]) -> None:
        for box in boxes:
            x0, y0, x1, y1 = (int(round(v)) for v in box.box)
            crop = picture.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
            texts = [f"a photo of a {colour} {box.label}" for colour in self.colours]
            inputs = self.processor(text=texts, images=crop, return_tensors="pt", padding=True).to(
                self.device
            )
            box.colour = self.colours[int(self.model(**inputs).logits_per_image[0].argmax())]


class GenEvalDetectorReward(Reward):
    """Black-box: the fraction of the prompt's GenEval rules met (1/0 for all met, `strict`)."""

    differentiable = False

    def __init__(
        self,
        *,
        detector: str | object = "google/owlv2-base-patch16-ensemble",
        colour_model: str | object = "openai/clip-vit-large-patch14",
        threshold: float = 0.3,
        counting_threshold: float = 0.9,
        rules: str = "geneval",
        strict: bool = False,
        colours: Sequence[str] = GENEVAL_COLOURS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if rules not in ("geneval", "toy"):
            raise ValueError(f"geneval-detector: rules must be geneval or toy, got {rules!r}")
        self.detector = TransformersDetector(detector, self.device) if isinstance(detector, str) else detector
        colour = (
            ClipColours(colour_model, colours, self.device) if isinstance(colour_model, str) else colour_model
        )
        self.colour_model, self.colours = colour, list(colours)
        self.threshold, self.counting_threshold = threshold, counting_threshold
        self.rules, self.strict = rules, strict

    def checks(self, picture, prompt: str) -> dict[str, bool]:
        metadata = parse_metadata(prompt, self.colours)
        classes = list(dict.fromkeys(item["class"] for item in metadata["include"] + metadata["exclude"]))
        counting = metadata["tag"] == "counting"
        boxes = self.detector(picture, classes, self.counting_threshold if counting else self.threshold)
        self.colour_model(picture, boxes)
        if self.rules == "toy":
            return toy_checks(prompt, boxes, picture.height)
        return geneval_checks(metadata, [b for b in boxes if b.label in classes])

    def score(self, images, prompts):
        values = []
        for picture, prompt in zip(to_pil(images), prompts):
            met = list(self.checks(picture, prompt).values())
            values.append(float(all(met)) if self.strict else sum(met) / len(met))
        return torch.tensor(values, dtype=torch.float32)


register_reward(
    "geneval-detector",
    differentiable=False,
    weights="an open-vocabulary detector (OWLv2 by default) and CLIP ViT-L/14, by hub id or directory",
    description="GenEval's rules on real images: detected objects, their CLIP colours, counts and positions "
    "(fraction met; strict: all)",
)(GenEvalDetectorReward)
