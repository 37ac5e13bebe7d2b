"""OCR rewards with the real engines and their shipped models, on text rendered with Pillow."""

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from rewards.base import build_reward, from_pil
from rewards.ocr import case_variants, edit_distance, quoted_text, text_similarity

WORDS = ["OPEN", "Coffee 24", "HELLO"]
RIGHT = [f'a sign that says "{word}"' for word in WORDS]
WRONG = ['a sign that says "PIZZA"', 'a neon sign, "BAKERY"', 'a sign that says "WORLD 7"']


def render(text: str, size: int = 128) -> Image.Image:
    """Black text in Pillow's bundled font, centred on white."""
    font = ImageFont.load_default(size=22)
    picture = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size - right - left) / 2, (size - bottom - top) / 2), text, fill="black", font=font)
    return picture


@pytest.fixture(scope="module")
def signs():
    return from_pil([render(word) for word in WORDS])


def test_quoted_text_and_edit_distance():
    assert quoted_text('a sign that says "OPEN"') == "OPEN"
    assert quoted_text('"Hot" and “Cold” coffee') == "Hot Cold"
    with pytest.raises(ValueError, match=r"reward ocr: prompt 'a sign' quotes no text to read"):
        quoted_text("a sign")
    with pytest.raises(ValueError, match="reward ocr-ctc: prompt 'x \"  \"' quotes no text"):
        quoted_text('x "  "', "ocr-ctc")
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    assert text_similarity("OPEN", "open") == 1.0
    assert text_similarity("Coffee24", "Coffee 24") == 1.0
    assert text_similarity("OPFN", "OPEN") == 0.75
    assert text_similarity("", "OPEN") == 0.0 and text_similarity("a much longer text", "OPEN") == 0.0
    assert text_similarity("OPFN", "OPEN", case_sensitive=True) == 0.75
    assert text_similarity("open", "OPEN", case_sensitive=True) == 0.0
    assert case_variants("Coffee 24") == ["Coffee 24", "COFFEE 24", "coffee 24"]
    assert case_variants("big sale") == ["big sale", "BIG SALE", "Big sale", "Big Sale"]


@pytest.fixture(scope="module")
def rapid():
    return build_reward("ocr")


def test_rapidocr_reads_the_right_text_and_rejects_the_wrong(rapid, signs):
    right, wrong = rapid(signs, RIGHT), rapid(signs, WRONG)
    assert (right >= 0.9).all(), right
    assert (wrong <= 0.3).all(), wrong
    assert rapid.read(signs) == WORDS
    assert float(rapid(torch.ones(1, 3, 64, 64), ['"OPEN"'])) == 0.0  # nothing to read
    assert not rapid.differentiable


def test_rapidocr_prompt_without_quotes_fails_naming_the_reward(rapid, signs):
    with pytest.raises(ValueError, match="reward ocr: prompt 'OPEN' quotes no text"):
        rapid(signs[:1], ["OPEN"])


@pytest.fixture(scope="module")
def ctc():
    return build_reward("ocr-ctc")


def test_ocr_ctc_ranks_the_right_text_above_the_wrong_with_gradients_to_the_pixels(ctc, signs):
    x = signs.clone().requires_grad_(True)
    right = ctc(x, RIGHT)
    (gradient,) = torch.autograd.grad(right.sum(), x)
    wrong = ctc(signs, WRONG)
    assert (right > -0.05).all(), right  # per character: p(right text) > 0.95 per character
    assert (wrong < -5).all(), wrong
    assert torch.isfinite(gradient).all()
    assert (gradient.flatten(1).abs().sum(1) > 0).all()
    box = ctc.text_boxes(signs)[0]  # gradients live inside the detected text region only
    top, bottom, left, right_edge = box
    inside = gradient[0, :, top:bottom, left:right_edge].abs().sum()
    assert float(inside) == pytest.approx(float(gradient[0].abs().sum()))
    assert 0 < top < bottom < 128 and 0 < left < right_edge < 128


def test_ocr_ctc_is_case_insensitive_unless_asked(ctc, signs):
    lower = ctc(signs[:1], ['"open"'])
    assert float(lower) > -0.05
    top, bottom, left, right = ctc.text_boxes(signs[:1])[0]
    line = signs[:1, :, top:bottom, left:right]  # already cropped: read the whole image
    strict = build_reward("ocr-ctc", detector="none", case_sensitive=True)
    assert float(strict(line, ['"OPEN"'])) > -0.05
    assert float(strict(line, ['"open"'])) < -1


def test_ocr_ctc_differentiable_path_agrees_with_uint8(ctc, signs):
    generator = torch.Generator().manual_seed(0)
    x = (signs * 0.9 + 0.05 + 0.01 * torch.rand(signs.shape, generator=generator)).clamp(0, 1)
    rounded = ctc((x * 255).round() / 255, RIGHT)
    values = ctc(x, RIGHT)
    assert (values - rounded).abs().max() < 1e-3


def test_ocr_ctc_errors(ctc, signs, tmp_path):
    with pytest.raises(ValueError, match="the recogniser cannot write 'é'"):
        ctc(signs[:1], ['"café"'])
    with pytest.raises(ValueError, match="EasyOCR recogniser weights not found at /nope.pth"):
        build_reward("ocr-ctc", recogniser="/nope.pth")
    bad = tmp_path / "english_g2.pth"
    torch.save({"module.Prediction.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ValueError, match="is not an EasyOCR english_g2 recogniser"):
        build_reward("ocr-ctc", recogniser=str(bad), detector="none")
    with pytest.raises(ValueError, match="craft_mlt_25k.pth"):
        build_reward("ocr-ctc", recogniser=str(_real_weights()))
    with pytest.raises(ValueError, match="detector must be 'craft'"):
        build_reward("ocr-ctc", detector="db")


def _real_weights():
    """The shipped recogniser copied alone into a folder: the detector beside it is missing."""
    import shutil
    import tempfile

    from rewards.ocr import _default_model_dir

    folder = tempfile.mkdtemp()
    return shutil.copy(_default_model_dir() / "english_g2.pth", folder)
