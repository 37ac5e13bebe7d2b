"""Our decoding loop against transformers' `generate`: the same draws, the time of each.

    python benchmarks/text_decode.py [--model tiny:llama|smollm2|DIR] [--batch 8] [--tokens 32]
                                     [--repeats 40] [--threads 1]

Alternates one call of `generate` and one of `align.text.decode.sample_tokens` (same prompts,
left-padded, same seed, sampling at temperature 1, same stop tokens) in one process, checks that
both drew the same tokens, and prints the median seconds per call and ours / generate's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["what is 3 + 4 ?", "reply with yes", "what is 12 plus 7 ? reply with the number only", "a cat"]


def main() -> None:
    import torch
    from transformers import GenerationConfig

    from align.text.decode import sample_tokens
    from align.text.models import load_text_policy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = load_text_policy(args.model, trainable="full")
    model = policy.model.eval()
    tokens = policy.encode_prompts((PROMPTS * args.batch)[: args.batch])
    ids, mask = tokens["prompt_ids"], tokens["prompt_mask"]
    config = GenerationConfig(
        max_new_tokens=args.tokens,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        pad_token_id=policy.pad_id,
        eos_token_id=policy.stop_ids,
    )

    @torch.inference_mode()
    def theirs():
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1] :]

    def ours():
        return sample_tokens(
            model,
            ids,
            mask,
            max_new_tokens=args.tokens,
            temperature=1.0,
            top_p=1.0,
            stop_ids=policy.stop_ids,
            pad_id=policy.pad_id,
        )

    times = {"generate": [], "ours": []}
    for repeat in range(args.repeats + 1):
        drawn = {}
        for name, function in (("generate", theirs), ("ours", ours)):
            torch.manual_seed(repeat)
            start = time.perf_counter()
            drawn[name] = function()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
        if not torch.equal(drawn["generate"], drawn["ours"]):
            raise SystemExit(f"error: the draws differ from generate's at repeat {repeat}")
    theirs_s, ours_s = statistics.median(times["generate"]), statistics.median(times["ours"])
    print(
        f"model {args.model}, batch {args.batch} (left-padded), {args.tokens} tokens, {args.threads} thread(s),"
    )
    print(
        f"medians of {args.repeats} alternating calls, same draws"
    )
    print(f"{'':<12}{'s/call':>10}{'ratio':>8}")
    print(f"{'generate':<12}{theirs_s:>10.4f}{1.0:>8.2f}")
    print(f"{'ours':<12}{ours_s:>10.4f}{ours_s / theirs_s:>8.2f}")


if __name__ == "__main__":
    main()
