"""The reward protocol at the edges: bad input, JPEG rewards, differentiable preprocessing, the CLI."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from align.cli import main
from rewards.base import REWARDS, Reward, build_reward, from_pil, to_pil
from rewards.jpeg import jpeg_sizes_kb
from rewards.transforms import ImageTransform, resize_longest_pad, resize_shortest_crop


class ReturnsNaN(Reward):
    name = "returns-nan"

    def score(self, images, prompts):
        values = images.mean((1, 2, 3))
        values[-1] = float("nan")
        return values


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency colour fields (what resampling filters agree on), off the uint8 grid."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


# --- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg():
    return build_reward("jpeg-compressibility")


def _bad_inputs():
    good = torch.rand(2, 3, 16, 16)
    nan, inf = good.clone(), good.clone()
    nan[1, 0, 3, 3] = float("nan")
    inf[0, 2, 0, 0] = float("inf")
    return [
        (nan, ["a", "b"], r"NaN or inf pixels in images \[1\]"),
        (inf, ["a", "b"], r"NaN or inf pixels in images \[0\]"),
        (good * 2, ["a", "b"], r"pixel values must lie in \[0, 1\]"),
        (good - 1, ["a", "b"], r"pixel values must lie in \[0, 1\]"),
        (good[:, :2], ["a", "b"], r"shape \[B, 3, H, W\], got \[2, 2, 16, 16\]"),
        (good[0], ["a"], r"shape \[B, 3, H, W\], got \[3, 16, 16\]"),
        (good[:0], [], "empty batch"),
        (good, ["a"], "1 prompts for a batch of 2 images"),
        ((good * 255).to(torch.uint8), ["a", "b"], "floating point"),
    ]


@pytest.mark.parametrize("images, prompts, message", _bad_inputs())
def test_bad_input_is_a_value_error_naming_reward_and_problem(jpeg, images, prompts, message):
    with pytest.raises(ValueError, match=message) as error:
        jpeg(images, prompts)
    assert str(error.value).startswith("reward jpeg-compressibility:")


def test_a_reward_returning_nan_is_named_with_the_image():
    with pytest.raises(ValueError, match=r"reward returns-nan: returned NaN or inf for images \[2\]"):
        ReturnsNaN()(torch.rand(3, 3, 8, 8), ["a"] * 3)


def test_the_catalogue_imports_every_reward_module():
    """rewards/catalogue.py is the one list of reward modules: every module under rewards/ that
    registers a reward is in it (a module left out would register only if something else imported it)."""
    import ast

    import rewards.catalogue

    root = Path(rewards.catalogue.__file__).parent
    registering = {
        ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for path in root.rglob("*.py")
        if "register_reward(" in path.read_text() and path.name != "base.py"
    }
    listed = set()
    for node in ast.walk(ast.parse(Path(rewards.catalogue.__file__).read_text())):
        if isinstance(node, ast.ImportFrom):
            listed |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert registering and registering <= listed, sorted(registering - listed)


def test_registry_names_follow_the_families():
    REWARDS.load()
    families = ("aesthetic", "clip", "pickscore", "hps", "dino", "ocr", "discriminator", "jpeg", "geneval", "vlm")
    image_rewards = [  # the library's image rewards: not the text or video ones, not those tests register
        n for n, info in REWARDS.items() if info.factory.__module__.split(".")[0] == "rewards"
        and not info.factory.__module__.startswith(("rewards.text", "rewards.video"))
    ]
    video_rewards = [n for n, info in REWARDS.items() if getattr(info.factory, "video", False)]
    assert {"frames", "temporal-consistency", "geneval-toy-video"} <= set(video_rewards)
    assert len(image_rewards) >= 15
    assert {"pickscore", "hps", "dino", "dino-distribution", "ocr", "ocr-ctc", "discriminator"} <= set(
        REWARDS
    )
    assert {"jpeg-compressibility", "jpeg-incompressibility", "ensemble"} <= set(REWARDS)
    assert all(n.startswith(families) for n in image_rewards if n not in ("ensemble", "remote", "proxy"))


def test_unknown_reward_suggests_the_closest_name():
    with pytest.raises(ValueError, match="unknown reward 'pickscor'; did you mean 'pickscore'"):
        build_reward("pickscor")


# --- JPEG -----------------------------------------------------------------------------------------


def test_jpeg_sizes_match_pil_and_order_flat_below_noise(jpeg):
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 64, 64), 0.5)
    noise = torch.rand(1, 3, 64, 64, generator=generator)
    images = torch.cat([flat, noise])
    buffer = io.BytesIO()
    to_pil(noise)[0].save(buffer, format="JPEG", quality=95)
    sizes = jpeg_sizes_kb(images)
    assert sizes[1].item() == pytest.approx(buffer.tell() / 1000)
    assert sizes[0] < 1.0 < 5.0 < sizes[1]  # a flat 64x64 image is ~0.7 kB, noise ~8 kB
    torch.testing.assert_close(jpeg(images, ["", ""]), -sizes)
    torch.testing.assert_close(build_reward("jpeg-incompressibility")(images, ["", ""]), sizes)
    assert not jpeg.differentiable


def test_jpeg_quality_out_of_range_fails_at_construction():
    with pytest.raises(ValueError, match=r"quality must lie in \[1, 95\] \(PIL.s useful range\), got 100"):
        build_reward("jpeg-compressibility", quality=100)


# --- differentiable preprocessing -----------------------------------------------------------------


def test_shortest_side_resize_and_centre_crop_shapes():
    images = torch.rand(2, 3, 48, 64)
    assert resize_shortest_crop(images, 32, 32).shape == (2, 3, 32, 32)
    assert resize_longest_pad(images, 32).shape == (2, 3, 32, 32)
    padded = resize_longest_pad(torch.ones(1, 3, 16, 32), 32)
    assert padded[0, :, :8].abs().sum() == 0 and padded[0, :, 8:24].min() == pytest.approx(1.0, abs=1e-5)


def test_transform_matches_the_transformers_clip_processor_on_pil_images():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transform = ImageTransform.from_processor(processor)
    images = smooth_images(3, 48, 72)
    expected = processor(images=to_pil(images), return_tensors="pt").pixel_values
    quantised = from_pil(to_pil(images))
    difference = (transform(quantised) - expected).abs() * torch.tensor(processor.image_std).view(1, 3, 1, 1)
    assert transform == ImageTransform(32, 32, processor.image_mean, processor.image_std)
    # In pixel units: the processor resizes uint8 images and rounds again (mean error 0.25 levels).
    assert float(difference.max()) < 2 / 255
    assert float(difference.mean()) < 0.5 / 255


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_lists_every_reward_with_differentiability_and_weights(capsys):
    assert main(["rewards", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith(" ")}
    assert set(rows) == set(REWARDS)
    assert rows["ocr"].split()[1] == "no" and rows["ocr-ctc"].split()[1] == "yes"
    assert "xswu/HPSv2/HPS_v2.1_compressed.pt" in rows["hps"]
    assert "yuvalkirstain/PickScore_v1" in rows["pickscore"]


def test_cli_scores_image_files_one_line_each(tmp_path, capsys):
    paths = []
    for i, value in enumerate((0, 128)):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path)
        paths.append(str(path))
    argv = ["rewards", "score", "--reward", "jpeg-incompressibility", "--reward-arg", "quality=50"]
    assert main([*argv, "--prompt", "x", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = jpeg_sizes_kb(from_pil([Image.open(p) for p in paths]), quality=50)
    assert [line.split("\t")[1] for line in lines] == paths
    assert [float(line.split("\t")[0]) for line in lines] == pytest.approx(expected.tolist(), rel=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--reward", "jpg"], "error: unknown reward 'jpg'"),
        (["--reward", "jpeg-compressibility", "--reward-arg", "quality"], "expected key=value"),
        (["--reward", "jpeg-compressibility", "--reward-arg", "quality=200"], "quality must lie in"),
        (["--reward", "jpeg-compressibility", "--prompt", "b"], "2 prompts for 1 images"),
    ],
)
def test_cli_bad_input_exits_2_with_one_error_line(tmp_path, capsys, argv, message):
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    assert main(["rewards", "score", "--prompt", "a", *argv, str(path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0]


def test_cli_missing_image_file_is_a_usage_error(capsys):
    assert main(["rewards", "score", "--reward", "jpeg-compressibility", "--prompt", "a", "/nope.png"]) == 2
    assert "cannot read image /nope.png" in capsys.readouterr().err


def test_reward_args_are_parsed_as_yaml_scalars():
    from align.commands.rewards import parse_reward_args

    parsed = parse_reward_args(["k=3", "lr=1e-4", "local=false", "model=timm:vit", "x=[1, 2]", "s="])
    assert parsed == {"k": 3, "lr": 1e-4, "local": False, "model": "timm:vit", "x": [1, 2], "s": ""}
    assert math.isclose(parsed["lr"], 1e-4)
