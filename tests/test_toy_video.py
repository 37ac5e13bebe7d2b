"""The toy video world: grammar, clips, the motion verifier and the video rewards."""

import numpy as np
import pytest
import torch

from align.toy.video import render_clips
from rewards.base import build_reward
from rewards.geneval_video import evaluate_clips, velocity
from rewards.toy_video import (
    FRAMES,
    SPEEDS,
    make_clip,
    parse_video_prompt,
    swap_direction,
    video_prompt_splits,
)


def test_grammar_round_trips_and_names_what_is_wrong():
    for text in ["two red circles moving left quickly", "an orange square moving down slowly",
                 "a red circle moving up left of a blue square"]:
        assert parse_video_prompt(text).text() == text
    spec = parse_video_prompt("a red circle moving up left of a blue square")
    assert (spec.scene.relation, spec.direction, spec.speed) == ("left of", "up", "slowly")
    assert swap_direction("two red circles moving left quickly") == "two red circles moving right quickly"
    for bad, words in [("a red circle moving left", "speed"), ("a red circle moving sideways slowly", "not a"),
                       ("a red circle", "not a")]:
        with pytest.raises(ValueError, match=words):
            parse_video_prompt(bad)


def test_splits_are_disjoint_and_novel_pairs_never_pretrain():
    splits = video_prompt_splits()
    assert (len(splits["heldout"]), len(splits["novel"])) == (64, 32)
    assert not set(splits["heldout"]) & set(splits["pretrain"])
    assert set(splits["train"]) <= set(splits["pretrain"])
    assert not set(splits["novel"]) & (set(splits["pretrain"]) | set(splits["heldout"]))
    assert all("red triangle" in p or "green circle" in p or "blue square" in p for p in splits["novel"])


def test_objects_move_at_the_named_speed_and_a_relation_s_second_object_stands_still():
    video, clip = make_clip("three red circles moving left quickly", 3)
    assert video.shape == (FRAMES, 32, 32, 3) and len(clip.objects) == 3
    first, last = clip.at(0), clip.at(FRAMES - 1)
    assert all(b.cx - a.cx == pytest.approx(-SPEEDS["quickly"] * (FRAMES - 1)) and b.cy == a.cy for a, b in zip(first, last))
    _, clip = make_clip("a green triangle moving down above a yellow circle", 0)
    start, end = clip.at(0), clip.at(FRAMES - 1)
    assert end[0].cy - start[0].cy == pytest.approx(FRAMES - 1) and (end[1].cx, end[1].cy) == (start[1].cx, start[1].cy)
    assert all(f[1].cy - f[0].cy >= 8 for f in (start, end))  # above in every frame


def test_velocity_is_the_least_squares_slope():
    points = [(t, 3 + 2 * t, 10 - 0.5 * t) for t in range(9)]
    assert np.allclose(velocity(points), [2, -0.5]) and velocity(points[:2]) is None


def test_the_verifier_passes_every_rendered_clip_and_fails_still_and_reversed_ones():
    splits = video_prompt_splits()
    prompts = splits["heldout"][::4] + splits["novel"][::4]
    clips = render_clips(prompts, range(len(prompts)))
    assert all(r["all"] for r in evaluate_clips(clips, prompts))
    still = evaluate_clips(clips[:, :1].expand_as(clips), prompts)
    assert not any(r["constraints"]["direction"] or r["constraints"]["speed"] for r in still)
    assert all(r["constraints"]["count"] and r["constraints"]["shape"] for r in still)
    reversed_ = evaluate_clips(clips.flip(1), prompts)
    assert not any(r["constraints"]["direction"] for r in reversed_)
    assert all(r["constraints"]["speed"] for r in reversed_)  # as fast, the other way
    quick = [p.replace("slowly", "quickly") for p in prompts if p.endswith("slowly")]
    slow_clips = render_clips([p.replace("quickly", "slowly") for p in quick], range(len(quick)))
    wrong_speed = evaluate_clips(slow_clips, quick)
    assert all(r["constraints"]["direction"] and not r["constraints"]["speed"] for r in wrong_speed)


def test_video_reward_scores_clips_and_refuses_images():
    prompts = ["a red circle moving left slowly", "two blue squares moving up quickly"]
    clips = render_clips(prompts, [0, 1])
    verifier = build_reward("geneval-toy-video-all")
    assert verifier(clips, prompts).tolist() == [1.0, 1.0]
    assert verifier(clips, prompts[::-1]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        verifier(clips[:, 0], prompts)


def test_frame_reward_aggregates_an_image_reward_over_frames_of_the_still_scene():
    prompts = ["a red circle moving left slowly", "a green triangle moving up left of a yellow circle"]
    clips = render_clips(prompts, [0, 1])
    broken = clips.clone()
    broken[1, -1] = broken[1, -1, :, :, :].flip(-1)  # the last frame mirrored: the relation breaks there
    for aggregate, expected in [("mean", [1.0, 1 - 0.25 / FRAMES]), ("min", [1.0, 0.75]), ("last", [1.0, 0.75])]:
        reward = build_reward("frames", reward="geneval-toy", prompts="still", aggregate=aggregate)
        assert reward(broken, prompts).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="aggregate"):
        build_reward("frames", reward="geneval-toy", aggregate="median")


def test_temporal_consistency_is_one_for_a_still_clip_and_falls_with_flicker_and_is_differentiable():
    prompts = ["a red circle moving left slowly"] * 3
    clip = render_clips(prompts[:1], [0])
    still = clip[:, :1].expand_as(clip)
    flicker = clip.clone()
    flicker[0, 1::2] = 1 - flicker[0, 1::2]
    reward = build_reward("temporal-consistency")
    values = reward(torch.cat([still, clip, flicker]), prompts)
    assert values[0] == pytest.approx(1.0, abs=1e-5) and 1 > values[1] > 0.5 > values[2]
    moving = clip.clone().requires_grad_(True)
    reward(moving, prompts[:1]).sum().backward()
    assert moving.grad is not None and float(moving.grad.abs().sum()) > 0
