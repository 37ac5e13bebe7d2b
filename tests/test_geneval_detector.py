"""GenEval through a detector (rewards/geneval_detector.py): the benchmark's metadata and rules, the
toy world's renders through a stand-in detector, and the real loading path on tiny random models."""

import pytest
import torch

from rewards.base import build_reward, from_pil, quantise
from rewards.geneval import GenEvalReward, detect
from rewards.geneval_detector import Box, geneval_checks, parse_metadata, relative_position
from rewards.tiny import tiny_owlv2, tiny_pickscore
from rewards.toy_world import make_example


def test_prompts_become_the_benchmarks_metadata():
    assert parse_metadata("a photo of a dog") == {
        "tag": "single_object",
        "include": [{"class": "dog", "count": 1}],
        "exclude": [],
    }
    assert parse_metadata("a photo of three benches") == {
        "tag": "counting",
        "include": [{"class": "bench", "count": 3}],
        "exclude": [{"class": "bench", "count": 4}],
    }
    assert parse_metadata("a photo of a red hair drier")["include"] == [
        {"class": "hair drier", "count": 1, "color": "red"}
    ]
    assert parse_metadata("a photo of a purple dog and a white cat") == {
        "tag": "color_attr",
        "include": [
            {"class": "dog", "count": 1, "color": "purple"},
            {"class": "cat", "count": 1, "color": "white"},
        ],
        "exclude": [],
    }
    assert parse_metadata("a photo of a dog right of a cat")["include"][0]["position"] == ("right of", 1)
    toy = parse_metadata("a red circle left of a blue square")  # the toy grammar, shapes as classes
    assert toy["include"] == [
        {"class": "circle", "count": 1, "color": "red", "position": ("left of", 1)},
        {"class": "square", "count": 1, "color": "blue"},
    ]
    with pytest.raises(ValueError, match="is not a GenEval prompt"):
        parse_metadata("dogs everywhere")


def test_relative_position_allows_for_the_boxes_sizes():
    left, right = Box("a", (0, 0, 10, 10)), Box("b", (30, 0, 40, 10))
    assert relative_position(left, right) == {"left of"} and relative_position(right, left) == {"right of"}
    above = Box("c", (0, 40, 10, 50))
    assert relative_position(left, above) == {"above"}
    diagonal = Box("d", (30, 30, 40, 40))
    assert relative_position(left, diagonal) == {"left of", "above"}  # 45 degrees: both axes count
    touching = Box("e", (9, 0, 19, 10))  # centres 9 px apart, 0.1 x (10 + 10) = 2 px shrunk: still left
    assert relative_position(left, touching) == {"left of"}
    overlapping = Box("f", (1, 0, 11, 10))  # centres 1 px apart, within the 2 px allowance
    assert relative_position(left, overlapping) == set()


def test_the_rules_count_exactly_read_colours_and_positions():
    counting = parse_metadata("a photo of two dogs")
    dog = lambda x, colour="brown": Box("dog", (x, 0, x + 10, 10), 0.95, colour)  # noqa: E731
    assert all(geneval_checks(counting, [dog(0), dog(20)]).values())
    assert not all(geneval_checks(counting, [dog(0)]).values())
    assert not all(geneval_checks(counting, [dog(0), dog(20), dog(40)]).values())  # the exclude
    colours = parse_metadata("a photo of a red dog and a blue cat")
    cat = Box("cat", (30, 0, 40, 10), 0.9, "blue")
    assert all(geneval_checks(colours, [dog(0, "red"), cat]).values())
    assert geneval_checks(colours, [dog(0, "green"), cat]) == {
        "dog#0 count": True,
        "dog#0 colour": False,
        "cat#1 count": True,
        "cat#1 colour": True,
    }
    position = parse_metadata("a photo of a dog left of a cat")
    assert all(geneval_checks(position, [dog(0), cat]).values())
    assert not geneval_checks(position, [dog(50), cat])["dog#0 position"]


class ToyStandIn:
    """The toy world's stand-in for a detector and a colour classifier: the toy verifier's own
    detections, each as a box of its area around its centroid, labelled with its shape ("object" for a
    blob), its colour already read."""

    def __call__(self, picture, classes=None, threshold=None):
        array = from_pil([picture])[0].permute(1, 2, 0).numpy()
        boxes = []
        for found in detect(array):
            half = found.area**0.5 / 2
            box = (found.cx - half, found.cy - half, found.cx + half, found.cy + half)
            boxes.append(Box(found.shape or "object", box, found.iou, found.colour))
        return boxes


def stand_in_reward(rules: str):
    stand_in = ToyStandIn()
    return build_reward(
        "geneval-detector", detector=stand_in, colour_model=lambda picture, boxes: None, rules=rules
    )


@pytest.fixture(scope="module")
def toy_renders():
    """The shipped toy model's samples of 16 held-out prompts x 2 seeds (blobs, misses, extra objects),
    and true renders scored against their own and against other prompts, all quantised to 8 bits."""
    from align.recipes import load_prompts
    from align.runs import load_model
    from samplers.noise import generators_from_seeds

    prompts = load_prompts("heldout")[:16] * 2
    adapter = load_model("toy")
    with torch.no_grad():
        trajectory = adapter.sample(prompts, generators_from_seeds(list(range(len(prompts)))), num_steps=10)
        sampled = adapter.decode(trajectory.final).float()
    true = torch.stack(
        [torch.from_numpy(make_example(p, 7)[0]).permute(2, 0, 1) for p in prompts[:16]]
    ).float()
    true = true / 255 if true.max() > 1 else true
    images = quantise(torch.cat([sampled, true, true]))
    return images, prompts + prompts[:16] + prompts[1:16] + prompts[:1]


def test_the_toy_rules_through_the_stand_in_score_every_toy_render_as_the_toy_verifier(toy_renders):
    images, prompts = toy_renders
    verifier = GenEvalReward()
    expected = verifier(images, prompts)
    assert torch.equal(stand_in_reward("toy")(images, prompts), expected)
    assert 0.1 < float(expected.mean()) < 0.95  # the set holds successes and failures of every kind


def test_the_benchmarks_rules_accept_every_true_render(toy_renders):
    images, prompts = toy_renders
    true = slice(32, 48)  # renders of their own prompt
    assert torch.equal(stand_in_reward("geneval")(images[true], prompts[true]), torch.ones(16))


def test_the_real_loading_path_on_tiny_random_models(tmp_path):
    detector = tiny_owlv2(tmp_path / "owlv2")
    colours = tiny_pickscore(tmp_path / "clip")
    reward = build_reward("geneval-detector", detector=detector, colour_model=colours, threshold=0.0)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a dog", "a photo of two cats", "a photo of a red dog left of a blue cat"]
    values = reward(images, prompts)
    assert values.shape == (3,) and bool(((values >= 0) & (values <= 1)).all())
    assert torch.equal(values, reward(images, prompts))  # deterministic
    assert values[0] == 1.0  # at threshold 0 every query box counts: one dog is found
    strict = build_reward(
        "geneval-detector", detector=detector, colour_model=colours, threshold=0.0, strict=True
    )
    assert set(strict(images, prompts).tolist()) <= {0.0, 1.0}


def test_the_toy_verifiers_previous_name_still_scores_with_one_warning(toy_renders):
    images, prompts = toy_renders
    with pytest.warns(FutureWarning, match="now named 'geneval-toy'"):
        old = build_reward("geneval")
    assert torch.equal(old(images[:8], prompts[:8]), build_reward("geneval-toy")(images[:8], prompts[:8]))
    with pytest.warns(FutureWarning, match="now named 'geneval-toy-all'"):
        assert build_reward("geneval-all").strict
