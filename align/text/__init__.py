"""The text pathway: causal language models aligned with the image pathway's objectives.

policy.py       TextPolicy: templates, padding, sampling, per-token log-probs, LoRA reference
models.py       where models come from (embedded SmolLM2, tiny:llama, hub ids, directories), LoRA
logprob.py      chunked token log-probs (or cut-cross-entropy's)
grpo.py         text-grpo; preference.py: text-dpo, text-simpo, text-online-dpo
modality.py     TextModality: what the loop's Run trains and evaluates for text; demo.py: `align demo --text`
data.py         prompt and preference-pair files (the built-in tasks are rewards/text/tasks.py)
"""
