"""A causal language model as a policy: templated prompts, batched sampling, per-token log-probs.

Padding is handled here once. Prompts are left-padded (so generation appends on the right);
completions are right-padded to `max_new_tokens`, and `completion_mask [B, T]` marks the tokens up
to and including the first end-of-sequence token. Every log-prob comes from one function,
`token_log_probs`, on the concatenation prompt + completion with position ids counted over real
tokens only (as `generate` counts them), so sampling and re-scoring agree exactly (ratio 1) and pad
tokens never influence a counted position. Log-probs are float32, 0 where the mask is 0.

Dropout is off (RL re-scores old samples; dropout would make the importance ratio noisy): the
model stays in eval mode, or, with activation checkpointing (which transformers applies in train
mode only), in train mode with every dropout probability set to 0; it generates in eval mode. With LoRA (peft), the reference policy is the same model with the adapter
disabled; full fine-tuning keeps a frozen copy as the reference only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch

from align.policy import ImagePolicy
from align.text.decode import base_model, cache_argument, output_cache, positions, sample_tokens
from align.text.logprob import token_log_probs
from samplers.types import Trajectory

UNSUPPORTED_HEADS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def text_trajectory(prompts: Sequence[str], tokens: dict, log_probs: torch.Tensor, temperature: float):
    """A Trajectory whose steps are completion tokens; token ids and masks go in `extra`.

    tokens: prompt_ids [B, P], prompt_mask [B, P], completion_ids [B, T], completion_mask [B, T]
    (plus anything else batched, e.g. `texts`), and each row's sampling temperature as
    extra["temperature"] [B]; noise_levels [T] are 0 (tokens are not denoising steps).
    """
    batch, steps = log_probs.shape
    empty = torch.zeros(batch, 0)
    return Trajectory(
        latents=empty,
        timesteps=empty,
        sigmas=empty,
        log_probs=log_probs,
        noise_levels=torch.zeros(steps),
        cond={},
        prompts=list(prompts),
        extra={**tokens, "temperature": torch.full((batch,), float(temperature))},
    )


def shared_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """(one row per distinct prompt [U], each row's distinct prompt [B]), or None if none repeats."""
    keys = prompt_ids.masked_fill(prompt_mask == 0, -1)
    distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if distinct.shape[0] == keys.shape[0]:
        return None
    rows = torch.empty(distinct.shape[0], dtype=torch.long, device=keys.device)
    rows.scatter_(0, inverse, torch.arange(keys.shape[0], device=keys.device))  # any row of each prompt
    return rows, inverse


class _RepeatRows(torch.autograd.Function):
    """x[inverse] with a backward that sums each row's copies in a fixed order.

    Indexing with repeated rows backpropagates by a scatter-add whose order varies between runs at
    two or more CPU threads, so two identical runs drifted apart in the last bits (and from there,
    through sampling, in their tokens). Here the backward is one_hot(inverse).T @ grad, a matmul
    whose summation order is fixed; the forward is the plain copy.
    """

    @staticmethod
    def forward(ctx, x, inverse):
        ctx.save_for_backward(inverse)
        ctx.rows = x.shape[0]
        return x[inverse]

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        one_hot = torch.nn.functional.one_hot(inverse, ctx.rows).to(grad.dtype)  # [B, U]
        return (one_hot.T @ grad.flatten(1)).view(ctx.rows, *grad.shape[1:]), None


def repeat_rows(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """x[inverse] (rows of x repeated, [U, ...] -> [B, ...]) with a run-to-run reproducible backward."""
    return _RepeatRows.apply(x, inverse)


class TextPolicy:
    """A causal LM and its tokenizer as a policy; the trainable view matches align.policy.ImagePolicy."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        system_prompt: str | None = None,
        chat_template: bool | None = None,
        logprob_backend: str = "auto",
        chunk_size: int = 512,
        reference_model=None,
        gradient_checkpointing: bool = False,
    ):
        """chat_template None = use the tokenizer's template when it has one. With
        `gradient_checkpointing`, the model's checkpointing must already be enabled."""
        config = model.config
        for name in UNSUPPORTED_HEADS:
            value = getattr(config, name, None)
            if value not in (None, 1, 1.0):
                raise ValueError(
                    f"{type(model).__name__} scales its logits ({name}={value}); the token log-prob "
                    "here assumes a plain output projection, so this model is not supported yet"
                )
        causal = base_model(model)
        if hasattr(causal.get_output_embeddings(), "base_layer"):
            raise ValueError(
                "a LoRA on the output head is not seen by the chunked token log-prob (it reads the "
                "head's weight); leave lm_head out of lora.target_modules"
            )
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ValueError("chat_template=True but the tokenizer has none; set chat_template: false")
        self.model = model.train() if gradient_checkpointing else model.eval()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.network = None  # the distributed wrapper of `model`, when the loop makes one
        self.reference_model = reference_model
        self.reference_state: dict[str, torch.Tensor] | None = None  # see anchor_reference
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.use_chat_template = has_template if chat_template is None else chat_template
        self.system_prompt = system_prompt
        self.logprob_backend = logprob_backend
        self.chunk_size = chunk_size
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos token; completions could never end")
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        extra_eos = generation_eos if isinstance(generation_eos, list) else [generation_eos]
        self.stop_ids = sorted({eos, *(i for i in extra_eos if i is not None)})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    # the trainable view is the image policy's own: parameters() and named_parameters() list what
    # requires grad, trainable_state() / load_trainable_state() copy it for checkpoints and EMA
    parameters = ImagePolicy.parameters
    named_parameters = ImagePolicy.named_parameters
    trainable_state = ImagePolicy.trainable_state
    load_trainable_state = ImagePolicy.load_trainable_state
    swapped = ImagePolicy.swapped

    def anchor_reference(self) -> None:
        """Make the current LoRA the reference (the KL anchor), as a pipeline anchors RL to its SFT model:
        its tensors are kept aside (`reference_state`, checkpointed with the run) and swapped in for
        reference passes."""
        if not self.is_lora:
            raise ValueError("only a LoRA policy can move its reference; set train.trainable=lora")
        self.reference_state = self.trainable_state()

    def save_weights(self, directory: Path) -> None:
        """The LoRA adapter in peft's format (`lora/`), or the whole model (`model/`), with the tokenizer."""
        target = Path(directory) / ("lora" if self.is_lora else "model")
        self.model.save_pretrained(str(target))
        self.tokenizer.save_pretrained(str(target))

    @contextlib.contextmanager
    def reference(self):
        """Inside, `self.model` is the reference policy: the anchored weights (`anchor_reference`), else the
        adapter disabled (or the frozen copy)."""
        if self.reference_state is not None:
            with torch.no_grad(), self.swapped(self.reference_state):
                yield self.model
        elif self.is_lora:
            with self.model.disable_adapter():
                yield self.model
        elif self.reference_model is not None:
            yield self.reference_model
        else:
            raise ValueError(
                "a KL or DPO reference needs LoRA (train.trainable: lora) or a policy built with "
                "keep_reference=True for full fine-tuning"
            )

    def format_prompt(self, prompt: str) -> str:
        if not self.use_chat_template:
            return f"{self.system_prompt}\n\n{prompt}" if self.system_prompt else prompt
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """prompt_ids, prompt_mask [B, P], left-padded (templates carry their own special tokens)."""
        encoded = self.tokenizer(
            [self.format_prompt(p) for p in prompts],
            padding=True,
            add_special_tokens=not self.use_chat_template,
            return_tensors="pt",
        )
        return {
            "prompt_ids": encoded["input_ids"].to(self.device),
            "prompt_mask": encoded["attention_mask"].to(self.device),
        }

    def completion_mask(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] 1 up to and including the first stop token; everything after it is padding."""
        stops = torch.isin(completion_ids, torch.tensor(self.stop_ids, device=completion_ids.device))
        stopped_before = (stops.long().cumsum(-1) - stops.long()) > 0
        return (~stopped_before).long()

    def encode_completions(self, completions: Sequence[str], max_tokens: int | None = None) -> dict:
        """Given completions (preference data) -> completion_ids, completion_mask [B, T], eos appended."""
        rows = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in completions]
        rows = [(row[: max_tokens - 1] if max_tokens else row) + [self.stop_ids[0]] for row in rows]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"completion_ids": ids.to(self.device), "completion_mask": mask.to(self.device)}

    def decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        """Completion texts without the stop token and padding."""
        keep = completion_mask.bool() & ~torch.isin(
            completion_ids, torch.tensor(self.stop_ids, device=completion_ids.device)
        )
        return [
            self.tokenizer.decode(ids[row_keep].tolist(), skip_special_tokens=True).strip()
            for ids, row_keep in zip(completion_ids, keep)
        ]

    @torch.no_grad()
    def generate(self, tokens: dict, *, max_new_tokens: int, temperature: float, top_p: float = 1.0):
        """completion_ids, completion_mask [B, max_new_tokens]; temperature 0 = greedy."""
        prompt_ids, prompt_mask = tokens["prompt_ids"], tokens["prompt_mask"]
        shared = shared_prompts(prompt_ids, prompt_mask)
        training = self.model.training
        self.model.eval()  # checkpointing (train mode) would switch the key/value cache off
        try:
            with torch.inference_mode():
                cache = (
                    None
                    if shared is None
                    else self._prompt_cache(self.model, tokens, shared, drop_last=True)[1]
                )
                output = sample_tokens(
                    self.model,
                    prompt_ids,
                    prompt_mask,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    stop_ids=self.stop_ids,
                    pad_id=self.pad_id,
                    cache=cache,
                )
        finally:
            self.model.train(training)
        completion_ids = output.clone()  # out of inference mode: training embeds these ids
        pad = max_new_tokens - completion_ids.shape[1]  # generation stops early when every row ended
        completion_ids = torch.nn.functional.pad(completion_ids, (0, pad), value=self.pad_id)
        completion_mask = self.completion_mask(completion_ids)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, self.pad_id)
        return completion_ids, completion_mask

    def _unwrapped(self, model):
        """(the model without a distributed wrapper, its causal LM) for `model`."""
        plain = self.reference_model if model is self.reference_model else self.model
        return plain, base_model(plain)

    @staticmethod
    def _run(model, causal, input_ids, attention_mask, position_ids, cache=None, keep_cache=False):
        """The decoder's final hidden states [B, L, H] (caught on the way through the model's own
        forward, which computes logits for one position only) and the key/value cache."""
        caught = {}

        def catch(module, args, output):  # returns None: the model's output is left as it is
            caught["hidden"] = output.last_hidden_state

        hook = causal.get_decoder().register_forward_hook(catch)
        try:
            output = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **cache_argument(causal, cache),
                use_cache=keep_cache or cache is not None,
                logits_to_keep=1,
            )
        finally:
            hook.remove()
        return caught["hidden"], output_cache(output)

    def _prompt_cache(self, model, tokens: dict, shared, drop_last: bool = False):
        """Run each distinct prompt once; (hidden [U, P, H], cache expanded to every row)."""
        rows, inverse = shared
        plain, causal = self._unwrapped(model)
        stop = -1 if drop_last else None
        ids, mask = tokens["prompt_ids"][rows, :stop], tokens["prompt_mask"][rows, :stop]
        hidden, cache = self._run(plain, causal, ids, mask, positions(mask), keep_cache=True)
        for layer in cache.layers:  # the cache's own batch_select_indices, with repeat_rows' backward
            layer.keys, layer.values = repeat_rows(layer.keys, inverse), repeat_rows(layer.values, inverse)
        return hidden, cache

    def token_log_probs(self, tokens: dict, temperature: float = 1.0, model=None) -> torch.Tensor:
        """log pi(completion token | prompt, earlier tokens) [B, T] float32; 0 where masked.

        The model runs through its own forward (so a distributed wrapper in `self.network` sees
        the completion pass); its final hidden states are projected chunk by chunk for the
        counted tokens alone. Repeated prompts (GRPO groups) are run once and their key/value
        cache shared by every completion of the prompt, with gradients flowing through it.
        """
        model = model or self.network or self.model
        plain, causal = self._unwrapped(model)
        prompt_ids, completion_ids = tokens["prompt_ids"], tokens["completion_ids"]
        completion_mask = tokens["completion_mask"]
        attention_mask = torch.cat([tokens["prompt_mask"], completion_mask], 1)
        width, steps = prompt_ids.shape[1], completion_ids.shape[1]
        # under activation checkpointing (train mode) transformers drops caches: no shared prompts
        shared = None if plain.training else shared_prompts(prompt_ids, tokens["prompt_mask"])
        if shared is None:
            input_ids = torch.cat([prompt_ids, completion_ids], 1)
            hidden, _ = self._run(model, causal, input_ids, attention_mask, positions(attention_mask))
            hidden = hidden[:, width - 1 : width - 1 + steps]  # the state before each token
        else:
            prefix, cache = self._prompt_cache(plain, tokens, shared)
            after, _ = self._run(
                model, causal, completion_ids, attention_mask, positions(attention_mask)[:, width:], cache
            )
            hidden = torch.cat([repeat_rows(prefix[:, -1:], shared[1]), after[:, :-1]], 1)
        counted = completion_mask.bool()
        head = causal.get_output_embeddings()
        values = token_log_probs(
            hidden[counted],
            head.weight,
            completion_ids[counted],
            bias=head.bias,
            temperature=temperature,
            chunk_size=self.chunk_size,
            backend=self.logprob_backend,
        )
        out = torch.zeros(completion_ids.shape, dtype=torch.float32, device=values.device)
        return out.masked_scatter(counted, values)

    @torch.no_grad()
    def reference_log_probs(self, tokens: dict, temperature: float = 1.0) -> torch.Tensor:
        """Log-probs under the reference policy (see `reference`)."""
        with self.reference() as model:
            return self.token_log_probs(tokens, temperature, model=model)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        score: bool = True,
    ) -> Trajectory:
        """Sample one completion per prompt (repeat prompts for groups). `seed` fixes the draws.

        log_probs are taken at the sampling temperature (1 for greedy), as the loss re-scores them;
        with top_p < 1 they are the untruncated policy's, as in TRL. `score=False` skips that pass
        (log_probs are then zeros) for callers that train on-policy only.
        """
        tokens = self.encode_prompts(prompts)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            ids, mask = self.generate(
                tokens, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
            )
        tokens.update(completion_ids=ids, completion_mask=mask)
        scoring_temperature = temperature if temperature > 0 else 1.0
        log_probs = (
            self.token_log_probs(tokens, scoring_temperature)
            if score
            else torch.zeros(ids.shape, device=ids.device)
        )
        tokens["texts"] = self.decode(ids, mask)
        tokens["truncated"] = mask.all(1) & ~torch.isin(
            ids[:, -1], torch.tensor(self.stop_ids, device=ids.device)
        )
        return text_trajectory(prompts, tokens, log_probs, scoring_temperature)
