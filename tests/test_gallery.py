"""The gallery: what gallery.json says was generated is what the models generate; names are escaped;
run directories become columns with their LoRA and reward curves; the CLI rejects bad input."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_adapter
from PIL import Image

from align.cli import main
from gallery import build_gallery
from gallery.build import mark_best
from gallery.page import embed_json
from gallery.plots import read_curves
from rewards.base import Reward, build_reward, to_uint8

STEPS = 2
PROMPTS = ["a red circle", "a blue square left of a green triangle"]
HOSTILE = ["<script>alert(1)</script>", "a </script><img src=x onerror=alert(2)> & \u2028 end"]
HOSTILE_MODEL = "<img src=x onerror=alert(3)>/../..\\evil"


class Brightness(Reward):
    """Mean pixel value: any prompt, no weights."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def cell(data: dict, model: str, prompt: int, seed: int) -> dict:
    (found,) = [c for c in data["cells"] if (c["model"], c["prompt"], c["seed"]) == (model, prompt, seed)]
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two tiny models, two toy prompts, two seeds, geneval + brightness."""
    out = tmp_path_factory.mktemp("gallery")
    models = {"sd3": tiny_adapter("tiny:sd3"), "sd15": tiny_adapter("tiny:sd15")}
    rewards = {"brightness": Brightness(), "geneval-toy": build_reward("geneval-toy")}
    data = build_gallery(models, PROMPTS, 2, rewards, out, num_steps=STEPS, guidance_scale=3.0)
    return out, data, models


def test_gallery_json_matches_a_direct_generation_with_the_same_seeds(built):
    out, data, models = built
    assert json.loads((out / "gallery.json").read_text()) == data
    assert data["settings"] == {"seeds": [0, 1], "num_steps": STEPS, "guidance_scale": 3.0}
    assert len(data["cells"]) == 2 * 2 * 2
    assert models["sd15"].guidance_scale == 7.5  # the adapter's own setting is given back
    for name, adapter in models.items():
        adapter.guidance_scale, saved = 3.0, adapter.guidance_scale
        try:
            images = adapter.generate([PROMPTS[0], PROMPTS[1], PROMPTS[1]], [1, 0, 1], num_steps=STEPS)
        finally:
            adapter.guidance_scale = saved
        for image, (prompt, seed) in zip(images, [(0, 1), (1, 0), (1, 1)]):
            entry = cell(data, name, prompt, seed)
            # the same image up to float rounding of a different batch composition (threads split
            # batches differently): one uint8 level at most, on a handful of pixels
            delta = np.abs(png(out / entry["image"]).astype(int) - to_uint8(image[None])[0].astype(int))
            assert delta.max() <= 1 and (delta > 0).mean() < 0.01
            assert entry["scores"]["brightness"] == pytest.approx(float(image.mean()), abs=1e-6)
        assert data["models"][list(models).index(name)]["config"]["num_steps"] == STEPS
    # seed s drives the noise: the two seeds of one prompt differ, the same seed repeats exactly
    first, second = (png(out / cell(data, "sd3", 0, s)["image"]).astype(int) for s in (0, 1))
    assert np.abs(first - second).mean() > 5


def test_summary_rows_and_best_cells_follow_the_scores(built):
    _, data, _ = built
    assert data["best_by"] == "brightness"
    for row in data["summary"]:
        values = [c["scores"]["brightness"] for c in data["cells"] if c["model"] == row["model"]]
        assert row["rewards"]["brightness"] == pytest.approx(np.mean(values), abs=1e-6)
        assert row["num_images"] == 4
        assert row["wins"] == sum(c["best"] for c in data["cells"] if c["model"] == row["model"])
    assert sum(row["wins"] for row in data["summary"]) == 4  # one best per (prompt, seed): no ties here
    for prompt in range(2):
        for seed in range(2):
            pair = [cell(data, m, prompt, seed) for m in ("sd3", "sd15")]
            better = max(pair, key=lambda c: c["scores"]["brightness"])
            assert [c["best"] for c in pair] == [c is better for c in pair]
    assert [p["category"] for p in data["prompts"]] == ["single", "relation"]
    toy = cell(data, "sd3", 1, 0)["checks"]
    assert set(toy["constraints"]) == {"count", "colour", "shape", "position"}


def test_mark_best_marks_the_row_maximum_and_nothing_on_a_tie():
    values = [(0, 0, 0.2), (0, 0, 0.5), (0, 0, 0.5), (0, 1, 0.3), (0, 1, 0.3), (1, 0, 0.9), (1, 0, -1.0)]
    cells = [{"prompt": p, "seed": s, "scores": {"r": v}} for p, s, v in values]
    mark_best(cells, "r")
    assert [c["best"] for c in cells] == [False, True, True, False, False, True, False]


def test_hostile_prompts_model_names_and_titles_stay_text(tmp_path):
    out = tmp_path / "gallery"
    models = {HOSTILE_MODEL: tiny_adapter("tiny:sd3")}
    title = "<b>title</b> {{data}}"
    data = build_gallery(models, HOSTILE, 1, {"brightness": Brightness()}, out, num_steps=STEPS, title=title)
    page = (out / "index.html").read_text()
    for text in ("<script>alert", "<img src=x", "</script><img", "<b>title"):
        assert text not in page
    assert page.count("<script") == 2  # the data and the page's own script, nothing else
    assert page.count("</script>") == 2
    assert "&lt;b&gt;title&lt;/b&gt; {{data}}" in page
    embedded = page.split('id="gallery-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded) == data
    assert [p["text"] for p in data["prompts"]] == HOSTILE
    assert data["models"][0]["name"] == HOSTILE_MODEL
    files = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    assert all(re.fullmatch(r"[A-Za-z0-9._/-]+", f) for f in files), files
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    assert data["cells"][0]["image"] == "images/00-img-src-x-onerror-alert-3-.-.-evil/0000-s0.png"


def test_embed_json_round_trips_what_would_break_a_script_element():
    value = {"a": "</script><!-- <script>", "b": "\u2028\u2029 & &amp; >", "c": [1.5, None, True]}
    text = embed_json(value)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == value


def make_run(run_dir: Path, adapter) -> None:
    """A run directory as the training loop writes it, with a LoRA that visibly changes the model."""
    from align.policy import ImagePolicy
    from align.runs import checkpoint_name

    policy = ImagePolicy(adapter, "lora")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters().items():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    adapter.clear_cache()
    run_dir.mkdir()
    config = {"model": {"name": "tiny:sd3", "guidance_scale": 2.0}, "sampling": {"num_steps": STEPS}}
    (run_dir / "config.yaml").write_text(json.dumps(config))
    for epoch in (1, 2):
        checkpoint = run_dir / "checkpoints" / checkpoint_name(epoch)
        checkpoint.mkdir(parents=True)
        policy.save_weights(checkpoint)
        info = {"base_model": "tiny:sd3", "epoch": epoch, "adapter": {"guidance_scale": 2.0}}
        (checkpoint / "checkpoint.json").write_text(json.dumps(info))
    metrics = [
        {
            "epoch": e,
            "rewards": {"geneval-toy": {"mean": 0.2 + 0.1 * e, "std": 0.05}, "clip": {"mean": e, "std": 0}},
        }
        for e in (1, 2, 3)
    ]
    metrics[1]["eval"] = {"accuracy": 0.5, "accuracy_se": 0.1, "rewards": {"clip": 2.0}}  # train.eval_every
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    summary = {"base": {"accuracy": 0.25, "rewards": {"clip": 1.0}}, "aligned": {"accuracy": 0.75, "rewards": {}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_align_gallery_over_a_model_and_a_run_directory(tmp_path, capsys):
    from samplers.models import load_adapter

    run_dir = tmp_path / "run"
    trained = load_adapter("tiny:sd3", guidance_scale=2.0)
    make_run(run_dir, trained)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "gallery"
    argv = ["gallery", "--model", "base=tiny:sd3", "--model", f"grpo={run_dir}", "--seeds", "1"]
    code = main([*argv, "--prompts", str(tmp_path / "prompts.txt"), "--out", str(out)])
    assert code == 0
    assert "open" in capsys.readouterr().out
    data = json.loads((out / "gallery.json").read_text())
    # the run's own steps and guidance, for both columns
    assert data["settings"] == {"seeds": [0], "num_steps": STEPS, "guidance_scale": 2.0}
    assert data["rewards"] == ["geneval-toy"]  # the default for toy prompts
    assert [m["config"]["name"] for m in data["models"]] == ["tiny:sd3", str(run_dir)]
    expected = to_uint8(trained.generate(PROMPTS, [0, 0], num_steps=STEPS))
    for prompt in range(2):
        aligned = png(out / cell(data, "grpo", prompt, 0)["image"])
        assert np.abs(aligned.astype(int) - expected[prompt]).max() <= 1  # the latest LoRA, loaded
        base = png(out / cell(data, "base", prompt, 0)["image"])
        assert np.abs(aligned.astype(int) - base).mean() > 2  # and it changes the images
    (run,) = data["runs"]
    assert (run["name"], run["checkpoint"], run["summary"]["aligned"]["accuracy"]) == (
        "grpo",
        "epoch-000002",
        0.75,
    )
    assert [p["reward"] for p in data["plots"]] == ["geneval-toy", "clip", "gold and proxy"]
    for plot in data["plots"][:2]:
        width, height = Image.open(out / plot["image"]).size
        assert (width, height) == (500, 320)
    assert Image.open(out / data["plots"][2]["image"]).size == (640, 400)  # the base and the epoch-2 evaluation
    # building again into the same folder replaces the gallery
    assert main([*argv, "--prompts", str(tmp_path / "prompts.txt"), "--out", str(out), "--seeds", "2"]) == 0
    assert len(json.loads((out / "gallery.json").read_text())["cells"]) == 2 * 2 * 2


def test_reward_curves_are_read_from_metrics_and_bad_lines_are_named(tmp_path):
    lines = [
        {"epoch": 1, "rewards": {"r": {"mean": 0.5, "std": 0.1}}},
        {"epoch": 2, "rewards": {"r": {"mean": 0.7}}},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert read_curves(tmp_path) == {"r": {"epoch": [1.0, 2.0], "mean": [0.5, 0.7], "std": [0.1, 0.0]}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + '\n{"epoch": 3, "rewards": {"r": 1}}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2: expected"):
        read_curves(tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no models; give one or more --model"),
        (["--model", "a=tiny:sd3", "--model", "a=tiny:sd15"], "name 'a' is given twice"),
        (["--model", "=tiny:sd3"], "expected NAME=MODEL"),
        (["--model", "a=tiny:nope"], "unknown tiny model 'tiny:nope'"),
        (["--model", "a=tiny:sd3", "--prompts", "nosuchsplit"], "neither a split"),
        (["--model", "a=tiny:sd3", "--reward", "nosuchreward"], "unknown reward 'nosuchreward'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path, capsys, args, message):
    assert main(["gallery", *args, "--out", str(tmp_path / "out"), "--max-prompts", "1", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err


def test_an_output_folder_that_is_not_a_gallery_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a gallery's"):
        build_gallery({"a": tiny_adapter("tiny:sd3")}, PROMPTS, 1, {}, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        build_gallery({"a": tiny_adapter("tiny:sd3")}, PROMPTS, 0, {}, tmp_path / "new")
